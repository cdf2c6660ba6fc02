"""Speed and memory of the models against scvi-tools' SCVI (``scvae bench``).

Not a unit test: one run on one generated screen, every measurement in its own child
process so that its peak memory is its own.

What is measured
----------------
:func:`write_synthetic_screen` writes a random CSR count screen straight to an ``.h5ad``
file, a chunk of cells at a time (the matrix is never held whole), in a child that also
reports its speed and peak memory.  Then, for ``scvi.model.SCVI`` and each model, one child
(``python -m scperturb_vae.bench.harness --worker SPEC``) opens the file as ``scvae train`` does
(:func:`~scperturb_vae.data.validate.open_perturbation_adata`: read and validate), sets the model up,
trains it and times the importance-sampled likelihood:

- the same network sizes (``n_hidden``, ``n_layers``, ``n_latent``, dropout), the
  negative binomial likelihood, batch norm in encoder and decoder (SCVI's default and
  ours), the same minibatch size, scvi-tools' default 90 / 10 split with the same seed
  (the same training cells), and validation after every epoch for both
  (``check_val_every_n_epoch=1``, as ``scvae train`` does);
- each epoch is timed by a Lightning callback from the start of its training loop to its
  end (validation included), in wall time and in the child's CPU time
  (``cpu_seconds_per_epoch``: steadier when other work shares the CPUs; each child runs
  one torch / BLAS thread by default, see :data:`DEFAULT_THREADS`); ``--warmup-epochs``
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

Outputs: ``bench.csv`` (one row per model), ``bench.json`` (sizes, versions, threads,
the machine, every stage of every child) and ``bench.md``; the folder appears complete or
not at all.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scperturb_vae.errors import InputError
from scperturb_vae.io import atomic_dir, atomic_path, check_output, write_json

logger = logging.getLogger("scperturb_vae")

__all__ = [
    "BENCH_COLUMNS",
    "CONTROL_FRACTION",
    "CONTROL_LABEL",
    "DEFAULT_THREADS",
    "SPARSE_TARGET",
    "TARGET_RATIO",
    "BenchResult",
    "default_threads",
    "parse_bench_models",
    "run_bench",
    "synthetic_blocks",
    "synthetic_screen_adata",
    "write_synthetic_screen",
]

#: the label of the control cells of a synthetic screen ...
CONTROL_LABEL = "control"
#: ... and their share of the cells
CONTROL_FRACTION = 0.1
#: the label of the reference in ``bench.csv``
SCVI_NAME = "scvi"
#: per-epoch time of sVAE+ and iVAE relative to SCVI that the models aim at
TARGET_RATIO = 1.2
#: peak memory of the sparse check relative to CSR + model bytes that it aims at
SPARSE_TARGET = 2.0
#: peak resident memory (MB) of an out-of-core (backed) training run that it aims at
BACKED_TARGET_MB = 3072.0
#: torch / BLAS threads of each child by default: on CPUs shared with other work, more threads
#: than free cores make OpenMP spin and timings swing by several times
DEFAULT_THREADS = 1
#: models held to :data:`TARGET_RATIO`
TARGET_MODELS = ("svae+", "ivae")
#: cells drawn from one random stream: the screen does not depend on ``chunk_cells``
BLOCK_CELLS = 2048
#: h5py chunk of the CSR ``data`` / ``indices`` datasets (elements)
_H5_CHUNK = 1 << 20
_MB = float(1 << 20)

#: ``bench.csv``'s columns, in order
BENCH_COLUMNS = (
    "model", "seconds_per_epoch", "ratio_to_scvi", "cpu_seconds_per_epoch", "cpu_ratio_to_scvi", "first_epoch_seconds", "train_loop_seconds_per_epoch",
    "validation_seconds_per_epoch", "post_train_seconds", "steps_per_epoch",
    "is_cells", "is_samples", "is_seconds", "is_cell_samples_per_second", "is_ratio_to_scvi", "is_nll_mean",
    "peak_rss_mb", "peak_rss_above_imports_mb", "train_peak_rss_mb", "param_bytes", "repeats",
    "n_cells", "n_train_cells", "n_genes", "density", "nnz", "n_perturbations", "n_latent", "n_hidden",
    "n_layers", "batch_size", "warmup_epochs", "epochs", "threads",
)


# =========================================================================== synthetic screen
def _check_screen_sizes(n_cells: int, n_genes: int, density: float, n_perturbations: int,
                        control_fraction: float, chunk_cells: int = 1) -> int:
    """Check the sizes of a synthetic screen; return its number of control cells."""
    if n_genes < 2:
        raise InputError(f"--n-genes must be at least 2, not {n_genes}")
    if not (0.0 < density <= 1.0) or not math.isfinite(density):
        raise InputError(f"--density must be in (0, 1], not {density}")
    if n_perturbations < 1:
        raise InputError(f"--n-perturbations must be at least 1, not {n_perturbations}")
    if not 0.0 < control_fraction < 1.0:
        raise InputError(f"the control fraction must be in (0, 1), not {control_fraction}")
    if chunk_cells < 1:
        raise InputError(f"chunk_cells must be at least 1, not {chunk_cells}")
    if n_cells < 10:
        raise InputError(f"--n-cells must be at least 10 (scvi-tools keeps 10% of the cells for validation), not {n_cells}")
    if n_cells < n_genes:
        raise InputError(
            f"--n-cells ({n_cells}) must be at least --n-genes ({n_genes}), so that every gene has counts"
        )
    n_control = max(1, round(control_fraction * n_cells))
    if n_cells - n_control < n_perturbations:
        raise InputError(
            f"--n-cells ({n_cells}) leaves {n_cells - n_control} perturbed cells for "
            f"{n_perturbations} perturbations; give at least one cell each"
        )
    return n_control


def _names(prefix: str, start: int, stop: int, width: int) -> np.ndarray:
    return np.array([f"{prefix}{i:0{width}d}" for i in range(start, stop)], dtype=object)


def _perturbation_names(n_perturbations: int) -> list[str]:
    return [CONTROL_LABEL, *(_names("PERT", 1, n_perturbations + 1, len(str(n_perturbations))))]


def _screen_parameters(n_cells: int, n_genes: int, n_perturbations: int, n_control: int, seed: int):
    """Gene means, per-perturbation log fold changes and every cell's label code (0 = control).

    Each perturbation changes about 2% of the genes (log fold change ~ N(0, 1)); labels are
    balanced (``n_control`` controls, the rest spread evenly) and shuffled.
    """
    rng = np.random.default_rng([seed, 0])
    gene_mean = rng.lognormal(0.0, 1.0, n_genes).astype(np.float32)
    lfc = np.zeros((n_perturbations + 1, n_genes), dtype=np.float32)
    targets = rng.random((n_perturbations, n_genes), dtype=np.float32) < 0.02
    lfc[1:][targets] = rng.standard_normal(int(targets.sum()), dtype=np.float32)
    code_dtype = np.int8 if n_perturbations < 127 else (np.int16 if n_perturbations < 32767 else np.int32)
    codes = np.empty(n_cells, dtype=code_dtype)
    codes[:n_control] = 0
    codes[n_control:] = 1 + np.arange(n_cells - n_control) % n_perturbations
    codes = codes[np.random.default_rng([seed, 1]).permutation(n_cells)]
    return gene_mean, lfc, codes


def _block(start: int, stop: int, n_genes: int, density: float, gene_mean: np.ndarray, lfc: np.ndarray,
           codes: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One block of cells as CSR pieces ``(data float32, indices int32, row counts int64)``.

    Cell ``i`` always has counts in gene ``i mod n_genes`` (no empty cell; no empty gene once
    there are as many cells as genes); each other gene has counts with probability
    ``density``, drawn as geometric gaps between detected genes (vectorised, exact).  A
    detected gene holds ``1 + Geometric`` counts of mean about ``mean_g * exp(lfc[a, g])``
    (an overdispersed count: a negative binomial of dispersion 1, shifted by one).
    """
    rng = np.random.default_rng([seed, 2, start // BLOCK_CELLS])
    m, others = stop - start, n_genes - 1
    forced = np.arange(start, stop, dtype=np.int32) % np.int32(n_genes)
    expected = others * density
    width = int(min(others, math.ceil(expected + 8.0 * math.sqrt(expected * (1.0 - density)) + 8.0)))
    # Geometric(density) gaps as 1 + floor(E / -log(1 - density)), E ~ Exp(1)
    scale = np.float32(1.0 / -math.log1p(-density)) if density < 1.0 else np.float32(0.0)

    def gaps(rows: int) -> np.ndarray:
        return (rng.standard_exponential((rows, width), dtype=np.float32) * scale).astype(np.int32) + 1

    pos = np.cumsum(gaps(m), axis=1, dtype=np.int32) - 1
    while True:  # rows whose gaps ended before the last gene (about 1e-15 of them) draw more
        short = pos[:, -1] < others - 1
        if not short.any():
            break
        more = np.full((m, width), others, dtype=np.int32)
        more[short] = pos[short, -1:] + np.cumsum(gaps(int(short.sum())), axis=1, dtype=np.int32)
        pos = np.concatenate([pos, more], axis=1)
    # positions among the other genes -> gene indices (skipping the forced gene); insert it
    pos += pos >= forced[:, None]
    valid = pos < n_genes
    n_valid = valid.sum(axis=1)
    before = (pos < forced[:, None]).sum(axis=1)
    row_start = np.cumsum(n_valid) - n_valid
    indices = np.insert(pos[valid], row_start + before, forced)
    counts = (n_valid + 1).astype(np.int64)
    rows = np.repeat(codes[start:stop].astype(np.intp), counts)
    rate = gene_mean[indices] * np.exp(lfc[rows, indices])
    extra = np.floor(rng.standard_exponential(indices.size, dtype=np.float32) * rate)
    return (extra + 1).astype(np.float32), indices.astype(np.int32, copy=False), counts


def synthetic_blocks(n_cells: int, n_genes: int, density: float, n_perturbations: int, seed: int,
                     control_fraction: float = CONTROL_FRACTION):
    """The labels and a generator of CSR blocks of a synthetic screen.

    Returns ``(codes, labels, blocks)``: each cell's label code, the label names (code 0 is
    :data:`CONTROL_LABEL`) and an iterator of ``(start, stop, data, indices, row_counts)``
    blocks of :data:`BLOCK_CELLS` cells.  The screen depends only on the sizes and the seed.
    """
    n_control = _check_screen_sizes(n_cells, n_genes, density, n_perturbations, control_fraction)
    gene_mean, lfc, codes = _screen_parameters(n_cells, n_genes, n_perturbations, n_control, seed)

    def blocks():
        for start in range(0, n_cells, BLOCK_CELLS):
            stop = min(n_cells, start + BLOCK_CELLS)
            yield (start, stop, *_block(start, stop, n_genes, density, gene_mean, lfc, codes, seed))

    return codes, _perturbation_names(n_perturbations), blocks()


def synthetic_screen_adata(n_cells: int, n_genes: int, density: float, n_perturbations: int, seed: int,
                           control_fraction: float = CONTROL_FRACTION):
    """The screen of :func:`write_synthetic_screen` built in memory (for small sizes and tests)."""
    import anndata as ad
    import scipy.sparse as sp

    codes, labels, blocks = synthetic_blocks(n_cells, n_genes, density, n_perturbations, seed, control_fraction)
    parts = [sp.csr_matrix((d, i, np.concatenate([[0], np.cumsum(c)])), shape=(b - a, n_genes))
             for a, b, d, i, c in blocks]
    obs = pd.DataFrame(
        {"perturbation": pd.Categorical.from_codes(codes.astype(np.int64), categories=labels)},
        index=pd.Index(_names("cell", 0, n_cells, len(str(n_cells - 1))), dtype=object),
    )
    var = pd.DataFrame(index=pd.Index(_names("GENE", 0, n_genes, len(str(n_genes - 1))), dtype=object))
    return ad.AnnData(X=sp.vstack(parts, format="csr").astype(np.float32), obs=obs, var=var)


def _string_dataset(group, name: str, n: int, chunk: int | None = None):
    import h5py

    ds = group.create_dataset(name, shape=(n,), dtype=h5py.string_dtype("utf-8"),
                              chunks=(max(1, min(n, chunk)),) if chunk else None)
    ds.attrs["encoding-type"] = "string-array"
    ds.attrs["encoding-version"] = "0.2.0"
    return ds


def write_synthetic_screen(
    path: str | os.PathLike,
    *,
    n_cells: int,
    n_genes: int,
    density: float,
    n_perturbations: int,
    seed: int,
    chunk_cells: int = 50_000,
    control_fraction: float = CONTROL_FRACTION,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write a random perturbation screen of raw counts to an ``.h5ad``, chunk by chunk.

    The file is anndata's on-disk format written with h5py: ``X`` a CSR group (``data``
    float32, ``indices`` int32, ``indptr``; resizable datasets grown one chunk of
    ``chunk_cells`` cells at a time, so memory stays near one chunk's whatever ``n_cells``),
    ``obs`` with the categorical column ``perturbation`` (:data:`CONTROL_LABEL` for a
    ``control_fraction`` of the cells, ``PERT1``... evenly for the rest) and cell names, ``var``
    with gene names.  Each gene is detected in a cell with probability ``density`` (plus one
    gene per cell in turn, so no cell or gene is empty); see :func:`synthetic_blocks`.  It
    opens with ``anndata.read_h5ad`` (also ``backed="r"``) and passes
    :func:`~scperturb_vae.data.validate.validate_perturbation_adata`.  The file appears complete or
    not at all.

    Returns the sizes, ``nnz``, the CSR bytes (as read into memory), the file's bytes and
    the seconds taken.
    """
    import h5py
    from anndata.io import write_elem

    from scperturb_vae.data.ondisk import create_csr_x

    start_time = time.perf_counter()
    codes, labels, blocks = synthetic_blocks(n_cells, n_genes, density, n_perturbations, seed, control_fraction)
    _check_screen_sizes(n_cells, n_genes, density, n_perturbations, control_fraction, chunk_cells)
    # int32 index pointers whenever the largest possible nnz fits (as anndata writes them)
    ptr_dtype = np.int32 if n_cells * n_genes < np.iinfo(np.int32).max else np.int64
    width = len(str(n_cells - 1))
    nnz = 0
    with atomic_path(path, overwrite=overwrite) as tmp:
        with h5py.File(tmp, "w") as f:
            chunk = int(max(1, min(_H5_CHUNK, n_cells * (1 + density * n_genes))))
            data, indices, indptr = create_csr_x(f, n_cells, n_genes, chunk=chunk, ptr_dtype=ptr_dtype)

            obs = f.create_group("obs")
            obs.attrs.update({"_index": "_index", "column-order": np.array(["perturbation"], dtype=object),
                              "encoding-type": "dataframe", "encoding-version": "0.2.0"})
            names = _string_dataset(obs, "_index", n_cells, chunk=1 << 16)
            pert = obs.create_group("perturbation")
            pert.attrs.update({"encoding-type": "categorical", "encoding-version": "0.2.0", "ordered": False})
            _string_dataset(pert, "categories", len(labels))[:] = np.array(labels, dtype=object)
            codes_ds = pert.create_dataset("codes", data=codes)
            codes_ds.attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})

            pending: list[tuple] = []

            def flush():
                nonlocal nnz
                if not pending:
                    return
                a, b = pending[0][0], pending[-1][1]
                counts = np.concatenate([p[4] for p in pending])
                total = int(counts.sum())
                data.resize((nnz + total,))
                indices.resize((nnz + total,))
                offset = nnz
                for _, _, d, i, _ in pending:  # block by block: no concatenated copy of the chunk
                    data[offset:offset + d.size] = d
                    indices[offset:offset + d.size] = i
                    offset += d.size
                indptr[a + 1:b + 1] = (nnz + np.cumsum(counts)).astype(ptr_dtype)
                names[a:b] = _names("cell", a, b, width)
                nnz += total
                pending.clear()

            for block in blocks:
                pending.append(block)
                if block[1] - pending[0][0] >= chunk_cells:
                    flush()
            flush()

            write_elem(f, "var", pd.DataFrame(index=pd.Index(_names("GENE", 0, n_genes, len(str(n_genes - 1))),
                                                             dtype=object)))
            write_elem(f, "uns", {"synthetic_screen": {
                "n_cells": n_cells, "n_genes": n_genes, "density": float(density),
                "n_perturbations": n_perturbations, "seed": seed, "control_fraction": float(control_fraction),
            }})
            for key in ("layers", "obsm", "obsp", "varm", "varp"):
                write_elem(f, key, {})
        file_bytes = tmp.stat().st_size
    itemsize = np.dtype(ptr_dtype).itemsize
    return {
        "path": str(path),
        "n_cells": n_cells,
        "n_genes": n_genes,
        "density": float(density),
        "n_perturbations": n_perturbations,
        "seed": seed,
        "nnz": int(nnz),
        "observed_density": nnz / (n_cells * n_genes),
        "csr_bytes": int(nnz * (4 + 4) + (n_cells + 1) * itemsize),
        "file_bytes": int(file_bytes),
        "chunk_cells": chunk_cells,
        "seconds": time.perf_counter() - start_time,
    }


# =========================================================================== memory of a process
def _proc_status() -> dict[str, float]:
    """``VmHWM`` / ``VmRSS`` / ``RssAnon`` / ``RssFile`` of this process in MB (Linux), else the rusage peak.

    ``RssFile`` is mostly the pages of shared libraries touched so far (libtorch_cpu alone
    is several hundred MB); ``RssAnon`` is the memory the process allocated.
    """
    try:
        text = Path("/proc/self/status").read_text()
        found = {k: int(v) / 1024.0
                 for k, v in re.findall(r"^(VmHWM|VmRSS|RssAnon|RssFile):\s+(\d+)\s+kB", text, re.MULTILINE)}
        if "VmHWM" in found:
            return found
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak_mb = peak / _MB if sys.platform == "darwin" else peak / 1024.0
    return {"VmHWM": peak_mb, "VmRSS": float("nan")}


def _reset_peak() -> bool:
    """Reset this process's peak RSS (Linux >= 4.0: ``echo 5 > /proc/self/clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


class _Stages:
    """Seconds, peak RSS and RSS at the end of each stage of a child process."""

    def __init__(self) -> None:
        self.stages: list[dict[str, Any]] = []
        self.resettable = _reset_peak()
        self._start = time.perf_counter()

    def done(self, name: str, **extra) -> None:
        status = _proc_status()
        now = time.perf_counter()
        self.stages.append({"stage": name, "seconds": now - self._start, "peak_rss_mb": status["VmHWM"],
                            "rss_mb": status.get("VmRSS", float("nan")),
                            "rss_anon_mb": status.get("RssAnon", float("nan")),
                            "rss_file_mb": status.get("RssFile", float("nan")), **extra})
        if self.resettable:
            self.resettable = _reset_peak()
        self._start = time.perf_counter()

    @property
    def peak_mb(self) -> float:
        return max(s["peak_rss_mb"] for s in self.stages)

    def peak_of(self, name: str) -> float:
        return next(s["peak_rss_mb"] for s in self.stages if s["stage"] == name)


# =========================================================================== child processes
def default_threads() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _thread_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        env[key] = str(threads)
    env.setdefault("PYTHONWARNINGS", "ignore")
    return env


def _run_child(spec: dict[str, Any], work: Path, threads: int) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter; its result, with the kernel's peak RSS."""
    name = spec["name"]
    spec = {**spec, "result": str(work / f"{name}.result.json"), "threads": threads}
    spec_path = work / f"{name}.spec.json"
    spec_path.write_text(json.dumps(spec))
    log_path = work / f"{name}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "scperturb_vae.bench.harness", "--worker", str(spec_path)],
                                stdout=log, stderr=subprocess.STDOUT, env=_thread_env(threads))
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-15:]
        how = f"was killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exited with {proc.returncode}"
        raise RuntimeError(f"benchmark child {name!r} {how}:\n" + "\n".join(tail))
    result = json.loads(Path(spec["result"]).read_text())
    # ru_maxrss of the child alone (it may be lower than the child's own figure, which
    # takes the largest of the stages' peaks when the peak is reset between stages)
    result["wait4_maxrss_mb"] = usage.ru_maxrss / 1024.0
    result["peak_rss_mb"] = max(result["peak_rss_mb"], result["wait4_maxrss_mb"])
    return result


def _work_import(spec: dict[str, Any]) -> dict[str, Any]:
    """Only import what a training child imports."""
    stages = _Stages()
    import anndata  # noqa: F401
    import lightning  # noqa: F401
    import scvi  # noqa: F401
    import torch

    from scperturb_vae.model import models  # noqa: F401

    torch.set_num_threads(spec["threads"])
    stages.done("import")
    return {"stages": stages.stages, "peak_rss_mb": stages.peak_mb}


def _work_write(spec: dict[str, Any]) -> dict[str, Any]:
    stages = _Stages()
    import anndata  # noqa: F401
    import h5py  # noqa: F401

    stages.done("import")
    info = write_synthetic_screen(spec["path"], **spec["screen"], chunk_cells=spec["chunk_cells"])
    stages.done("write")
    info["cells_per_second"] = info["n_cells"] / max(info["seconds"], 1e-9)
    return {"stages": stages.stages, "peak_rss_mb": stages.peak_mb, "write_peak_rss_mb": stages.peak_of("write"),
            "import_peak_rss_mb": stages.peak_of("import"), "screen": info}


def _epoch_timer():
    """A Lightning callback recording each epoch's seconds and its validation seconds."""
    from lightning.pytorch.callbacks import Callback

    class EpochTimer(Callback):
        def __init__(self):
            self.epochs: list[float] = []
            self.cpu: list[float] = []
            self.validation: list[float] = []
            self.steps: list[int] = []
            self.train_end: float | None = None
            self._epoch = self._cpu = 0.0
            self._val: float | None = None
            self._val_seconds = 0.0

        def on_train_epoch_start(self, trainer, pl_module):
            self._epoch, self._cpu, self._val_seconds = time.perf_counter(), time.process_time(), 0.0

        def on_validation_start(self, trainer, pl_module):
            if not trainer.sanity_checking:
                self._val = time.perf_counter()

        def on_validation_end(self, trainer, pl_module):
            if not trainer.sanity_checking and self._val is not None:
                self._val_seconds += time.perf_counter() - self._val
                self._val = None

        def on_train_epoch_end(self, trainer, pl_module):
            self.epochs.append(time.perf_counter() - self._epoch)
            self.cpu.append(time.process_time() - self._cpu)
            self.validation.append(self._val_seconds)
            self.steps.append(int(trainer.num_training_batches))

        def on_train_end(self, trainer, pl_module):
            self.train_end = time.perf_counter()

    return EpochTimer()


def _param_bytes(module) -> int:
    return int(sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers())))


def _setup_model(name: str, data, spec: dict[str, Any]):
    """Set up ``name`` (a model of ours or ``scvi``) on the opened data with the bench's sizes."""
    import scvi

    from scperturb_vae.model.models import MODELS

    adata = data.adata
    net = {"n_hidden": spec["n_hidden"], "n_layers": spec["n_layers"], "dropout_rate": spec["dropout_rate"]}
    if name == SCVI_NAME:
        scvi.model.SCVI.setup_anndata(adata)
        return scvi.model.SCVI(adata, n_latent=spec["n_latent"], gene_likelihood="nb", **net)
    cls = MODELS[name]
    cls.setup_anndata(adata, perturbation_key=data.perturbation_key, control_label=data.control_label)
    return cls(adata, n_latent=spec["n_latent"], likelihood="nb", **net)


def _work_train(spec: dict[str, Any]) -> dict[str, Any]:
    """Open, set up, train (timed per epoch) and time the importance-sampled likelihood."""
    stages = _Stages()
    import scvi
    import torch

    from scperturb_vae.data.validate import open_perturbation_adata
    from scperturb_vae.logs import quiet_third_party

    quiet_third_party()
    torch.set_num_threads(spec["threads"])
    stages.done("import")
    data = open_perturbation_adata(spec["path"], min_cells=0)
    stages.done("read")
    scvi.settings.seed = spec["seed"]
    model = _setup_model(spec["model"], data, spec)
    stages.done("setup")

    timer = _epoch_timer()
    n_epochs = spec["warmup_epochs"] + spec["epochs"]
    model.train(max_epochs=n_epochs, batch_size=spec["batch_size"], check_val_every_n_epoch=1,
                enable_progress_bar=False, callbacks=[timer])
    returned = time.perf_counter()
    stages.done("train")

    timed = timer.epochs[spec["warmup_epochs"]:]
    timed_cpu = timer.cpu[spec["warmup_epochs"]:]
    timed_val = timer.validation[spec["warmup_epochs"]:]
    result: dict[str, Any] = {
        "model": spec["model"],
        "epoch_seconds": timer.epochs,
        "epoch_cpu_seconds": timer.cpu,
        "validation_seconds": timer.validation,
        "first_epoch_seconds": timer.epochs[0],
        "seconds_per_epoch": float(np.mean(timed)),
        "cpu_seconds_per_epoch": float(np.mean(timed_cpu)),
        "train_loop_seconds_per_epoch": float(np.mean(np.subtract(timed, timed_val))),
        "validation_seconds_per_epoch": float(np.mean(timed_val)),
        "post_train_seconds": returned - timer.train_end,
        "steps_per_epoch": timer.steps[-1],
        "n_train_cells": len(model.train_indices),
        "param_bytes": _param_bytes(model.module),
        "torch_threads": torch.get_num_threads(),
    }

    if spec["is_cells"] > 0:
        pool = np.sort(np.asarray(model.validation_indices))
        if len(pool) < spec["is_cells"]:
            pool = np.arange(model.adata.n_obs)
        idx = pool[: spec["is_cells"]]
        kwargs = {"n_mc_samples": spec["is_samples"], "batch_size": spec["batch_size"],
                  "n_mc_samples_per_pass": min(spec["is_samples_per_pass"], spec["is_samples"])}
        if spec["model"] == SCVI_NAME:
            kwargs["return_mean"] = False
        warm = {**kwargs, "n_mc_samples": kwargs["n_mc_samples_per_pass"]}
        model.get_marginal_ll(indices=idx[: spec["batch_size"]], **warm)  # warm-up, untimed
        start = time.perf_counter()
        ll = model.get_marginal_ll(indices=idx, **kwargs)
        seconds = time.perf_counter() - start
        ll = np.asarray(ll.cpu().numpy() if hasattr(ll, "cpu") else ll, dtype=np.float64)
        result.update({
            "is_cells": len(idx),
            "is_samples": spec["is_samples"],
            "is_seconds": seconds,
            "is_cell_samples_per_second": len(idx) * spec["is_samples"] / max(seconds, 1e-9),
            "is_nll_mean": float(-ll.mean()),
        })
        stages.done("importance_sampling")
    result.update({"stages": stages.stages, "peak_rss_mb": stages.peak_mb, "train_peak_rss_mb": stages.peak_of("train")})
    return result


def _work_sparse(spec: dict[str, Any]) -> dict[str, Any]:
    """sVAE+ end to end on a CSR screen, each stage's peak RSS; optionally tracemalloc."""
    stages = _Stages()
    import scvi
    import torch

    from scperturb_vae.data.validate import file_sha256, read_h5ad_checked, validate_perturbation_adata
    from scperturb_vae.logs import quiet_third_party
    from scperturb_vae.model.models import SVAEPlus

    quiet_third_party()
    torch.set_num_threads(spec["threads"])
    trace = bool(spec.get("trace_memory"))
    traced: dict[str, Any] = {}
    if trace:
        import tracemalloc

        tracemalloc.start()

    def done(name: str) -> None:
        if trace:
            current, peak = tracemalloc.get_traced_memory()
            top = tracemalloc.take_snapshot().statistics("lineno")[:5]
            traced[name] = {"traced_peak_mb": peak / _MB, "traced_current_mb": current / _MB,
                            "top_retained": [f"{s.traceback[0].filename}:{s.traceback[0].lineno} "
                                             f"{s.size / _MB:.1f} MB" for s in top]}
            tracemalloc.reset_peak()
        stages.done(name)

    done("import")
    backed = bool(spec.get("backed"))
    adata = read_h5ad_checked(spec["path"], backed=backed)
    X = adata.X
    if backed:  # the sizes of the arrays on disk (never read whole here)
        import h5py

        with h5py.File(spec["path"], "r") as f:
            arrays = [f["X"][name] for name in ("data", "indices", "indptr")]
            csr_bytes = int(sum(a.size * a.dtype.itemsize for a in arrays))
            nnz = int(arrays[0].size)
    else:
        csr_bytes = int(X.data.nbytes + X.indices.nbytes + X.indptr.nbytes)
        nnz = int(X.nnz)
    done("read")
    # what open_perturbation_adata does after reading, as its own stage
    data = validate_perturbation_adata(adata, min_cells=0, path=spec["path"], sha256=file_sha256(spec["path"]))
    done("validate")
    scvi.settings.seed = spec["seed"]
    SVAEPlus.setup_anndata(adata, perturbation_key=data.perturbation_key, control_label=data.control_label)
    done("setup_anndata")
    model = SVAEPlus(adata, n_latent=spec["n_latent"], n_hidden=spec["n_hidden"], n_layers=spec["n_layers"],
                     dropout_rate=spec["dropout_rate"])
    param_bytes = _param_bytes(model.module)
    done("model")
    extra = {} if spec.get("max_steps") is None else {"limit_train_batches": int(spec["max_steps"])}
    model.train(max_epochs=1, batch_size=spec["batch_size"], check_val_every_n_epoch=1,
                enable_progress_bar=False, **extra)
    done("train")
    steps = int(model.trainer.fit_loop.epoch_loop.batch_progress.total.completed) if getattr(model, "trainer", None) else None
    latent = model.get_latent_representation(batch_size=spec["batch_size"])
    done("latent")
    return {
        "n_cells": int(adata.n_obs), "n_genes": int(adata.n_vars), "nnz": nnz, "backed": backed,
        "csr_bytes": csr_bytes, "param_bytes": param_bytes, "latent_shape": list(latent.shape), "train_steps": steps,
        "stages": stages.stages, "peak_rss_mb": stages.peak_mb, "peak_resettable": stages.resettable,
        "tracemalloc": traced or None,
    }


_WORKERS = {"import": _work_import, "write": _work_write, "train": _work_train, "sparse": _work_sparse}


def _worker_main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "--worker":
        print("usage: python -m scperturb_vae.bench.harness --worker SPEC.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[1]).read_text())
    result = _WORKERS[spec["kind"]](spec)
    write_json(result, spec["result"])
    return 0


# =========================================================================== the benchmark
def parse_bench_models(models: str) -> list[str]:
    """``"svae+,ivae"`` -> known, distinct model names (``scvi`` is always measured)."""
    from scperturb_vae.model.registry import parse_models

    return parse_models(models)


def _machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpus_allowed": default_threads(),
    }
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        found = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
        info["cpu_model"] = found.group(1).strip() if found else platform.processor()
        meminfo = Path("/proc/meminfo").read_text()
        found = re.search(r"^MemTotal:\s+(\d+)\s+kB", meminfo, re.MULTILINE)
        if found:
            info["memory_total_gb"] = round(int(found.group(1)) / 1024**2, 2)
    except OSError:
        info["cpu_model"] = platform.processor()
    try:
        info["load_average_1min"] = os.getloadavg()[0]
    except OSError:  # pragma: no cover
        pass
    return info


def _versions() -> dict[str, str]:
    from scperturb_vae.io import package_versions as versions

    return versions()


@dataclass
class BenchResult:
    out: Path
    #: one row per model (``bench.csv``); empty with ``speed=False``
    table: pd.DataFrame
    #: ``bench.json``
    info: dict[str, Any]
    #: ``bench.md``
    markdown: str


def _fmt(value, digits: int = 2) -> str:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return "n/a"
    return f"{value:.{digits}f}" if math.isfinite(value) else "n/a"


def _median(values: list[float]) -> float:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.median(values)) if values else float("nan")


def _summarise(runs: dict[str, list[dict[str, Any]]], sizes: dict[str, Any], import_peak: float,
               threads: int) -> pd.DataFrame:
    """One row per model: medians over repeats, ratios to SCVI's medians."""
    rows = []
    for name, results in runs.items():
        first = results[0]
        row: dict[str, Any] = {"model": name, "repeats": len(results)}
        for key in ("seconds_per_epoch", "cpu_seconds_per_epoch", "first_epoch_seconds", "train_loop_seconds_per_epoch",
                    "validation_seconds_per_epoch", "post_train_seconds", "is_seconds",
                    "is_cell_samples_per_second", "is_nll_mean", "peak_rss_mb", "train_peak_rss_mb"):
            row[key] = _median([r.get(key, float("nan")) for r in results])
        row["peak_rss_above_imports_mb"] = row["peak_rss_mb"] - import_peak
        for key in ("steps_per_epoch", "param_bytes", "n_train_cells", "is_cells", "is_samples"):
            row[key] = first.get(key)
        rows.append(row)
    table = pd.DataFrame(rows)
    ref = table.loc[table["model"] == SCVI_NAME].iloc[0]
    table["ratio_to_scvi"] = table["seconds_per_epoch"] / ref["seconds_per_epoch"]
    table["cpu_ratio_to_scvi"] = table["cpu_seconds_per_epoch"] / ref["cpu_seconds_per_epoch"]
    table["is_ratio_to_scvi"] = table["is_seconds"] / ref["is_seconds"]
    for key in ("n_cells", "n_genes", "density", "nnz", "n_perturbations", "n_latent", "n_hidden", "n_layers",
                "batch_size", "warmup_epochs", "epochs"):
        table[key] = sizes[key]
    table["threads"] = threads
    return table[list(BENCH_COLUMNS)]


def _speed_markdown(table: pd.DataFrame) -> list[str]:
    lines = [
        ("| model | s / epoch | ratio to SCVI | CPU s / epoch | CPU ratio | first epoch s | train loop s "
         "| validation s | post-train s | IS cells x samples / s | IS time ratio | IS NLL | peak RSS MB "
         "| training peak MB | above imports MB |"),
        "|---|" + "---:|" * 14,
    ]
    for _, r in table.iterrows():
        lines.append(
            f"| {r['model']} | {_fmt(r['seconds_per_epoch'], 3)} | {_fmt(r['ratio_to_scvi'])} | "
            f"{_fmt(r['cpu_seconds_per_epoch'], 3)} | {_fmt(r['cpu_ratio_to_scvi'])} | "
            f"{_fmt(r['first_epoch_seconds'], 3)} | {_fmt(r['train_loop_seconds_per_epoch'], 3)} | "
            f"{_fmt(r['validation_seconds_per_epoch'], 3)} | {_fmt(r['post_train_seconds'], 3)} | "
            f"{_fmt(r['is_cell_samples_per_second'], 0)} | {_fmt(r['is_ratio_to_scvi'])} | "
            f"{_fmt(r['is_nll_mean'], 1)} | {_fmt(r['peak_rss_mb'], 0)} | {_fmt(r['train_peak_rss_mb'], 0)} | "
            f"{_fmt(r['peak_rss_above_imports_mb'], 0)} |"
        )
    return lines


def _sparse_summary(result: dict[str, Any], import_peak: float) -> dict[str, Any]:
    denominator_mb = (result["csr_bytes"] + result["param_bytes"]) / _MB
    peak = result["peak_rss_mb"]
    worst = max(result["stages"], key=lambda s: s["peak_rss_mb"])
    return {
        **result,
        "csr_mb": result["csr_bytes"] / _MB,
        "param_mb": result["param_bytes"] / _MB,
        "import_peak_rss_mb": import_peak,
        "ratio": peak / denominator_mb,
        "ratio_above_imports": (peak - import_peak) / denominator_mb,
        "target": SPARSE_TARGET,
        "judged_by": "ratio_above_imports",
        "peak_stage": worst["stage"],
    }


def _backed_summary(result: dict[str, Any], import_peak: float, screen: dict[str, Any]) -> dict[str, Any]:
    worst = max(result["stages"], key=lambda s: s["peak_rss_mb"])
    return {
        **result,
        "csr_mb": result["csr_bytes"] / _MB,
        "file_mb": screen.get("file_bytes", float("nan")) / _MB,
        "import_peak_rss_mb": import_peak,
        "target_mb": BACKED_TARGET_MB,
        "meets_target": result["peak_rss_mb"] < BACKED_TARGET_MB,
        "peak_stage": worst["stage"],
    }


def _backed_markdown(b: dict[str, Any]) -> list[str]:
    steps = b.get("train_steps")
    lines = [
        (f"sVAE+ trained from a backed (on-disk, read-only) file of {b['n_cells']} cells x {b['n_genes']} genes, "
         f"{b['nnz']} stored counts (CSR {_fmt(b['csr_mb'], 0)} MB on disk), minibatches read by scvi-tools' "
         f"loader; {steps if steps is not None else '?'} training minibatches, then the full validation pass, "
         "the batch-norm recalibration pass over the training cells and the latent pass over every cell."),
        "",
        (f"**peak RSS {_fmt(b['peak_rss_mb'], 0)} MB** (stage {b['peak_stage']}; imports alone "
         f"{_fmt(b['import_peak_rss_mb'], 0)} MB); target < {_fmt(b['target_mb'], 0)} MB: "
         f"{'met' if b['meets_target'] else 'NOT met'}."),
        "",
        "| stage | seconds | peak RSS MB | RSS at end MB |",
        "|---|---:|---:|---:|",
    ]
    for st in b["stages"]:
        lines.append(f"| {st['stage']} | {_fmt(st['seconds'], 2)} | {_fmt(st['peak_rss_mb'], 0)} | {_fmt(st['rss_mb'], 0)} |")
    return lines


def _sparse_markdown(s: dict[str, Any]) -> list[str]:
    lines = [
        (f"sVAE+ on {s['n_cells']} cells x {s['n_genes']} genes, {s['nnz']} stored counts: CSR "
         f"{_fmt(s['csr_mb'], 1)} MB, parameters {_fmt(s['param_mb'], 2)} MB; imports alone "
         f"{_fmt(s['import_peak_rss_mb'], 0)} MB."),
        "",
        (f"**peak RSS {_fmt(s['peak_rss_mb'], 0)} MB** (stage {s['peak_stage']}): "
         f"peak / (CSR + model) = {_fmt(s['ratio'])}; "
         f"(peak - imports) / (CSR + model) = **{_fmt(s['ratio_above_imports'])}** "
         f"(target <= {_fmt(s['target'], 1)}, judged on the ratio above the imports: the imports are a "
         "constant of the process, not a cost of the data)."),
        "",
        "| stage | seconds | peak RSS MB | RSS at end MB | of which anonymous | of which files (libraries) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for st in s["stages"]:
        lines.append(f"| {st['stage']} | {_fmt(st['seconds'], 2)} | {_fmt(st['peak_rss_mb'], 0)} | "
                     f"{_fmt(st['rss_mb'], 0)} | {_fmt(st.get('rss_anon_mb'), 0)} | {_fmt(st.get('rss_file_mb'), 0)} |")
    if not s.get("peak_resettable", True):
        lines += ["", "The kernel did not let the peak be reset: stage peaks are cumulative."]
    return lines


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
    threads = DEFAULT_THREADS if threads is None else threads
    model_list = parse_bench_models(models) if speed else []
    _validate_options(n_latent=n_latent, batch_size=batch_size, epochs=epochs, warmup_epochs=warmup_epochs,
                      is_cells=is_cells, is_samples=is_samples, is_samples_per_pass=is_samples_per_pass, seed=seed,
                      threads=threads, repeats=repeats, n_hidden=n_hidden, n_layers=n_layers,
                      chunk_cells=chunk_cells, sparse_cells=sparse_cells if sparse_check else None,
                      sparse_max_steps=sparse_max_steps, dropout_rate=dropout_rate,
                      backed_cells=backed_cells if backed_check else None, backed_max_steps=backed_max_steps)
    if not speed and not sparse_check and not backed_check:
        raise InputError("nothing to measure: --no-speed without --sparse-check or --backed-check")
    screen = {"n_cells": n_cells, "n_genes": n_genes, "density": density, "n_perturbations": n_perturbations,
              "seed": seed}
    sparse_screen = {**screen, "n_cells": sparse_cells}
    backed_screen = {**screen, "n_cells": backed_cells}
    for s in ([screen] if speed else []) + ([sparse_screen] if sparse_check else []) + ([backed_screen] if backed_check else []):
        _check_screen_sizes(s["n_cells"], n_genes, density, n_perturbations, CONTROL_FRACTION)
    out = check_output(out, overwrite)
    sizes = {**screen, "n_latent": n_latent, "n_hidden": n_hidden, "n_layers": n_layers, "dropout_rate": dropout_rate,
             "batch_size": batch_size, "warmup_epochs": warmup_epochs, "epochs": epochs, "is_cells": is_cells,
             "is_samples": is_samples, "is_samples_per_pass": is_samples_per_pass, "repeats": repeats}
    info: dict[str, Any] = {
        "sizes": sizes,
        "threads": threads,
        "machine": _machine(),
        "versions": _versions(),
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
    table = pd.DataFrame(columns=list(BENCH_COLUMNS))
    with atomic_dir(out, overwrite=overwrite) as tmp:
        work = Path(tempfile.mkdtemp(prefix=".work.", dir=tmp))
        data_dir = tmp / "data" if keep_data else work
        data_dir.mkdir(exist_ok=True)
        child = {"work": work, "threads": threads}

        imports = _run_child({"kind": "import", "name": "imports"}, **child)
        import_peak = imports["peak_rss_mb"]
        info["import_only"] = imports
        logger.info(f"imports alone: peak RSS {import_peak:.0f} MB")

        writes = {}
        path = data_dir / "screen.h5ad"
        if speed:
            writes["speed"] = _run_child({"kind": "write", "name": "write", "path": str(path), "screen": screen,
                                          "chunk_cells": chunk_cells}, **child)
            _log_write(writes["speed"])
        spec = {**sizes, "kind": "train", "path": str(path)}
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in (SCVI_NAME, *model_list)}
        order = [SCVI_NAME, *model_list]
        for rnd in range(repeats if speed else 0):
            for name in (order if rnd % 2 == 0 else order[::-1]):
                result = _run_child({**spec, "model": name, "name": f"{name}_round{rnd}".replace("+", "plus")},
                                    **child)
                runs[name].append(result)
                logger.info(f"{name} (round {rnd + 1}/{repeats}): {result['seconds_per_epoch']:.3f} s/epoch, "
                            f"IS {result.get('is_cell_samples_per_second', float('nan')):.0f} cell-samples/s, "
                            f"peak RSS {result['peak_rss_mb']:.0f} MB")
        if speed:
            info["runs"] = runs
            table = _summarise(runs, {**sizes, "nnz": writes["speed"]["screen"]["nnz"]}, import_peak, threads)
        if sparse_check:
            sparse_path = path
            if not speed or sparse_cells != n_cells:
                sparse_path = data_dir / "sparse_screen.h5ad"
                writes["sparse"] = _run_child({"kind": "write", "name": "write_sparse", "path": str(sparse_path),
                                               "screen": sparse_screen, "chunk_cells": chunk_cells}, **child)
                _log_write(writes["sparse"])
            result = _run_child({**sizes, "kind": "sparse", "name": "sparse", "path": str(sparse_path),
                                 "n_cells": sparse_cells, "max_steps": sparse_max_steps,
                                 "trace_memory": trace_memory}, **child)
            info["sparse_check"] = _sparse_summary(result, import_peak)
            s = info["sparse_check"]
            logger.info(f"sparse check: peak RSS {s['peak_rss_mb']:.0f} MB ({s['peak_stage']}), CSR "
                        f"{s['csr_mb']:.0f} MB + model {s['param_mb']:.1f} MB; ratio {s['ratio']:.2f}, "
                        f"above imports {s['ratio_above_imports']:.2f}")
        if backed_check:
            backed_path = data_dir / "backed_screen.h5ad"
            writes["backed"] = _run_child({"kind": "write", "name": "write_backed", "path": str(backed_path),
                                           "screen": backed_screen, "chunk_cells": chunk_cells}, **child)
            _log_write(writes["backed"])
            result = _run_child({**sizes, "kind": "sparse", "name": "backed", "path": str(backed_path),
                                 "n_cells": backed_cells, "max_steps": backed_max_steps, "backed": True,
                                 "trace_memory": False}, **child)
            info["backed_check"] = _backed_summary(result, import_peak, writes["backed"]["screen"])
            b = info["backed_check"]
            logger.info(f"out-of-core check: peak RSS {b['peak_rss_mb']:.0f} MB ({b['peak_stage']}) for "
                        f"{b['n_cells']} cells, CSR on disk {b['csr_mb']:.0f} MB (target < {b['target_mb']:.0f} MB)")
        info["writer"] = {k: {**v["screen"], "cells_per_second": v["screen"]["cells_per_second"],
                              "peak_rss_mb": v["peak_rss_mb"], "write_peak_rss_mb": v["write_peak_rss_mb"],
                              "import_peak_rss_mb": v["import_peak_rss_mb"]} for k, v in writes.items()}
        for w in info["writer"].values():
            w["path"] = str(out / "data" / Path(w["path"]).name) if keep_data else None
        info["machine"]["load_average_1min_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        markdown = _markdown(table, info)
        if speed:
            table.to_csv(tmp / "bench.csv", index=False)
        write_json(info, tmp / "bench.json")
        (tmp / "bench.md").write_text(markdown)
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return BenchResult(out=out, table=table, info=info, markdown=markdown)


def _log_write(result: dict[str, Any]) -> None:
    s = result["screen"]
    logger.info(f"wrote a {s['n_cells']} x {s['n_genes']} screen ({s['nnz']} counts) in {s['seconds']:.1f} s: "
                f"{s['cells_per_second']:.0f} cells/s, writer peak RSS {result['write_peak_rss_mb']:.0f} MB "
                f"(imports {result['import_peak_rss_mb']:.0f} MB)")


def _markdown(table: pd.DataFrame, info: dict[str, Any]) -> str:
    sz, m = info["sizes"], info["machine"]
    lines = [
        "# scvae bench",
        "",
        (f"{m.get('cpu_model', '?')}, {info['threads']} thread(s) of {m.get('cpus_allowed')} allowed CPUs, "
         f"load average {_fmt(m.get('load_average_1min'))} -> {_fmt(m.get('load_average_1min_end'))}; "
         f"torch {info['versions'].get('torch')}, scvi-tools {info['versions'].get('scvi-tools')}."),
        "",
    ]
    if len(table):
        lines += [
            "## Speed against scvi.model.SCVI",
            "",
            (f"{sz['n_cells']} cells x {sz['n_genes']} genes (density {sz['density']}), {sz['n_perturbations']} "
             f"perturbations; {sz['n_latent']} latents, {sz['n_layers']} x {sz['n_hidden']} hidden, batch "
             f"{sz['batch_size']}, {sz['warmup_epochs']} warm-up + {sz['epochs']} timed epochs, validation every "
             f"epoch for all; importance sampling on {sz['is_cells']} cells x {sz['is_samples']} samples. "
             f"Medians over {sz['repeats']} round(s); ratios are time ratios (above 1: slower than SCVI); CPU s "
             f"is the child's CPU time in the epoch (all threads), steadier than wall time when other work "
             f"shares the CPUs. Peak RSS includes the importance sampling ({sz['is_samples_per_pass']} samples "
             f"per pass of {sz['batch_size']} cells); training peak is the training stage's alone. "
             f"Target: {', '.join(TARGET_MODELS)} at most {TARGET_RATIO}x SCVI per epoch."),
            "",
            *_speed_markdown(table),
            "",
        ]
        verdict = []
        for name in TARGET_MODELS:
            row = table[table["model"] == name]
            if len(row):
                wall, cpu = float(row["ratio_to_scvi"].iloc[0]), float(row["cpu_ratio_to_scvi"].iloc[0])
                above = [kind for kind, r in (("wall", wall), ("CPU", cpu)) if not r <= TARGET_RATIO]
                verdict.append(f"{name} {_fmt(wall)}x wall, {_fmt(cpu)}x CPU ("
                               + (f"ABOVE target in {' and '.join(above)} time" if above else "within target") + ")")
        if verdict:
            lines += ["Per-epoch target: " + "; ".join(verdict) + ".", ""]
    imports = info["import_only"]["peak_rss_mb"]
    lines += [f"Imports alone (python, torch, scvi-tools, the models): peak RSS {_fmt(imports, 0)} MB.", ""]
    for key, w in info.get("writer", {}).items():
        lines += [(f"Synthetic writer ({key}): {w['n_cells']} cells x {w['n_genes']} genes, {w['nnz']} counts, "
                   f"{_fmt(w['seconds'], 2)} s = {_fmt(w['cells_per_second'], 0)} cells/s, chunks of "
                   f"{w['chunk_cells']} cells; peak RSS while writing {_fmt(w['write_peak_rss_mb'], 0)} MB "
                   f"(its imports {_fmt(w['import_peak_rss_mb'], 0)} MB; CSR {_fmt(w['csr_bytes'] / _MB, 1)} MB)."),
                  ""]
    if "sparse_check" in info:
        lines += ["## Sparse all the way", "", *_sparse_markdown(info["sparse_check"]), ""]
    if "backed_check" in info:
        lines += ["## Out of core", "", *_backed_markdown(info["backed_check"]), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
