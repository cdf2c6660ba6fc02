"""``scvae evaluate``: held-out-perturbation likelihood, side by side across models.

For each model (trained here on the training part of a held-out split, or read from run
folders made by ``scvae train --holdout ...``):

- ``heldout_zeroshot``: the importance-sampled NLL of the held-out perturbations' evaluation
  cells, their perturbations unknown to the prior (``N(0, I)``, the control's);
- ``heldout_adapted``: the same cells after fitting only the new perturbations' prior
  parameters on the adaptation cells, the networks frozen (see :mod:`scperturb_vae.tl.heldout`);
- ``heldin``: the NLL of training-perturbation cells that were kept out of training (the
  validation cells).

``nll`` is the mean per-cell negative log-likelihood in nats; ``stderr`` the Monte Carlo
standard error of that mean (from the importance weights' variance).  A few-shot curve
repeats the adaptation with 0, 10, 50, ... adaptation cells per perturbation.

Outputs (``DIR``, written as a whole under a temporary name): ``nll.csv``,
``nll_per_perturbation.csv``, ``nll.md``, ``nll.png``, ``fewshot.csv``, ``fewshot.png``,
``adapted_graph.csv`` (the held-out perturbations' learned graph rows per model),
``split.csv``, ``evaluate.json``, with ``--predict`` the folder ``predict/``
(:mod:`scperturb_vae.pipelines.heldout_predict`) and, when the models were trained here, ``runs/MODEL/``
(ordinary run folders, reusable with ``--model``).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scperturb_vae.errors import InputError
from scperturb_vae.io import atomic_dir, check_output, package_versions, write_json
from scperturb_vae.model.registry import DEFAULT_N_LATENT, parse_models
from scperturb_vae.pipelines.train import distributed_worker
from scperturb_vae.pl.base import save
from scperturb_vae.pl.heldout import fewshot as fewshot_figure
from scperturb_vae.pl.heldout import heldout_nll
from scperturb_vae.tl.checks import check_settings, parse_fewshot
from scperturb_vae.tl.evaluate import SETTINGS_ORDER, Scoring, assemble_tables, evaluate_model
from scperturb_vae.tl.holdout import holdout_split

logger = logging.getLogger("scperturb_vae")

__all__ = ["EvaluateSettings", "evaluate", "format_table"]


@dataclass
class EvaluateSettings:
    """Everything ``scvae evaluate`` needs; recorded in ``evaluate.json``."""

    out: str
    adata: str | None = None
    models: list[str] = field(default_factory=lambda: ["svae+", "ivae", "vae"])
    #: run folders to reuse (``--run runs/NAME``) instead of training
    runs: list[str] = field(default_factory=list)
    holdout: str | None = None
    holdout_perturbations: list[str] | None = None
    clusters: str | None = None
    n_clusters: int = 8
    perturbation_key: str | None = None
    control: str | None = None
    layer: str | None = None
    n_latent: int = DEFAULT_N_LATENT
    max_epochs: int | None = None
    batch_size: int = 128
    lr: float = 1e-3
    likelihood: str = "nb"
    seed: int = 0
    min_cells: int = 20
    adapt_fraction: float = 0.5
    #: importance samples per cell
    n_importance: int = 1000
    #: adaptation cells per held-out perturbation for the few-shot curve
    fewshot: list = field(default_factory=lambda: [0, 10, 50, "all"])
    adapt_steps: int = 500
    #: held-in (validation) cells scored, at most
    heldin_cells: int = 1000
    accelerator: str = "auto"
    devices: str = "auto"
    #: Lightning strategy of the training (``ddp``: ``devices`` processes; rank 0 scores and writes)
    strategy: str | None = None
    #: machines of a multi-node run (Lightning's ``num_nodes``)
    num_nodes: int = 1
    overwrite: bool = False
    model_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: leave the counts on disk (backed): train from minibatches read from the file
    backed: bool = False
    #: also predict the held-out perturbations' expression and score it against baselines (DIR/predict/)
    predict: bool = False
    #: control cells transported per prediction (and kept in predict/real.h5ad)
    predict_cells: int = 500

    def validate(self) -> None:
        if not self.runs:
            if self.adata is None:
                raise InputError("give --adata (to train the models) or --run RUN folders trained with --holdout")
            if not self.models:
                raise InputError("no model to evaluate: give --models (e.g. svae+,ivae,vae)")
            self.models = parse_models(self.models)
            if self.holdout is None and not self.holdout_perturbations:
                raise InputError("nothing to hold out: give --holdout CLUSTER or --holdout-perturbations A,B,...")
        check_settings(flags=True, n_importance=self.n_importance, adapt_steps=self.adapt_steps,
                       heldin_cells=self.heldin_cells, adapt_fraction=self.adapt_fraction)
        self.fewshot = parse_fewshot(self.fewshot)


@dataclass
class _Evaluated:
    name: str
    model: Any
    run_dir: str | None


def _train_base(settings: EvaluateSettings, data) -> dict[str, Any]:
    """The :class:`~scperturb_vae.pipelines.train.TrainSettings` fields every trained model shares."""
    return dict(
        adata=str(settings.adata), perturbation_key=data.perturbation_key, control=data.control_label,
        layer=settings.layer, n_latent=settings.n_latent, max_epochs=settings.max_epochs,
        batch_size=settings.batch_size, lr=settings.lr, likelihood=settings.likelihood, seed=settings.seed,
        min_cells=settings.min_cells, accelerator=settings.accelerator, devices=settings.devices,
        strategy=settings.strategy, num_nodes=settings.num_nodes, holdout=settings.holdout, holdout_perturbations=settings.holdout_perturbations,
        clusters=settings.clusters, n_clusters=settings.n_clusters, adapt_fraction=settings.adapt_fraction,
        ll_cells=0, backed=settings.backed,
    )


def _open_and_split(settings: EvaluateSettings, out: Path):
    """Open and validate the data and split it once (before any output is created)."""
    from scperturb_vae.data.validate import open_perturbation_adata
    from scperturb_vae.pipelines.train import MIN_TRAINING_CELLS

    data = open_perturbation_adata(
        settings.adata, perturbation_key=settings.perturbation_key, control_label=settings.control,
        layer=settings.layer, min_cells=settings.min_cells, backed=settings.backed,
    )
    logger.info(data.summary())
    spec, parts = holdout_split(
        data, holdout=settings.holdout, holdout_perturbations=settings.holdout_perturbations,
        clusters=settings.clusters, n_clusters=settings.n_clusters, adapt_fraction=settings.adapt_fraction,
        seed=settings.seed,
    )
    n_train = int((parts == "train").sum())
    if n_train < MIN_TRAINING_CELLS:
        raise InputError(
            f"only {n_train} cells are left to train on after holding out {spec.name!r}; "
            f"at least {MIN_TRAINING_CELLS} are needed (scvi-tools keeps 10% of them for validation)"
        )
    return data, spec, parts


def _train_models(settings: EvaluateSettings, tmp: Path, progress_bar: bool, data, spec, parts):
    """Train every model on the training part of the split."""
    from scperturb_vae.pipelines.train import TrainSettings, train_run

    base = _train_base(settings, data)
    evaluated, split = [], None
    for i, name in enumerate(settings.models):
        logger.info(f"[train {i + 1}/{len(settings.models)}] {name} on {int((parts == 'train').sum())} cells")
        ts = TrainSettings(out=str(tmp / "runs" / _run_name(name)), model=name,
                           model_kwargs=dict(settings.model_kwargs.get(name, {})), **base)
        result = train_run(ts, progress_bar=progress_bar, data=data, holdout=(spec, parts))
        evaluated.append(_Evaluated(name, result.model, f"runs/{_run_name(name)}"))
        split = result.split if split is None else split
    return data, spec, split, evaluated


def _evaluate_worker(settings: EvaluateSettings) -> None:
    """A non-zero rank of a multi-process run (``--strategy ddp``): trains every model in step with rank 0.

    Lightning's DDP launcher starts this process by running the same command again; it
    reads and splits the data as rank 0 did (the split is seeded) and takes part in each
    model's training.  Rank 0 alone scores (the adaptation and the importance sampling run on
    one process) and writes the folder.
    """
    from scperturb_vae.pipelines.train import TrainSettings, train_run

    logging.getLogger("scperturb_vae").setLevel(logging.WARNING)
    if settings.runs:  # nothing is trained: rank 0 scores alone
        return None
    data, spec, parts = _open_and_split(settings, Path(settings.out))
    base = _train_base(settings, data)
    # Lightning may create folders on every rank (its logs): this process's go to a scratch folder
    scratch = Path(tempfile.mkdtemp(prefix="scvae-evaluate-rank-"))
    try:
        for name in settings.models:
            ts = TrainSettings(out=str(scratch / "runs" / _run_name(name)), model=name,
                               model_kwargs=dict(settings.model_kwargs.get(name, {})), **base)
            train_run(ts, progress_bar=False, data=data, holdout=(spec, parts))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return None


def _run_name(model: str) -> str:
    return model.replace("+", "_plus")


def _load_models(settings: EvaluateSettings):
    """Read ``--model`` run folders; they must share one held-out split."""
    from scperturb_vae.model.runs import load_run
    from scperturb_vae.tl.holdout import HoldoutSpec

    loaded = []
    for run in settings.runs:
        lr = load_run(run, adata=settings.adata)
        if lr.split is None or "holdout" not in lr.summary:
            raise InputError(f"run {run} was trained without a holdout; train it with scvae train --holdout ...")
        loaded.append(lr)
    first = loaded[0]
    held = first.split.isin(["heldout_adapt", "heldout_eval"])
    for lr in loaded[1:]:
        if not lr.split.index.equals(first.split.index) or not (
            lr.split.where(held, "train").replace("validation", "train")
            .equals(first.split.where(held, "train").replace("validation", "train"))
        ):
            raise InputError(f"runs {first.path} and {lr.path} were trained with different held-out splits")
    h = first.summary["holdout"]
    if settings.holdout is not None or settings.holdout_perturbations:
        asked = set(settings.holdout_perturbations or [])
        if (settings.holdout is not None and settings.holdout != h["name"]) or (asked and asked != set(h["perturbations"])):
            raise InputError(
                f"run {first.path} holds out {h['name']!r} ({', '.join(h['perturbations'][:5])}); "
                "leave out --holdout / --holdout-perturbations or train again"
            )
    spec = HoldoutSpec(list(h["perturbations"]), h["name"], h["source"])
    names = [lr.model_name for lr in loaded]
    if len(set(names)) != len(names):
        names = [f"{lr.model_name} ({lr.path.name})" for lr in loaded]
    evaluated = [_Evaluated(n, lr.model, str(lr.path)) for n, lr in zip(names, loaded)]
    return first.data, spec, first.split, evaluated


def _markdown(table: pd.DataFrame) -> str:
    lines = ["| model | setting | NLL (nats/cell) | MC stderr | cells |", "|---|---|---:|---:|---:|"]
    for r in table.itertuples():
        lines.append(f"| {r.model} | {r.setting} | {r.nll:.3f} | {r.stderr:.3f} | {r.n_cells} |")
    return "\n".join(lines) + "\n"


def format_table(table: pd.DataFrame) -> str:
    """The NLL table as aligned text (models as rows, settings as columns)."""
    wide = table.pivot(index="model", columns="setting", values="nll")
    err = table.pivot(index="model", columns="setting", values="stderr")
    cols = [c for c in SETTINGS_ORDER if c in wide.columns]
    width = max(len("model"), *(len(str(m)) for m in wide.index))
    head = f"{'model':<{width}}  " + "  ".join(f"{c:>22}" for c in cols)
    lines = [head]
    for m in table["model"].drop_duplicates():
        cells = []
        for c in cols:
            v, e = wide.loc[m, c], err.loc[m, c]
            cells.append(f"{v:>13.3f} +- {e:<5.3f}" if np.isfinite(v) else f"{'n/a':>22}")
        lines.append(f"{m:<{width}}  " + "  ".join(f"{c:>22}" for c in cells))
    return "\n".join(lines)


def _score(settings: EvaluateSettings, evaluated: list, data, spec, split: pd.Series):
    """Every model scored by :func:`scperturb_vae.tl.evaluate.evaluate_model`: the tables and per-model records."""
    scoring = Scoring(seed=settings.seed, n_importance=settings.n_importance, fewshot=settings.fewshot,
                      adapt_steps=settings.adapt_steps, heldin_cells=settings.heldin_cells,
                      predict=settings.predict, predict_cells=settings.predict_cells)
    scores, infos = [], {}
    for i, ev in enumerate(evaluated):
        logger.info(f"[evaluate {i + 1}/{len(evaluated)}] {ev.name}: zero-shot, adaptation "
                    f"({', '.join(str(n) for n in settings.fewshot)} cells per perturbation), held-in")
        t0 = time.perf_counter()
        result = evaluate_model(ev.name, ev.model, data, spec, split, scoring)
        infos[ev.name] = {**result.info, "seconds": round(time.perf_counter() - t0, 2), "run": ev.run_dir}
        scores.append(result)
    return assemble_tables(scores), infos, {ev.name: s.predictions for ev, s in zip(evaluated, scores)}


def evaluate(settings: EvaluateSettings, *, progress_bar: bool = True) -> dict[str, Any]:
    """Run the held-out evaluation and write its folder; returns the tables."""

    settings.validate()
    if distributed_worker():
        return _evaluate_worker(settings)
    out = check_output(settings.out, settings.overwrite)
    start = time.perf_counter()
    # the inputs are read and checked before the output folder (and its parents) exist
    if settings.runs:
        data, spec, split, evaluated = _load_models(settings)
    else:
        data, spec, parts = _open_and_split(settings, out)
    with atomic_dir(out, overwrite=settings.overwrite) as tmp:
        if not settings.runs:
            data, spec, split, evaluated = _train_models(settings, tmp, progress_bar, data, spec, parts)
        tables, infos, predictions = _score(settings, evaluated, data, spec, split)
        table, per_pert, fewshot = tables.table, tables.per_perturbation, tables.fewshot
        table.to_csv(tmp / "nll.csv", index=False)
        per_pert.to_csv(tmp / "nll_per_perturbation.csv", index=False)
        fewshot.to_csv(tmp / "fewshot.csv", index=False)
        if tables.adapted_graph is not None:
            tables.adapted_graph.to_csv(tmp / "adapted_graph.csv")
        split.rename_axis("cell").to_frame("part").to_csv(tmp / "split.csv")
        (tmp / "nll.md").write_text(
            f"# Held-out NLL: {spec.name} ({len(spec.perturbations)} perturbations)\n\n" + _markdown(table)
        )
        save(heldout_nll(table, title=f"held out: {spec.name}"), tmp / "nll.png")
        save(fewshot_figure(fewshot), tmp / "fewshot.png")
        summary = {
            "settings": asdict(settings),
            "holdout": {**spec.to_json(), "n_cells": {p: int((split == p).sum()) for p in
                                                      ("train", "validation", "heldout_adapt", "heldout_eval")}},
            "input": {"path": str(data.path) if data.path else None, "sha256": data.sha256},
            "models": infos,
            "nll": table.to_dict(orient="records"),
            "fewshot": fewshot.to_dict(orient="records"),
            "versions": package_versions(),
            "seconds": round(time.perf_counter() - start, 2),
        }
        if settings.predict:
            from scperturb_vae.pipelines.heldout_predict import write_predictions

            summary["predict"] = write_predictions(tmp / "predict", predictions, data, split, settings.fewshot,
                                                   n_cells=settings.predict_cells, seed=settings.seed)
        write_json(summary, tmp / "evaluate.json")
    return {"out": out, "table": table, "per_perturbation": per_pert, "fewshot": fewshot, "summary": summary}
