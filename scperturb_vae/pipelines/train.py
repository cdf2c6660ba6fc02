"""A training run: open and validate the data, train a model, write the run folder.

This is what ``scvae train`` does, as a library function (:func:`train_run`) so notebooks
and other commands get the same outputs.  The run folder ``runs/NAME/`` holds:

``model/``
    The model: ``weights.pt`` (tensors only) and ``model.json`` (see :mod:`scperturb_vae.model.persist`),
    loadable with ``SVAEPlus.load("runs/NAME/model", adata=adata)`` or :func:`scperturb_vae.model.runs.load_run` (the
    class is named in ``run.json``; the AnnData is the input, set up again on load).
``latent.h5ad``
    ``X`` = posterior means (cells x latents), ``obs`` copied from the input, ``var_names``
    the latent names, ``uns["scvae"]`` the intervention graph and the run's settings.
``intervention_graph.csv``
    Perturbations (as labelled in the input) x latents, values in [0, 1].
``edge_evidence.csv``
    sVAE+ / sVAE (shared-mask estimator): the same table of log Bayes factors in nats, the
    evidence the perturbation's cells gave each edge (an edge is drawn above ``log K``).
``edges.csv``
    The signed graph in long form, one row per perturbation x latent: probability, the
    shift of the perturbation's cells in control sd (negative: the perturbation lowers the
    latent), the prior's shift, cells and evidence; strongest first.  ``run.json``'s
    ``graph.edges`` says the edges above 0.5 in words ("JAK2 lowers latent09 by 1.8 sd ...").
``history.csv`` and ``loss_curve.png``
    The training curves, one row per epoch (the end of the KL warm-up, the alignment and an
    early stop marked).
``report.md``
    One page: data, settings, training, the graph in words, warnings
    (:mod:`scperturb_vae.pipelines.report`).
``run.json``
    Every setting, the versions, the seed, the input's path and SHA-256, the timings and
    the held-out validation likelihood.

The folder is built under a temporary name and renamed when complete.  The model is trained
by the package's one training path, :func:`scperturb_vae.tl.fit.train_model`; checkpoints for
``--resume`` are :mod:`scperturb_vae.train.checkpoint`'s.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scperturb_vae.data.validate import PerturbationData, open_perturbation_adata
from scperturb_vae.errors import InputError
from scperturb_vae.io import atomic_dir, check_output, package_versions, write_json
from scperturb_vae.model.registry import DEFAULT_N_LATENT
from scperturb_vae.pipelines.report import run_report
from scperturb_vae.pl.base import save
from scperturb_vae.pl.training import loss_curve
from scperturb_vae.tl.checks import check_settings
from scperturb_vae.tl.fit import final_metrics, history_frame, train_model
from scperturb_vae.tl.holdout import holdout_split
from scperturb_vae.tl.targets import describe_edge, signed_edges
from scperturb_vae.train.stopping import DEFAULT_PATIENCE

logger = logging.getLogger("scperturb_vae")

__all__ = ["TrainSettings", "TrainResult", "train_run", "checkpoint_dir", "distributed_worker"]

#: fewest cells a model can be trained on: scvi-tools keeps ceil(90%) of them for training
#: and fails without a validation cell, i.e. below 10 cells
MIN_TRAINING_CELLS = 10


@dataclass
class TrainSettings:
    """Everything ``scvae train`` needs; recorded in ``run.json``."""

    adata: str
    out: str
    model: str = "svae+"
    perturbation_key: str | None = None
    control: str | None = None
    layer: str | None = None
    batch_key: str | None = None
    n_latent: int = DEFAULT_N_LATENT
    max_epochs: int | None = None
    #: early stopping: epochs without a better validation loss (after the warm-up and the
    #: alignment) before training stops; 0 trains every epoch
    patience: int = DEFAULT_PATIENCE
    batch_size: int = 128
    lr: float = 1e-3
    likelihood: str = "nb"
    seed: int = 0
    min_cells: int = 20
    accelerator: str = "auto"
    devices: str = "auto"
    overwrite: bool = False
    #: validation cells (at most) for the importance-sampled likelihood in run.json; 0 skips it
    ll_cells: int = 1000
    ll_samples: int = 100
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    #: held-out perturbations (see :mod:`scperturb_vae.tl.holdout`): a cluster name ...
    holdout: str | None = None
    #: ... or a list of perturbations
    holdout_perturbations: list[str] | None = None
    #: a cluster table for ``holdout`` (default: clusters computed from the data)
    clusters: str | None = None
    n_clusters: int = 8
    #: fraction of each held-out perturbations' cells used for adaptation (the rest evaluate)
    adapt_fraction: float = 0.5
    #: continue an interrupted run of ``out`` from its last checkpoint
    resume: bool = False
    #: save a checkpoint (for ``resume``) every this many epochs
    checkpoint_every: int = 1
    #: Lightning strategy (e.g. ``ddp``); None lets Lightning choose
    strategy: str | None = None
    #: machines of a multi-node run (Lightning's ``num_nodes``; the processes are started by
    #: SLURM or torchrun)
    num_nodes: int = 1
    #: leave the counts on disk (backed, read-only) and train from minibatches read from the file
    backed: bool = False

    @property
    def has_holdout(self) -> bool:
        return self.holdout is not None or bool(self.holdout_perturbations)

    def validate(self) -> None:
        check_settings(
            flags=True, model=self.model, likelihood=self.likelihood, n_latent=self.n_latent,
            max_epochs=self.max_epochs, batch_size=self.batch_size, lr=self.lr, seed=self.seed,
            ll_cells=self.ll_cells, ll_samples=self.ll_samples, n_clusters=self.n_clusters,
            adapt_fraction=self.adapt_fraction, checkpoint_every=self.checkpoint_every, patience=self.patience,
            num_nodes=self.num_nodes,
        )


@dataclass
class TrainResult:
    out: Path
    model: Any
    data: PerturbationData
    summary: dict[str, Any]
    #: cell -> part (``train``, ``validation``, ``heldout_adapt``, ``heldout_eval``) with a held-out split
    split: pd.Series | None = None


def _devices(value: str) -> int | str:
    return int(value) if str(value).isdigit() else value


def _graph_summary(graph: pd.DataFrame) -> dict[str, Any]:
    v = graph.to_numpy()
    return {
        "n_perturbations": int(v.shape[0]),
        "n_latent": int(v.shape[1]),
        "edges_above_0.5": int((v > 0.5).sum()),
        "fraction_below_0.05": float((v < 0.05).mean()),
        "mean_probability": float(v.mean()),
    }


def _recovery(adata, latent: np.ndarray, graph: pd.DataFrame) -> dict[str, Any] | None:
    """Recovery of a simulation's truth (MCC, graph F1) when the input carries it."""
    if "simulation" not in adata.uns or "z_true" not in adata.obsm:
        return None
    from scperturb_vae.data.simulate import graph_from_adata
    from scperturb_vae.tl.metrics import recovery_summary

    return recovery_summary(np.asarray(adata.obsm["z_true"]), latent, graph_from_adata(adata), graph)


def _validation_likelihood(model, settings: TrainSettings) -> dict[str, Any] | None:
    """Importance-sampled NLL per cell on (a sample of) the cells held out from training."""
    if settings.ll_cells == 0:
        return None
    val_idx = getattr(model, "validation_indices", None)
    if val_idx is None or len(val_idx) == 0:
        val_idx = np.arange(model.adata.n_obs)
    rng = np.random.default_rng(settings.seed)
    idx = np.sort(rng.choice(val_idx, size=min(settings.ll_cells, len(val_idx)), replace=False))
    ll, se = model.get_marginal_ll(indices=idx, n_mc_samples=settings.ll_samples, return_stderr=True)
    return {
        "n_cells": int(len(idx)),
        "n_importance_samples": settings.ll_samples,
        "nll_mean": float(-ll.mean()),
        "nll_stderr_mc": float(np.sqrt(np.sum(se**2)) / len(se)),
    }


def _split_for(settings: TrainSettings, data: PerturbationData):
    """The held-out perturbations and the cell parts of ``settings``, or ``(None, None)`` without a holdout."""
    if not settings.has_holdout:
        return None, None
    return holdout_split(
        data, holdout=settings.holdout, holdout_perturbations=settings.holdout_perturbations,
        clusters=settings.clusters, n_clusters=settings.n_clusters, adapt_fraction=settings.adapt_fraction,
        seed=settings.seed,
    )


def distributed_worker() -> bool:
    """Whether this process is a non-zero rank of a multi-process (DDP) run.

    Lightning's DDP launcher starts the other ranks by running the same command again with
    ``LOCAL_RANK`` / ``NODE_RANK`` set (``torchrun`` sets ``RANK``); those processes train in
    lock-step with rank 0 and write nothing.
    """
    import os

    return any(int(os.environ.get(name, "0") or 0) > 0 for name in ("RANK", "LOCAL_RANK", "NODE_RANK"))


def _backed_subset(adata, mask: np.ndarray, directory: Path | None, reuse: bool = False):
    """The cells ``mask`` of a backed screen, written block by block to ``directory`` and opened backed.

    With ``reuse`` (the other ranks of a multi-process run) the file rank 0 wrote is opened.
    """
    import tempfile

    import anndata as ad

    from scperturb_vae.data.ondisk import write_rows

    if directory is None:
        directory = Path(tempfile.mkdtemp(prefix="scvae-train-cells-"))
    path = directory / "train_cells.h5ad"
    if reuse and path.exists():
        return ad.read_h5ad(path, backed="r")
    logger.info(f"writing the {int(mask.sum())} training cells to {path} (the counts stay on disk)")
    write_rows(adata, np.flatnonzero(mask), path)
    return ad.read_h5ad(path, backed="r")


def _training_cells(data: PerturbationData, parts: pd.Series | None, checkpoint_dir: Path | None, worker: bool):
    """The AnnData to train on: the whole input, or its ``train`` cells (copied, or streamed to a file when backed)."""
    if parts is None:
        return data.adata
    if data.adata.isbacked:
        return _backed_subset(data.adata, (parts == "train").to_numpy(), checkpoint_dir, reuse=worker)
    return data.adata[(parts == "train").to_numpy()].copy()


def _trainer_kwargs(settings: TrainSettings, checkpoint_dir: Path | None):
    """Lightning options of a run: checkpoints (and resuming), the strategy; ``(kwargs, saver, resumed_from)``."""
    from scperturb_vae.train.checkpoint import EpochCheckpoint, read_checkpoint_progress

    trainer_kwargs: dict[str, Any] = {"check_val_every_n_epoch": 1,  # validation curves in history.csv
                                      "stop_on_plateau": settings.patience or None}
    resumed_from = None
    saver = None
    if checkpoint_dir is not None:
        saver = EpochCheckpoint(checkpoint_dir, settings.checkpoint_every)
        trainer_kwargs["callbacks"] = [saver]
        if settings.resume:
            trainer_kwargs["ckpt_path"] = str(_safe_checkpoint(checkpoint_dir))
            resumed_from = (read_checkpoint_progress(checkpoint_dir) or {}).get("epoch")
            logger.info(f"resuming from the checkpoint of epoch {resumed_from} in {checkpoint_dir}")
    if settings.strategy is not None:
        # parameters a likelihood does not use (e.g. the zero-inflation head under nb) get
        # no gradient, which plain DDP refuses; scvi-tools recommends this variant
        trainer_kwargs["strategy"] = (
            "ddp_find_unused_parameters_true" if settings.strategy == "ddp" else settings.strategy
        )
        if checkpoint_dir is not None:
            # scvi-tools keeps a multi-process run's history in a file (default: ./lightning_logs)
            trainer_kwargs["log_save_dir"] = str(checkpoint_dir / "logs")
    if settings.num_nodes > 1:
        trainer_kwargs["num_nodes"] = int(settings.num_nodes)
    return trainer_kwargs, saver, resumed_from


def _train(settings: TrainSettings, data: PerturbationData, adata, progress_bar: bool, trainer_kwargs: dict, saver,
           allow_empty_genes: bool):
    """:func:`scperturb_vae.tl.fit.train_model` with Ctrl-C turned into KeyboardInterrupt; ``(model, seconds)``."""
    try:
        with _no_scvi_exception_print():
            return train_model(
                adata, model=settings.model, perturbation_key=data.perturbation_key,
                control_label=data.control_label, layer=settings.layer, batch_key=settings.batch_key,
                n_latent=settings.n_latent, likelihood=settings.likelihood, seed=settings.seed,
                min_cells=settings.min_cells, model_kwargs=settings.model_kwargs, allow_empty_genes=allow_empty_genes,
                max_epochs=settings.max_epochs, batch_size=settings.batch_size, lr=settings.lr,
                accelerator=settings.accelerator, devices=_devices(settings.devices), progress_bar=progress_bar,
                train_kwargs=trainer_kwargs,
            )
    except SystemExit:
        # Lightning answers Ctrl-C with a graceful shutdown, SIGINT ignored, and sys.exit(1)
        if saver is not None and saver.interrupted:
            import signal

            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt from None
        raise


def _fit(
    settings: TrainSettings,
    data: PerturbationData,
    progress_bar: bool,
    parts: pd.Series | None = None,
    checkpoint_dir: Path | None = None,
):
    """Set up, train and summarise one model (no files written).

    With ``parts`` (a held-out split), only the ``train`` cells are set up and trained on;
    the cells scvi-tools keeps for validation are marked ``validation`` in the returned parts.
    """
    worker = distributed_worker()
    adata = _training_cells(data, parts, checkpoint_dir, worker)
    trainer_kwargs, saver, resumed_from = _trainer_kwargs(settings, checkpoint_dir)
    model, seconds = _train(settings, data, adata, progress_bar, trainer_kwargs, saver, parts is not None)
    if worker:  # another process of a multi-process run: rank 0 summarises and writes
        return None
    if parts is not None:
        parts = parts.copy()
        val_idx = getattr(model, "validation_indices", None)
        if val_idx is not None and len(val_idx):
            parts.loc[adata.obs_names[np.asarray(val_idx)]] = "validation"

    latent = model.get_latent_representation()
    graph = model.get_intervention_graph(latent=latent)
    hist = history_frame(model.history)
    signed = model.get_signed_graph(latent=latent)
    summary = _run_summary(settings, data, adata, model, latent, graph, hist, seconds, resumed_from)
    summary["graph"]["edges"] = [describe_edge(row) for _, row in signed_edges(signed).head(20).iterrows()]
    summary["training_marks"] = dict(getattr(model, "training_marks", {}) or {})
    latent_adata = _latent_adata(settings, data, adata, model, latent, graph, signed, summary)
    return model, summary, latent_adata, hist, graph, signed, parts


def _run_summary(settings: TrainSettings, data: PerturbationData, adata, model, latent, graph, hist,
                 seconds: float, resumed_from) -> dict[str, Any]:
    """``run.json``: settings, resolved input, versions, timings, likelihood, diagnostics, recovery."""
    import torch

    from scperturb_vae.tl.metrics import posterior_collapse

    epochs = int(model.history["elbo_train"].shape[0]) if "elbo_train" in model.history else 0
    validation_ll = _validation_likelihood(model, settings)
    diagnostics = posterior_collapse(model, seed=settings.seed)
    return {
        "settings": asdict(settings),
        "model_class": type(model).__name__,
        "model_init_params": {**model.init_params_["non_kwargs"], **model.init_params_["kwargs"].get("module_kwargs", {})},
        "resolved": {
            "perturbation_key": data.perturbation_key,
            "control_label": data.control_label,
            "n_cells": int(adata.n_obs),
            "n_genes": int(adata.n_vars),
            "n_perturbations": len(model.perturbations),
            "n_combination_cells": int(data.n_combination_cells),
            "small_perturbations": list(data.small_perturbations),
            "max_epochs": epochs,
        },
        "input": {"path": str(Path(settings.adata).resolve()), "sha256": data.sha256},
        "versions": package_versions(),
        "command": sys.argv,
        "timing": {
            "train_seconds": round(seconds, 3),
            "seconds_per_epoch": round(seconds / max(epochs - (resumed_from or 0), 1), 4),
            "torch_threads": torch.get_num_threads(),
            "resumed_from_epoch": resumed_from,
            "stopped_early_after_epoch": getattr(model, "stopped_epoch", None),
            "early_stopping_patience": settings.patience or None,
        },
        "validation_likelihood": validation_ll,
        "final_metrics": final_metrics(hist),
        "graph": _graph_summary(graph),
        "diagnostics": diagnostics,
        "recovery": _recovery(adata, latent, graph),
    }


def _latent_adata(settings: TrainSettings, data: PerturbationData, adata, model, latent, graph, signed, summary):
    """``latent.h5ad``: the posterior means with the input's obs and the run's record in ``uns["scvae"]``.

    The latents are also where scanpy and the notebook API (``sv.tl.embed``) keep them:
    ``obsm["X_" + key]`` and ``uns[key]`` under the model's default key (``X_svae`` for
    sVAE+), so ``sc.pp.neighbors(latent, use_rep="X_svae")`` works on the file as it is.
    """
    import anndata as ad

    from scperturb_vae.tl.store import default_key, shift_table, store

    obs = adata.obs[[c for c in adata.obs.columns if not c.startswith("_scvi")]].copy()
    latent_adata = ad.AnnData(
        X=latent.astype(np.float32),
        obs=obs,
        var=pd.DataFrame(index=pd.Index(model.latent_names, name="latent")),
    )
    latent_adata.uns["scvae"] = {
        "model": settings.model,
        "perturbation_key": data.perturbation_key,
        "control_label": data.control_label,
        "intervention_graph": graph.astype(np.float64),
        "run_json": json.dumps(summary, default=str),
    }
    run_settings = {k: v for k, v in summary.get("settings", {}).items() if k not in ("out", "overwrite")}
    shifts = shift_table(signed, graph)
    store(latent_adata, default_key(model), model, latent, graph, {"run_settings": run_settings},
          {"source": "scvae train"}, shifts)
    return latent_adata


class _DropScviExceptionPrint:
    """stdout minus the line scvi-tools prints when training raises (Ctrl-C included)."""

    PREFIX = "Exception raised during training."

    def __init__(self, stream):
        self._stream = stream
        self._dropped = False

    def write(self, text: str) -> int:
        if text.startswith(self.PREFIX):
            self._dropped = True
            return len(text)
        if self._dropped and text == "\n":
            self._dropped = False
            return len(text)
        self._dropped = False
        return self._stream.write(text)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _no_scvi_exception_print():
    import contextlib

    return contextlib.redirect_stdout(_DropScviExceptionPrint(sys.stdout))


# --------------------------------------------------------------------------- checkpoints (--resume)
#: settings that may differ between an interrupted run and its resumption
_RESUME_FREE = ("overwrite", "resume", "accelerator", "devices", "strategy", "num_nodes", "backed")


def checkpoint_dir(out: str | Path) -> Path:
    """Where the checkpoints of the run ``out`` live while it trains: ``.NAME.checkpoint`` beside it.

    The folder survives an interruption (so ``--resume`` can continue) and is removed when
    the run completes.
    """
    out = Path(out)
    return out.parent / f".{out.name}.checkpoint"


def _settings_record(settings: TrainSettings) -> dict[str, Any]:
    record = asdict(settings)
    for key in _RESUME_FREE:
        record.pop(key, None)
    return json.loads(json.dumps(record, default=str))


def _safe_checkpoint(directory: Path) -> Path:
    """The checkpoint file, after checking it holds nothing but plain data (no pickled objects)."""
    import torch

    from scperturb_vae.train.checkpoint import EpochCheckpoint

    path = directory / EpochCheckpoint.FILE
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - whatever torch raises for a damaged or unsafe file
        raise InputError(
            f"the checkpoint {path} cannot be loaded safely ({type(err).__name__}); "
            "start again with --overwrite instead of --resume"
        ) from None
    return path


def _prepare_checkpoints(settings: TrainSettings, out: Path, sha256: str) -> Path:
    """Create (or, with ``resume``, check) the checkpoint folder of ``out``."""
    from scperturb_vae.errors import OutputError
    from scperturb_vae.train.checkpoint import read_checkpoint_progress

    directory = checkpoint_dir(out)
    progress = read_checkpoint_progress(directory)
    record = {"settings": _settings_record(settings), "input_sha256": sha256}
    if settings.resume:
        if progress is None:
            raise InputError(f"there is no interrupted run of {out} to resume (no checkpoint in {directory})")
        try:
            saved = json.loads((directory / "run_settings.json").read_text())
        except (OSError, ValueError):
            raise InputError(f"the checkpoint folder {directory} is damaged (run_settings.json); start again with --overwrite") from None
        if saved.get("input_sha256") != sha256:
            raise InputError(f"{settings.adata} is not the file the interrupted run of {out} was training on (SHA-256 differs)")
        old, new = saved.get("settings", {}), record["settings"]
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if changed:
            shown = ", ".join(f"{k} ({old.get(k)!r} then, {new.get(k)!r} now)" for k in changed[:4])
            raise InputError(f"--resume needs the interrupted run's settings; these differ: {shown}")
        return directory
    if progress is not None:
        if not settings.overwrite:
            at = f" (epoch {progress.get('epoch')} of {progress.get('max_epochs')})" if progress.get("epoch") else ""
            raise OutputError(
                f"an interrupted run of {out} left a checkpoint{at}: pass --resume to continue it, "
                "or --overwrite to start again"
            )
    if directory.exists():
        shutil.rmtree(directory)
    try:
        directory.mkdir(parents=True)
        write_json(record, directory / "run_settings.json")
    except OSError as err:
        raise OutputError(f"cannot create the checkpoint folder {directory}: {err.strerror or err}") from None
    return directory


def train_run(
    settings: TrainSettings,
    *,
    progress_bar: bool = True,
    data: PerturbationData | None = None,
    holdout: tuple | None = None,
) -> TrainResult:
    """Train one model on one file and write its run folder (see the module docstring).

    ``data`` is the already opened ``settings.adata`` (commands that train several models
    read the file once).  With a holdout (``settings.holdout`` or
    ``settings.holdout_perturbations``) the held-out cells are left out of training and the
    split is written to ``split.csv`` (see :mod:`scperturb_vae.tl.holdout`); ``holdout`` is an
    already computed ``(HoldoutSpec, parts)`` pair of that split.
    """
    settings.validate()
    if distributed_worker():
        return _train_worker(settings, data, holdout)
    out = check_output(settings.out, settings.overwrite)
    if data is None:
        data = open_perturbation_adata(
            settings.adata,
            perturbation_key=settings.perturbation_key,
            control_label=settings.control,
            layer=settings.layer,
            min_cells=settings.min_cells,
            backed=settings.backed,
        )
        logger.info(data.summary())
    if settings.batch_key is not None and settings.batch_key not in data.adata.obs:
        raise InputError(f"batch column {settings.batch_key!r} is not in the obs of {settings.adata}")
    spec, parts = holdout if holdout is not None else _split_for(settings, data)
    n_train = data.adata.n_obs if parts is None else int((parts == "train").sum())
    if n_train < MIN_TRAINING_CELLS:
        raise InputError(
            f"only {n_train} cells to train on; at least {MIN_TRAINING_CELLS} are needed "
            "(scvi-tools keeps 10% of them for validation)"
        )

    # the temporary run folder exists before training: an unwritable output fails now, and
    # an interrupted or failed run leaves nothing under the final name (only its checkpoint,
    # for --resume)
    with atomic_dir(out, overwrite=settings.overwrite) as tmp:
        ckpt = _prepare_checkpoints(settings, out, data.sha256)
        model, summary, latent_adata, hist, graph, signed, parts = _fit(settings, data, progress_bar, parts, ckpt)
        if spec is not None:
            summary["holdout"] = {
                **spec.to_json(),
                "adapt_fraction": settings.adapt_fraction,
                "n_cells": {part: int((parts == part).sum()) for part in ("train", "validation", "heldout_adapt", "heldout_eval")},
            }
            parts.rename_axis("cell").to_frame("part").to_csv(tmp / "split.csv")
        model.save(str(tmp / "model"), save_anndata=False)
        latent_adata.write_h5ad(tmp / "latent.h5ad")
        graph.to_csv(tmp / "intervention_graph.csv")
        evidence = model.get_edge_evidence()
        if evidence is not None:
            evidence.to_csv(tmp / "edge_evidence.csv")
        signed.to_csv(tmp / "edges.csv", index=False)
        hist.to_csv(tmp / "history.csv")
        save(loss_curve(hist, f"{type(model).__name__} on {Path(settings.adata).name}", summary["training_marks"]),
             tmp / "loss_curve.png")
        write_json(summary, tmp / "run.json")
        (tmp / "report.md").write_text(run_report(summary, signed, out.name))
    shutil.rmtree(ckpt, ignore_errors=True)
    return TrainResult(out=out, model=model, data=data, summary=summary, split=parts)


def _train_worker(settings: TrainSettings, data: PerturbationData | None, holdout: tuple | None) -> None:
    """A non-zero rank of a multi-process run: the same data, split and model, trained in step.

    Rank 0 created the checkpoint folder (and, for a backed held-out split, the training
    cells' file) before Lightning started this process; nothing is written here.
    """
    logging.getLogger("scperturb_vae").setLevel(logging.WARNING)
    if data is None:
        data = open_perturbation_adata(
            settings.adata, perturbation_key=settings.perturbation_key, control_label=settings.control,
            layer=settings.layer, min_cells=settings.min_cells, backed=settings.backed,
        )
    _, parts = holdout if holdout is not None else _split_for(settings, data)
    _fit(settings, data, progress_bar=False, parts=parts, checkpoint_dir=checkpoint_dir(Path(settings.out)))
    return None


# --------------------------------------------------------------------------- loading a run folder


