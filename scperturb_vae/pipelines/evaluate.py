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
``split.csv``, ``evaluate.json`` and, when the models were trained here, ``runs/MODEL/``
(ordinary run folders, reusable with ``--model``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scperturb_vae.errors import InputError
from scperturb_vae.io import atomic_dir, check_output, package_versions, write_json

logger = logging.getLogger("scperturb_vae")

__all__ = ["EvaluateSettings", "evaluate", "parse_fewshot", "SETTINGS_ORDER"]

SETTINGS_ORDER = ("heldout_adapted", "heldout_zeroshot", "heldin")


def parse_fewshot(value) -> list[int | str]:
    """``"0,10,50,all"`` -> ``[0, 10, 50, "all"]`` (sorted, unique)."""
    items = value.split(",") if isinstance(value, str) else list(value)
    out: list[int | str] = []
    for item in items:
        item = str(item).strip().lower()
        if not item:
            continue
        if item == "all":
            out.append("all")
            continue
        try:
            n = int(item)
        except ValueError:
            raise InputError(f"--fewshot takes cell numbers and 'all' (e.g. 0,10,50,all), not {item!r}") from None
        if n < 0:
            raise InputError(f"--fewshot cell numbers must be >= 0, not {n}")
        out.append(n)
    numbers = sorted({x for x in out if x != "all"})
    return numbers + (["all"] if "all" in out else [])


@dataclass
class EvaluateSettings:
    """Everything ``scvae evaluate`` needs; recorded in ``evaluate.json``."""

    out: str
    adata: str | None = None
    models: list[str] = field(default_factory=lambda: ["svae+", "ivae", "vae"])
    #: run folders to reuse (``--model runs/NAME``) instead of training
    runs: list[str] = field(default_factory=list)
    holdout: str | None = None
    holdout_perturbations: list[str] | None = None
    clusters: str | None = None
    n_clusters: int = 8
    perturbation_key: str | None = None
    control: str | None = None
    layer: str | None = None
    n_latent: int = 10
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
    overwrite: bool = False
    model_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: leave the counts on disk (backed): train from minibatches read from the file
    backed: bool = False

    def validate(self) -> None:
        from scperturb_vae.model.registry import MODEL_NAMES

        if not self.runs:
            if self.adata is None:
                raise InputError("give --adata (to train the models) or --model RUN folders trained with --holdout")
            if not self.models:
                raise InputError("no model to evaluate: give --models (e.g. svae+,ivae,vae)")
            unknown = [m for m in self.models if m not in MODEL_NAMES]
            if unknown:
                raise InputError(f"unknown model(s) {', '.join(unknown)}; choose among {', '.join(MODEL_NAMES)}")
            if len(set(self.models)) != len(self.models):
                raise InputError("a model is listed twice in --models")
            if self.holdout is None and not self.holdout_perturbations:
                raise InputError("nothing to hold out: give --holdout CLUSTER or --holdout-perturbations A,B,...")
        if self.n_importance < 1:
            raise InputError(f"--n-importance must be at least 1, not {self.n_importance}")
        if self.adapt_steps < 1:
            raise InputError(f"--adapt-steps must be at least 1, not {self.adapt_steps}")
        if self.heldin_cells < 0:
            raise InputError(f"--heldin-cells must be >= 0, not {self.heldin_cells}")
        if not 0.0 < self.adapt_fraction < 1.0:
            raise InputError(f"--adapt-fraction must be between 0 and 1, not {self.adapt_fraction}")
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
        holdout=settings.holdout, holdout_perturbations=settings.holdout_perturbations,
        clusters=settings.clusters, n_clusters=settings.n_clusters, adapt_fraction=settings.adapt_fraction,
        ll_cells=0, backed=settings.backed,
    )


def _open_and_split(settings: EvaluateSettings, out: Path):
    """Open and validate the data and split it once (before any output is created)."""
    from scperturb_vae.data.validate import open_perturbation_adata
    from scperturb_vae.pipelines.train import MIN_TRAINING_CELLS, TrainSettings, _holdout_split

    data = open_perturbation_adata(
        settings.adata, perturbation_key=settings.perturbation_key, control_label=settings.control,
        layer=settings.layer, min_cells=settings.min_cells, backed=settings.backed,
    )
    logger.info(data.summary())
    spec, parts = _holdout_split(TrainSettings(out=str(out / "runs" / "x"), **_train_base(settings, data)), data)
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


def _run_name(model: str) -> str:
    return model.replace("+", "_plus")


def _load_models(settings: EvaluateSettings):
    """Read ``--model`` run folders; they must share one held-out split."""
    from scperturb_vae.tl.heldout import HoldoutSpec
    from scperturb_vae.model.runs import load_run

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


def _fewshot_rows(adapt_rows: np.ndarray, labels: np.ndarray, n: int | str) -> np.ndarray:
    """The first ``n`` adaptation cells of each held-out label (the split's random order)."""
    if n == "all":
        return adapt_rows
    keep, seen = [], {}
    for row in adapt_rows:
        lab = labels[row]
        if seen.get(lab, 0) < n:
            keep.append(row)
            seen[lab] = seen.get(lab, 0) + 1
    return np.asarray(keep, dtype=np.int64)


def _evaluate_model(ev: _Evaluated, data, spec, split: pd.Series, settings: EvaluateSettings):
    from scperturb_vae.tl.heldout import adapt_prior, extended_module, heldout_cells, heldout_log_likelihood, mean_and_stderr

    model = ev.model
    labels = data.adata.obs[data.perturbation_key].astype(str).to_numpy()
    parts = split.reindex(data.adata.obs_names).to_numpy()
    eval_rows = np.flatnonzero(parts == "heldout_eval")
    # few-shot subsets take the first n cells of each label in a seeded random order
    adapt_rows = np.flatnonzero(parts == "heldout_adapt")
    adapt_rows = adapt_rows[np.random.default_rng(settings.seed).permutation(len(adapt_rows))]
    new = sorted(p for p in spec.perturbations if p not in set(model.perturbations))
    eval_cells = heldout_cells(model, data.adata, eval_rows, new_perturbations=new)
    adapt_all = heldout_cells(model, data.adata, adapt_rows, new_perturbations=new)
    order = {row: i for i, row in enumerate(adapt_rows)}
    n_s = settings.n_importance

    def score(module):
        ll, se = heldout_log_likelihood(module, eval_cells, n_samples=n_s, seed=settings.seed)
        return ll, se

    records, per_pert, fewshot, adapt_info = [], [], [], {}
    t0 = time.perf_counter()
    zero_module = extended_module(model, len(new))
    ll0, se0 = score(zero_module)
    seconds_zero = time.perf_counter() - t0
    results = {}
    # "all" adaptation cells is the heldout_adapted setting: computed even when not on the curve
    shots = list(settings.fewshot) + ([] if "all" in settings.fewshot else ["all"])
    for n in shots:
        if n == 0:
            results[0] = (ll0, se0, {"adapted": False, "n_cells": 0})
            continue
        rows = _fewshot_rows(adapt_rows, labels, n)
        module = extended_module(model, len(new))
        info = adapt_prior(module, adapt_all.subset(np.array([order[r] for r in rows], dtype=np.int64)),
                           n_steps=settings.adapt_steps, seed=settings.seed)
        if not info["adapted"]:  # nothing to adapt (the VAE): the zero-shot numbers
            results[n] = (ll0, se0, info)
        else:
            ll, se = score(module)
            results[n] = (ll, se, info)
        if n == "all":
            adapt_info = info
            adapted_module = module
    ll1, se1, _ = results["all"]

    # held-in: validation cells of the training perturbations (never trained on)
    val = getattr(model, "validation_indices", None)
    val = np.asarray([] if val is None else val, dtype=np.int64)
    if len(val) and settings.heldin_cells:
        val = np.sort(np.random.default_rng(settings.seed).choice(val, min(settings.heldin_cells, len(val)), replace=False))
        llh, seh = model.get_marginal_ll(indices=val, n_mc_samples=n_s, return_stderr=True)
    else:
        llh, seh = np.zeros(0), np.zeros(0)

    for setting, (ll, se) in (("heldout_adapted", (ll1, se1)), ("heldout_zeroshot", (ll0, se0)), ("heldin", (llh, seh))):
        nll, err = mean_and_stderr(ll, se)
        records.append({"model": ev.name, "setting": setting, "nll": nll, "stderr": err, "n_cells": int(len(ll))})
        if setting == "heldin":
            continue
        frame = pd.DataFrame({"perturbation": eval_cells.labels, "ll": ll, "se": se})
        for pert, g in frame.groupby("perturbation", sort=True):
            nll, err = mean_and_stderr(g["ll"].to_numpy(), g["se"].to_numpy())
            per_pert.append({"model": ev.name, "setting": setting, "perturbation": pert, "nll": nll,
                             "stderr": err, "n_cells": int(len(g))})
    for n in settings.fewshot:
        ll, se, info = results[n]
        nll, err = mean_and_stderr(ll, se)
        n_cells = int(info.get("n_cells", 0))
        fewshot.append({"model": ev.name, "adaptation_cells_per_perturbation": n, "n_adaptation_cells": n_cells,
                        "nll": nll, "stderr": err, "n_cells": int(len(ll))})
    graph = adapted_module.prior.intervention_graph()
    adapted_graph = None
    if graph is not None and new:
        names = list(model.perturbations) + new
        values = graph.detach().cpu().numpy()
        adapted_graph = pd.DataFrame(values[len(model.perturbations):], index=pd.Index(names[len(model.perturbations):], name="perturbation"),
                                     columns=model.latent_names)
        adapted_graph.insert(0, "model", ev.name)
    info = {"adaptation": adapt_info, "new_perturbations": new, "zeroshot_seconds": round(seconds_zero, 2)}
    return records, per_pert, fewshot, adapted_graph, info


def _json_safe(obj):
    """JSON has no NaN / inf: they become ``null``; numpy scalars become Python numbers."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


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


def _plots(table: pd.DataFrame, fewshot: pd.DataFrame, out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(table["model"].drop_duplicates())
    settings = [s for s in SETTINGS_ORDER if s in set(table["setting"])]
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(models), 3.8))
    width = 0.8 / max(len(settings), 1)
    for j, s in enumerate(settings):
        sub = table[table["setting"] == s].set_index("model").reindex(models)
        x = np.arange(len(models)) + (j - (len(settings) - 1) / 2) * width
        ax.bar(x, sub["nll"], width, yerr=sub["stderr"], label=s.replace("_", " "), capsize=3)
    ax.set_xticks(np.arange(len(models)), models)
    finite = table["nll"][np.isfinite(table["nll"])]
    if len(finite):
        span = float(finite.max() - finite.min()) or 1.0
        ax.set_ylim(float(finite.min()) - 0.5 * span, float(finite.max()) + 0.3 * span)
    ax.set_ylabel("NLL per cell (nats, lower is better)")
    ax.set_title(title)
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "nll.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    for m, g in fewshot.groupby("model", sort=False):
        ax.errorbar(g["n_adaptation_cells"], g["nll"], yerr=g["stderr"], marker="o", label=m, capsize=3)
    ax.set_xlabel("adaptation cells (all held-out perturbations)")
    ax.set_ylabel("held-out NLL per cell (nats)")
    ax.set_title("few-shot adaptation")
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "fewshot.png", dpi=110)
    plt.close(fig)


def evaluate(settings: EvaluateSettings, *, progress_bar: bool = True) -> dict[str, Any]:
    """Run the held-out evaluation and write its folder; returns the tables."""

    settings.validate()
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
        records, per_pert, fewshot, graphs, infos = [], [], [], [], {}
        for i, ev in enumerate(evaluated):
            logger.info(f"[evaluate {i + 1}/{len(evaluated)}] {ev.name}: zero-shot, adaptation "
                        f"({', '.join(str(n) for n in settings.fewshot)} cells per perturbation), held-in")
            t0 = time.perf_counter()
            r, p, f, g, info = _evaluate_model(ev, data, spec, split, settings)
            info["seconds"] = round(time.perf_counter() - t0, 2)
            infos[ev.name] = {**info, "run": ev.run_dir}
            records += r
            per_pert += p
            fewshot += f
            if g is not None:
                graphs.append(g)
        table = pd.DataFrame(records, columns=["model", "setting", "nll", "stderr", "n_cells"])
        per_pert = pd.DataFrame(per_pert, columns=["model", "setting", "perturbation", "nll", "stderr", "n_cells"])
        fewshot = pd.DataFrame(fewshot)
        table.to_csv(tmp / "nll.csv", index=False)
        per_pert.to_csv(tmp / "nll_per_perturbation.csv", index=False)
        fewshot.to_csv(tmp / "fewshot.csv", index=False)
        if graphs:
            pd.concat(graphs).to_csv(tmp / "adapted_graph.csv")
        split.rename_axis("cell").to_frame("part").to_csv(tmp / "split.csv")
        (tmp / "nll.md").write_text(
            f"# Held-out NLL: {spec.name} ({len(spec.perturbations)} perturbations)\n\n" + _markdown(table)
        )
        _plots(table, fewshot, tmp, f"held out: {spec.name}")
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
        write_json(_json_safe(summary), tmp / "evaluate.json")
    return {"out": out, "table": table, "per_perturbation": per_pert, "fewshot": fewshot, "summary": summary}
