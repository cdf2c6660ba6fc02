"""The child processes of the bench: how one is started, and what each kind runs.

:func:`run_child` runs one measurement in a fresh interpreter
(``python -m scperturb_vae.bench.workers --worker SPEC``) so that its peak memory is its
own; the child reads its JSON spec, runs the worker of its ``kind`` (``import``, ``write``,
``train``, ``sparse``) and writes its result as JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from scperturb_vae.bench.constants import MB, SCVI_NAME
from scperturb_vae.bench.measure import Stages, thread_env
from scperturb_vae.bench.synthetic import write_synthetic_screen
from scperturb_vae.io import write_json

__all__ = ["run_child", "worker_main"]


def run_child(spec: dict[str, Any], work: Path, threads: int | None) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter; its result, with the kernel's peak RSS.

    ``threads``: the torch / BLAS threads of the child; ``None``: the environment as it is and
    the commands' own setting (:func:`scperturb_vae.threads.set_torch_threads`), as a user gets.
    A spec's own ``threads`` takes precedence.
    """
    name = spec["name"]
    threads = spec.get("threads", threads)
    spec = {**spec, "result": str(work / f"{name}.result.json"), "threads": threads}
    spec_path = work / f"{name}.spec.json"
    spec_path.write_text(json.dumps(spec))
    log_path = work / f"{name}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "scperturb_vae.bench.workers", "--worker", str(spec_path)],
                                stdout=log, stderr=subprocess.STDOUT, env=thread_env(threads))
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


def _set_threads(spec: dict[str, Any]) -> int:
    """The spec's torch threads, or the commands' own setting when it gives none; the count set."""
    import torch

    from scperturb_vae.threads import set_torch_threads

    if spec.get("threads") is None:
        set_torch_threads(None)
    else:
        torch.set_num_threads(int(spec["threads"]))
    return torch.get_num_threads()


def _work_import(spec: dict[str, Any]) -> dict[str, Any]:
    """Only import what a training child imports."""
    stages = Stages()
    import anndata  # noqa: F401
    import lightning  # noqa: F401
    import scvi  # noqa: F401
    import torch  # noqa: F401

    from scperturb_vae.model import models  # noqa: F401

    _set_threads(spec)
    stages.done("import")
    return {"stages": stages.stages, "peak_rss_mb": stages.peak_mb}


def _work_write(spec: dict[str, Any]) -> dict[str, Any]:
    stages = Stages()
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
    if spec.get("decoder", "standard") != "standard":
        net["decoder"] = spec["decoder"]
    return cls(adata, n_latent=spec["n_latent"], likelihood="nb", **net)


def _work_train(spec: dict[str, Any]) -> dict[str, Any]:
    """Open, set up, train (timed per epoch) and time the importance-sampled likelihood."""
    stages = Stages()
    import scvi
    import torch

    from scperturb_vae.data.validate import open_perturbation_adata
    from scperturb_vae.logs import quiet_third_party

    quiet_third_party()
    _set_threads(spec)
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
        "decoder": spec.get("decoder", "standard"),
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
    stages = Stages()
    import scvi

    from scperturb_vae.data.reading import file_sha256, read_h5ad_checked
    from scperturb_vae.data.validate import validate_perturbation_adata
    from scperturb_vae.logs import quiet_third_party
    from scperturb_vae.model.models import SVAEPlus

    quiet_third_party()
    threads = _set_threads(spec)
    trace = bool(spec.get("trace_memory"))
    traced: dict[str, Any] = {}
    if trace:
        import tracemalloc

        tracemalloc.start()

    def done(name: str) -> None:
        if trace:
            current, peak = tracemalloc.get_traced_memory()
            top = tracemalloc.take_snapshot().statistics("lineno")[:5]
            traced[name] = {"traced_peak_mb": peak / MB, "traced_current_mb": current / MB,
                            "top_retained": [f"{s.traceback[0].filename}:{s.traceback[0].lineno} "
                                             f"{s.size / MB:.1f} MB" for s in top]}
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
    timer = _epoch_timer()
    model.train(max_epochs=1, batch_size=spec["batch_size"], check_val_every_n_epoch=1,
                enable_progress_bar=False, callbacks=[timer], **extra)
    returned = time.perf_counter()
    done("train")
    steps = int(model.trainer.fit_loop.epoch_loop.batch_progress.total.completed) if getattr(model, "trainer", None) else None
    start = time.perf_counter()
    latent = model.get_latent_representation(batch_size=spec["batch_size"])
    latent_seconds = time.perf_counter() - start
    done("latent")
    passes = {"train_steps": timer.epochs[0] - timer.validation[0], "validation": timer.validation[0],
              "batch_norm_recalibration": returned - timer.train_end, "latent": latent_seconds}
    cells = {"train_steps": (steps or 0) * spec["batch_size"], "validation": len(model.validation_indices),
             "batch_norm_recalibration": len(model.train_indices), "latent": int(adata.n_obs)}
    return {
        "n_cells": int(adata.n_obs), "n_genes": int(adata.n_vars), "nnz": nnz, "backed": backed,
        "csr_bytes": csr_bytes, "param_bytes": param_bytes, "latent_shape": list(latent.shape), "train_steps": steps,
        "torch_threads": threads, "epoch_seconds": timer.epochs[0],
        "passes": {name: {"seconds": sec, "cells": cells[name], "cells_per_second": cells[name] / max(sec, 1e-9)}
                   for name, sec in passes.items()},
        "stages": stages.stages, "peak_rss_mb": stages.peak_mb, "peak_resettable": stages.resettable,
        "tracemalloc": traced or None,
    }


_WORKERS = {"import": _work_import, "write": _work_write, "train": _work_train, "sparse": _work_sparse}


def worker_main(argv: list[str]) -> int:
    """The child's entry point: ``--worker SPEC.json`` -> run the spec's worker, write its result."""
    if len(argv) != 2 or argv[0] != "--worker":
        print("usage: python -m scperturb_vae.bench.workers --worker SPEC.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[1]).read_text())
    result = _WORKERS[spec["kind"]](spec)
    write_json(result, spec["result"])
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
