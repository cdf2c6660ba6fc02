"""Speed and memory of the models against scvi-tools' SCVI (``scvae bench``).

Not a unit test: one run on one generated screen, every measurement in its own child
process so that its peak memory is its own.

What is measured
----------------
:func:`~scperturb_vae.bench.synthetic.write_synthetic_screen` writes a random CSR count screen straight to an ``.h5ad``
file, a chunk of cells at a time (the matrix is never held whole), in a child that also
reports its speed and peak memory.  Then, for ``scvi.model.SCVI`` and each model, one child
(``python -m scperturb_vae.bench.workers --worker SPEC``) opens the file as ``scvae train`` does
(:func:`~scperturb_vae.data.validate.open_perturbation_adata`: read and validate), sets the model up,
trains it and times the importance-sampled likelihood:

- the same network sizes (``n_hidden``, ``n_layers``, ``n_latent``, dropout), the
  negative binomial likelihood, batch norm in encoder and decoder (SCVI's default and
  ours), the same minibatch size, scvi-tools' default 90 / 10 split with the same seed
  (the same training cells), and validation after every epoch for both
  (``check_val_every_n_epoch=1``, as ``scvae train`` does);
- each epoch is timed by a Lightning callback from the start of its training loop to its
  end (validation included), in wall time and in the child's CPU time
  (``cpu_seconds_per_epoch``: steadier when other work shares the CPUs; every child runs
  with the thread count a user of the commands gets, resolved once at the start, unless
  ``--threads`` fixes it, see
  :data:`~scperturb_vae.bench.constants.DEFAULT_THREADS`; ``--thread-check`` compares that
  setting with every explicit count); ``--warmup-epochs``
  first epochs (start-up: allocator, first batches) are reported on their own and left
  out of ``seconds_per_epoch``; ``train_loop_seconds_per_epoch`` leaves the validation
  pass out too.  What our models do after the last epoch (the batch-norm recalibration
  pass) is ``post_train_seconds``;
- the likelihood: ``get_marginal_ll`` of both models on the same validation cells with
  the same number of importance samples and samples per pass, after a small warm-up
  call; throughput in cells x samples per second;
- peak memory: the child's own peak resident set (``VmHWM`` of ``/proc/self/status``,
  reset between stages where the kernel allows, so each stage has its own peak; the
  anonymous and file-backed parts of the resident set are recorded at each stage's end),
  and an import-only child gives the baseline of Python + torch + scvi-tools.

``--sparse-check`` trains sVAE+ once more on a larger screen (read, validate,
``setup_anndata``, one epoch, latent means) and compares its peak memory with the bytes
of the CSR matrix plus the model's parameters.

The steps live in their own modules: :mod:`~scperturb_vae.bench.synthetic` (the screens),
:mod:`~scperturb_vae.bench.workers` (the children), :mod:`~scperturb_vae.bench.measure`
(memory, stages, threads, the machine) and :mod:`~scperturb_vae.bench.report` (summaries and
``bench.md``); this module checks the options and runs them in turn (:func:`run_bench`).

Outputs: ``bench.csv`` (one row per model), ``bench.json`` (sizes, versions, threads,
the machine, every stage of every child) and ``bench.md``; the folder appears complete or
not at all.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from scperturb_vae.bench.constants import (
    BENCH_COLUMNS,
    DEFAULT_THREADS,
    SCVI_NAME,
    SPARSE_TARGET,
    TARGET_MODELS,
    TARGET_RATIO,
)
from scperturb_vae.bench.measure import default_threads, machine_info
from scperturb_vae.bench.report import (
    backed_summary,
    bench_markdown,
    log_write,
    sparse_summary,
    summarise,
    with_check_rows,
)
from scperturb_vae.bench.synthetic import (
    CONTROL_FRACTION,
    CONTROL_LABEL,
    check_screen_sizes,
    synthetic_blocks,
    synthetic_screen_adata,
    write_synthetic_screen,
)
from scperturb_vae.bench.workers import run_child
from scperturb_vae.errors import InputError
from scperturb_vae.io import atomic_dir, check_output, package_versions, write_json
from scperturb_vae.model.registry import parse_models

logger = logging.getLogger("scperturb_vae")

# the names this module has always offered (most now live in the modules above)
__all__ = [
    "BENCH_COLUMNS",
    "CONTROL_FRACTION",
    "CONTROL_LABEL",
    "DEFAULT_THREADS",
    "SPARSE_TARGET",
    "TARGET_RATIO",
    "BenchResult",
    "default_threads",
    "run_bench",
    "synthetic_blocks",
    "synthetic_screen_adata",
    "write_synthetic_screen",
]


@dataclass
class BenchResult:
    """What :func:`run_bench` wrote (``out``) and its contents."""

    out: Path
    #: one row per model (``bench.csv``); empty with ``speed=False``
    table: pd.DataFrame
    #: ``bench.json``
    info: dict[str, Any]
    #: ``bench.md``
    markdown: str


@dataclass
class _Children:
    """Where the children of one run work and write their screens, and what their writers reported."""

    work: Path
    data_dir: Path
    threads: int | None
    chunk_cells: int
    #: the writers' results by screen (``speed``, ``sparse``, ``backed``), in the order written
    writes: dict[str, dict[str, Any]] = field(default_factory=dict)

    def run(self, spec: dict[str, Any]) -> dict[str, Any]:
        return run_child(spec, work=self.work, threads=self.threads)

    def write(self, key: str, name: str, path: Path, screen: dict[str, Any]) -> dict[str, Any]:
        """Write ``screen`` to ``path`` in a child of its own, and log its speed and memory."""
        self.writes[key] = self.run({"kind": "write", "name": name, "path": str(path), "screen": screen,
                                     "chunk_cells": self.chunk_cells})
        log_write(self.writes[key])
        return self.writes[key]


def _validate_options(**o) -> None:
    checks = [
        ("n_latent", 1), ("batch_size", 2), ("epochs", 1), ("warmup_epochs", 0), ("is_cells", 0),
        ("is_samples", 1), ("is_samples_per_pass", 1), ("seed", 0), ("threads", 1), ("repeats", 1),
        ("n_hidden", 1), ("n_layers", 1), ("chunk_cells", 1), ("sparse_cells", 1),
    ]
    for key, low in checks:
        if o.get(key) is not None and o[key] < low:
            raise InputError(f"--{key.replace('_', '-')} must be at least {low}, not {o[key]}")
    for key in ("backed_cells",):
        if o.get(key) is not None and o[key] < 10:
            raise InputError(f"--{key.replace('_', '-')} must be at least 10, not {o[key]}")
    if o.get("backed_max_steps") is not None and o["backed_max_steps"] < 1:
        raise InputError(f"--backed-max-steps must be at least 1, not {o['backed_max_steps']}")
    if o.get("sparse_max_steps") is not None and o["sparse_max_steps"] < 1:
        raise InputError(f"--sparse-max-steps must be at least 1, not {o['sparse_max_steps']}")
    if not (0.0 <= o["dropout_rate"] < 1.0):
        raise InputError(f"--dropout-rate must be in [0, 1), not {o['dropout_rate']}")


def run_bench(
    out: str | Path,
    *,
    n_cells: int = 20_000,
    n_genes: int = 2_000,
    density: float = 0.1,
    n_perturbations: int = 200,
    n_latent: int = 10,
    n_hidden: int = 128,
    n_layers: int = 1,
    dropout_rate: float = 0.1,
    batch_size: int = 128,
    epochs: int = 2,
    warmup_epochs: int = 1,
    models: str | list[str] = "svae+,ivae,svae,vae",
    is_cells: int = 500,
    is_samples: int = 100,
    is_samples_per_pass: int = 100,
    seed: int = 0,
    threads: int | None = None,
    repeats: int = 1,
    speed: bool = True,
    sparse_check: bool = False,
    sparse_cells: int = 50_000,
    sparse_max_steps: int | None = None,
    backed_check: bool = False,
    backed_cells: int = 1_000_000,
    backed_max_steps: int | None = None,
    thread_check: bool = False,
    decoders: tuple[str, ...] | list[str] = ("standard",),
    trace_memory: bool = False,
    chunk_cells: int = 50_000,
    keep_data: bool = False,
    overwrite: bool = False,
) -> BenchResult:
    """Measure speed and memory (see the module docstring) and write ``out/``.

    With ``repeats > 1`` the children run in rounds, alternately SCVI first and SCVI last,
    and each model's figures are medians over the rounds.  ``speed=False`` leaves out the
    per-model timing (only the sparse check); ``keep_data`` keeps the screens in
    ``out/data/``.
    """
    model_list = parse_models(models) if speed else []  # scvi is always measured
    _validate_options(n_latent=n_latent, batch_size=batch_size, epochs=epochs, warmup_epochs=warmup_epochs,
                      is_cells=is_cells, is_samples=is_samples, is_samples_per_pass=is_samples_per_pass, seed=seed,
                      threads=threads, repeats=repeats, n_hidden=n_hidden, n_layers=n_layers,
                      chunk_cells=chunk_cells, sparse_cells=sparse_cells if sparse_check else None,
                      sparse_max_steps=sparse_max_steps, dropout_rate=dropout_rate,
                      backed_cells=backed_cells if backed_check else None, backed_max_steps=backed_max_steps)
    if not speed and not sparse_check and not backed_check:
        raise InputError("nothing to measure: --no-speed without --sparse-check or --backed-check")
    from scperturb_vae.module.likelihoods import DECODERS

    if not decoders or any(d not in DECODERS for d in decoders):
        raise InputError(f"--decoder must list decoders among {', '.join(DECODERS)}, not {','.join(decoders)!r}")
    if thread_check and not speed:
        raise InputError("--thread-check times sVAE+ on the speed screen: it needs --speed")
    screen = {"n_cells": n_cells, "n_genes": n_genes, "density": density, "n_perturbations": n_perturbations,
              "seed": seed}
    sparse_screen = {**screen, "n_cells": sparse_cells}
    backed_screen = {**screen, "n_cells": backed_cells}
    for s in ([screen] if speed else []) + ([sparse_screen] if sparse_check else []) + ([backed_screen] if backed_check else []):
        check_screen_sizes(s["n_cells"], n_genes, density, n_perturbations, CONTROL_FRACTION)
    out = check_output(out, overwrite)
    sizes = {**screen, "n_latent": n_latent, "n_hidden": n_hidden, "n_layers": n_layers, "dropout_rate": dropout_rate,
             "batch_size": batch_size, "warmup_epochs": warmup_epochs, "epochs": epochs, "is_cells": is_cells,
             "is_samples": is_samples, "is_samples_per_pass": is_samples_per_pass, "repeats": repeats}
    from scperturb_vae.threads import resolve_threads

    # the commands' own setting, resolved once here: every child of a comparison gets the same
    # count (resolved in each child, it would see the previous child's load)
    threads = resolve_threads(None)[0] if threads is None else threads
    info = _bench_info(sizes, threads)
    table = pd.DataFrame(columns=list(BENCH_COLUMNS))
    with atomic_dir(out, overwrite=overwrite) as tmp:
        work = Path(tempfile.mkdtemp(prefix=".work.", dir=tmp))
        data_dir = tmp / "data" if keep_data else work
        data_dir.mkdir(exist_ok=True)
        children = _Children(work=work, data_dir=data_dir, threads=threads, chunk_cells=chunk_cells)

        import_peak = _measure_imports(children, info)
        path = data_dir / "screen.h5ad"
        if speed:
            info["runs"] = _time_models(children, sizes, screen, path, model_list, list(decoders))
            table = summarise(info["runs"], {**sizes, "nnz": children.writes["speed"]["screen"]["nnz"]},
                              import_peak)
        if thread_check:
            info["thread_check"] = _thread_check(children, sizes, path)
        if sparse_check:
            reused = path if speed and sparse_cells == n_cells else None
            info["sparse_check"] = _sparse_check(children, sizes, sparse_screen, reused, sparse_max_steps,
                                                 trace_memory, import_peak)
        if backed_check:
            info["backed_check"] = _backed_check(children, sizes, backed_screen, backed_max_steps, import_peak)
        info["writer"] = _writer_info(children.writes, out, keep_data)
        info["machine"]["load_average_1min_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        table = with_check_rows(table, info, import_peak)
        markdown = bench_markdown(table, info)
        _write_outputs(tmp, table, info, markdown, speed)
        shutil.rmtree(work, ignore_errors=True)
    return BenchResult(out=out, table=table, info=info, markdown=markdown)


def _bench_info(sizes: dict[str, Any], threads: int) -> dict[str, Any]:
    """``bench.json`` before any measurement: the sizes, threads, machine, versions, command and method."""
    warmup_epochs = sizes["warmup_epochs"]
    return {
        "sizes": sizes,
        "threads": threads,
        "machine": machine_info(),
        "versions": package_versions(),
        "command": sys.argv,
        "method": {
            "reference": "scvi.model.SCVI with the same n_hidden, n_layers, n_latent, dropout_rate, "
                         "gene_likelihood='nb', batch size and scvi-tools' default train/validation split "
                         "(same seed, same cells)",
            "validation": "check_val_every_n_epoch=1 for every model (as scvae train)",
            "epoch_timing": f"Lightning callback, epoch start to end incl. validation, wall and process CPU "
                            f"time; the first {warmup_epochs} epoch(s) excluded from (cpu_)seconds_per_epoch",
            "importance_sampling": "get_marginal_ll on the same validation cells, same samples and samples "
                                   "per pass, after an untimed warm-up call",
            "memory": "each measurement in its own child process; peak = VmHWM, reset between stages",
            "target_ratio": TARGET_RATIO,
            "target_models": list(TARGET_MODELS),
        },
    }


def _measure_imports(children: _Children, info: dict[str, Any]) -> float:
    """The import-only child (the baseline of every peak): its peak RSS, recorded as ``import_only``."""
    imports = children.run({"kind": "import", "name": "imports"})
    import_peak = imports["peak_rss_mb"]
    info["import_only"] = imports
    logger.info(f"imports alone: peak RSS {import_peak:.0f} MB")
    return import_peak


def _time_models(children: _Children, sizes: dict[str, Any], screen: dict[str, Any], path: Path,
                 model_list: list[str], decoders: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Write the screen to ``path``, then train SCVI and each model (with each decoder) once a round.

    Every child's result by label (the model, or ``MODEL (DECODER)`` for a decoder other than
    the standard one).  Rounds alternate the order: SCVI first in even rounds, last in odd ones.
    """
    children.write("speed", "write", path, screen)
    repeats = sizes["repeats"]
    spec = {**sizes, "kind": "train", "path": str(path)}
    order = [(SCVI_NAME, "standard"), *((m, d) for m in model_list for d in decoders)]
    label = {(m, d): m if d == "standard" else f"{m} ({d})" for m, d in order}
    runs: dict[str, list[dict[str, Any]]] = {label[key]: [] for key in order}
    for rnd in range(repeats):
        for name, decoder in (order if rnd % 2 == 0 else order[::-1]):
            tag = f"{name}_{decoder}" if decoder != "standard" else name
            result = children.run({**spec, "model": name, "decoder": decoder,
                                   "name": f"{tag}_round{rnd}".replace("+", "plus")})
            runs[label[name, decoder]].append(result)
            logger.info(f"{label[name, decoder]} (round {rnd + 1}/{repeats}): {result['seconds_per_epoch']:.3f} s/epoch, "
                        f"IS {result.get('is_cell_samples_per_second', float('nan')):.0f} cell-samples/s, "
                        f"peak RSS {result['peak_rss_mb']:.0f} MB")
    return runs


def _sparse_check(children: _Children, sizes: dict[str, Any], screen: dict[str, Any], path: Path | None,
                  max_steps: int | None, trace_memory: bool, import_peak: float) -> dict[str, Any]:
    """``--sparse-check`` on ``path`` (the speed screen), or on a screen of its own when ``path`` is None."""
    if path is None:
        path = children.data_dir / "sparse_screen.h5ad"
        children.write("sparse", "write_sparse", path, screen)
    result = children.run({**sizes, "kind": "sparse", "name": "sparse", "path": str(path),
                           "n_cells": screen["n_cells"], "max_steps": max_steps, "trace_memory": trace_memory})
    s = sparse_summary(result, import_peak)
    logger.info(f"sparse check: peak RSS {s['peak_rss_mb']:.0f} MB ({s['peak_stage']}), CSR "
                f"{s['csr_mb']:.0f} MB + model {s['param_mb']:.1f} MB; ratio {s['ratio']:.2f}, "
                f"above imports {s['ratio_above_imports']:.2f}")
    return s


def _backed_check(children: _Children, sizes: dict[str, Any], screen: dict[str, Any], max_steps: int | None,
                  import_peak: float) -> dict[str, Any]:
    """``--backed-check``: sVAE+ trained from a screen of its own opened backed (out of core), then in memory.

    Both children train the same minibatches (one loader reads both) and time each pass:
    the training steps, the validation pass, the batch-norm recalibration and the latent pass.
    """
    path = children.data_dir / "backed_screen.h5ad"
    written = children.write("backed", "write_backed", path, screen)
    spec = {**sizes, "kind": "sparse", "path": str(path), "n_cells": screen["n_cells"], "max_steps": max_steps,
            "trace_memory": False}
    result = children.run({**spec, "name": "backed", "backed": True})
    memory = children.run({**spec, "name": "backed_in_memory", "backed": False})
    b = backed_summary(result, import_peak, written["screen"], memory)
    logger.info(f"out-of-core check: peak RSS {b['peak_rss_mb']:.0f} MB ({b['peak_stage']}) for "
                f"{b['n_cells']} cells, CSR on disk {b['csr_mb']:.0f} MB (target < {b['target_mb']:.0f} MB); "
                f"training steps {b['passes']['train_steps']['cells_per_second']:.0f} cells/s backed, "
                f"{memory['passes']['train_steps']['cells_per_second']:.0f} in memory "
                f"({b['train_steps_ratio']:.2f}x the time)")
    return b


def _thread_check(children: _Children, sizes: dict[str, Any], path: Path) -> list[dict[str, Any]]:
    """``--thread-check``: sVAE+ on the speed screen with the commands' own thread setting and each explicit count."""
    from scperturb_vae.threads import available_cores

    settings: list[int | None] = [None, *range(1, available_cores() + 1)]
    runs = []
    for threads in settings:
        label = "default" if threads is None else str(threads)
        result = children.run({**sizes, "kind": "train", "path": str(path), "model": "svae+", "is_cells": 0,
                               "name": f"threads_{label}", "threads": threads})
        runs.append({"setting": label, **result})
        logger.info(f"sVAE+ with threads={label} ({result['torch_threads']} torch threads): "
                    f"{result['seconds_per_epoch']:.3f} s/epoch")
    return runs


def _writer_info(writes: dict[str, dict[str, Any]], out: Path, keep_data: bool) -> dict[str, dict[str, Any]]:
    """``bench.json``'s ``writer``: each screen's sizes, speed and peaks, and its kept path (or None)."""
    writer = {k: {**v["screen"], "cells_per_second": v["screen"]["cells_per_second"],
                  "peak_rss_mb": v["peak_rss_mb"], "write_peak_rss_mb": v["write_peak_rss_mb"],
                  "import_peak_rss_mb": v["import_peak_rss_mb"]} for k, v in writes.items()}
    for w in writer.values():
        w["path"] = str(out / "data" / Path(w["path"]).name) if keep_data else None
    return writer


def _write_outputs(tmp: Path, table: pd.DataFrame, info: dict[str, Any], markdown: str, speed: bool) -> None:
    """``bench.csv`` (with the speed runs only), ``bench.json`` and ``bench.md`` into the folder being built."""
    if speed:
        table.to_csv(tmp / "bench.csv", index=False)
    write_json(info, tmp / "bench.json")
    (tmp / "bench.md").write_text(markdown)
