"""Score a run against a simulation's truth, and benchmark the models over seeds.

:func:`score_run` (``scvae score``) compares a run folder written by
:func:`scperturb_vae.pipelines.train.train_run` (``scvae train``) with the ground truth of the simulated
file it was trained on (:func:`scperturb_vae.data.simulate.simulate_screen`): MCC, linear R^2 and
MIG of the latents, precision / recall / F1 / AUROC / average precision of the graph (see
:mod:`scperturb_vae.tl.metrics`), and the active units of the posterior means.

:func:`run_benchmark` (``scvae benchmark``) simulates one screen per seed, trains every
model on it, scores each run and writes a folder::

    DIR/data/{preset}_seed{S}.h5ad     the simulated screens (with their truth)
    DIR/runs/{model}_seed{S}/          the run folders, each with its score.json
    DIR/results.csv                    one row per model x seed: every metric, seconds
    DIR/summary.csv, DIR/summary.md    mean and sd over seeds per model
    DIR/metrics.png                    one panel per main metric
    DIR/graph_seed{S}.png              the true and learned graphs of the first seed

The folder is built under a temporary name and renamed when complete.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scperturb_vae.errors import InputError
from scperturb_vae.io import atomic_dir, atomic_path, check_output
from scperturb_vae.model.registry import parse_models

logger = logging.getLogger("scperturb_vae")

__all__ = [
    "SUMMARY_METRICS",
    "QUICK_SIZES",
    "QUICK_EPOCHS",
    "score_run",
    "format_score",
    "write_score",
    "parse_models",
    "parse_seeds",
    "BenchmarkResult",
    "run_benchmark",
    "summarise_results",
    "markdown_summary",
]

#: the files of a run folder that scoring reads
#: what scoring reads from a run folder
SCORE_FILES = ("latent.h5ad", "intervention_graph.csv", "run.json")

#: metrics summarised per model (mean and sd over seeds), in table order
SUMMARY_METRICS: dict[str, str] = {
    "mcc_pearson": "MCC (Pearson)",
    "mcc_spearman": "MCC (Spearman)",
    "r2": "R^2",
    "mig": "MIG",
    "graph_f1": "graph F1",
    "graph_precision": "graph precision",
    "graph_recall": "graph recall",
    "graph_auroc": "graph AUROC",
    "active_units": "active units",
    "validation_nll": "validation NLL",
    "train_seconds": "train s",
}

#: panels of metrics.png
PLOT_METRICS = ("mcc_pearson", "mcc_spearman", "r2", "mig", "graph_f1", "graph_auroc", "active_units", "validation_nll")

#: ``--quick``: sizes of the simulated screens (both presets) ...
QUICK_SIZES: dict[str, int] = {
    "n_latent": 4,
    "n_perturbations": 12,
    "n_cells_per_perturbation": 60,
    "n_genes": 40,
    "n_heldout": 0,
    "max_targets": 2,
}
#: ... the "programs" preset's genes per program (4 x 5 of the 40 genes) ...
QUICK_GENES_PER_PROGRAM = 5
#: ... and the training epochs
QUICK_EPOCHS = 5


# --------------------------------------------------------------------------- score
@dataclass
class _Truth:
    path: Path
    cells: pd.Index
    z: np.ndarray
    graph: pd.DataFrame
    latent_names: list[str]


def _read_truth(path: str | Path) -> _Truth:
    """The ground truth of a simulated h5ad (the counts stay on disk)."""
    from scperturb_vae.data.validate import _check_file, _short_reason
    from scperturb_vae.data.simulate import graph_from_adata

    path = _check_file(path)
    import anndata

    try:
        adata = anndata.read_h5ad(path, backed="r")
    except MemoryError:
        raise
    except Exception as error:
        raise InputError(f"cannot read {path} as h5ad: {_short_reason(error)}") from error
    try:
        if "simulation" not in adata.uns or "z_true" not in adata.obsm:
            raise InputError(
                f"{path} has no simulation ground truth (obsm['z_true'] and uns['simulation']); "
                "score needs a file written by scvae simulate"
            )
        z = np.asarray(adata.obsm["z_true"], dtype=np.float64)
        graph = graph_from_adata(adata)
        cells = pd.Index(adata.obs_names.astype(str))
    finally:
        if adata.file is not None:
            adata.file.close()
    if not cells.is_unique:  # cells are matched by name
        duplicated = cells[cells.duplicated()]
        raise InputError(
            f"{path} has {len(duplicated)} duplicate cell names (e.g. {str(duplicated[0])!r}); "
            "score matches cells by name: make them unique first"
        )
    if z.ndim != 2 or z.shape[0] != len(cells):
        raise InputError(f"obsm['z_true'] of {path} has shape {z.shape}, expected ({len(cells)}, n_latent)")
    if z.shape[1] != graph.shape[1]:
        raise InputError(
            f"{path}: obsm['z_true'] has {z.shape[1]} latents but the true graph has {graph.shape[1]}"
        )
    return _Truth(path, cells, z, graph, [str(c) for c in graph.columns])


@dataclass
class _Run:
    path: Path
    cells: pd.Index
    latent: np.ndarray
    latent_names: list[str]
    graph: pd.DataFrame
    info: dict[str, Any]


def _read_run(run_dir: str | Path) -> _Run:
    """The posterior means, the graph and run.json of a run folder."""
    from scperturb_vae.data.validate import _short_reason
    from scperturb_vae.pipelines.train import read_run_summary

    run_dir = Path(run_dir)
    info = read_run_summary(run_dir, required=SCORE_FILES)
    import anndata

    try:
        latent = anndata.read_h5ad(run_dir / "latent.h5ad")
    except MemoryError:
        raise
    except Exception as error:
        raise InputError(f"cannot read {run_dir / 'latent.h5ad'}: {_short_reason(error)}") from error
    try:
        graph = pd.read_csv(run_dir / "intervention_graph.csv", index_col=0)
    except Exception as error:
        raise InputError(f"cannot read {run_dir / 'intervention_graph.csv'}: {_short_reason(error)}") from error
    graph.index = graph.index.astype(str)
    graph.columns = graph.columns.astype(str)
    names = [str(v) for v in latent.var_names]
    if sorted(graph.columns) != sorted(names):
        raise InputError(
            f"the columns of {run_dir / 'intervention_graph.csv'} are not the latents of latent.h5ad "
            f"({len(graph.columns)} vs {len(names)})"
        )
    values = graph[names].apply(pd.to_numeric, errors="coerce")
    if not np.isfinite(values.to_numpy()).all():
        raise InputError(f"{run_dir / 'intervention_graph.csv'} holds missing or non-numeric values")
    x = latent.X
    x = x.toarray() if hasattr(x, "toarray") else np.asarray(x)
    return _Run(run_dir, pd.Index(latent.obs_names.astype(str)), x.astype(np.float64), names, values, info)


def _get(mapping: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(mapping, dict) or key not in mapping:
            return None
        mapping = mapping[key]
    return mapping


def _json_ready(value: Any) -> Any:
    """NaN and infinities -> None, numpy scalars -> Python (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_json_ready(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def score_run(run_dir: str | Path, truth_path: str | Path) -> dict[str, Any]:
    """Score a run folder against the ground truth of a simulated h5ad.

    Cells are matched by ``obs_names`` (the run's cells that the truth has; the others are
    left out and counted), perturbations by name, and the learned latents to the true ones
    by the Pearson MCC matching (see :func:`scperturb_vae.tl.metrics.recovery_summary`).

    Parameters
    ----------
    run_dir
        A folder written by ``scvae train`` (needs ``latent.h5ad``,
        ``intervention_graph.csv`` and ``run.json``).
    truth_path
        The simulated ``.h5ad`` (``obsm["z_true"]`` and ``uns["simulation"]``).

    Returns
    -------
    dict
        JSON-ready: every :func:`~scperturb_vae.tl.metrics.recovery_summary` entry
        (``mcc_pearson``, ``mcc_spearman``, ``r2``, ``mig``, ``graph_*``, ``n_matched``),
        ``active_units`` / ``active_mask`` / ``latent_variance`` of the posterior means (all
        the run's cells), ``assignment`` (true latent -> matched learned latent or None),
        the run's ``model``, ``validation_nll`` and ``train_seconds`` from run.json,
        the cell and latent counts, the paths, and ``diagnostics`` (the run.json entry of
        the same name, the posterior-collapse diagnostics) when the run has them.

    Raises
    ------
    InputError
        A missing or incomplete run folder, a truth file without ground truth, no cell or
        no perturbation in common.
    """
    from scperturb_vae.tl.metrics import active_units, mean_correlation_coefficient, recovery_summary

    run = _read_run(run_dir)
    truth = _read_truth(truth_path)
    position = truth.cells.get_indexer(run.cells)
    keep = position >= 0
    if not keep.any():
        raise InputError(
            f"no cell of {run.path / 'latent.h5ad'} is in {truth.path} (cells are matched by obs_names)"
        )
    if keep.sum() < 3:
        raise InputError(f"only {int(keep.sum())} cells of {run.path} are in {truth.path}; scoring needs at least 3")
    common = [p for p in truth.graph.index if p in run.graph.index]
    if not common:
        raise InputError(
            f"no perturbation of {run.path / 'intervention_graph.csv'} is in the true graph of {truth.path}"
        )
    z_true = truth.z[position[keep]]
    learned = run.latent[keep]
    recovery = recovery_summary(z_true, learned, truth.graph, run.graph)
    assignment = mean_correlation_coefficient(z_true, learned, "pearson").assignment
    units = active_units(run.latent)
    score: dict[str, Any] = {
        "run": str(run.path),
        "truth": str(truth.path),
        "model": _get(run.info, "settings", "model"),
        "model_class": run.info.get("model_class"),
        "n_cells": int(keep.sum()),
        "n_cells_run": len(run.cells),
        "n_cells_truth": len(truth.cells),
        "n_latent": len(run.latent_names),
        "n_true_latent": len(truth.latent_names),
        **recovery,
        "active_units": units.count,
        "active_mask": [bool(v) for v in units.mask],
        "active_threshold": units.threshold,
        "latent_variance": [float(v) for v in units.variance],
        "assignment": {
            t: (run.latent_names[c] if c >= 0 else None) for t, c in zip(truth.latent_names, assignment.tolist())
        },
        "validation_nll": _get(run.info, "validation_likelihood", "nll_mean"),
        "train_seconds": _get(run.info, "timing", "train_seconds"),
    }
    if run.info.get("diagnostics") is not None:
        score["diagnostics"] = run.info["diagnostics"]
    return _json_ready(score)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def format_recovery(r: dict[str, Any]) -> str:
    """A :func:`~scperturb_vae.tl.metrics.recovery_summary` in one line."""
    return (
        f"MCC {_fmt(r.get('mcc_pearson'))} (Pearson), {_fmt(r.get('mcc_spearman'))} (Spearman); "
        f"R^2 {_fmt(r.get('r2'))}; MIG {_fmt(r.get('mig'))}; graph precision {_fmt(r.get('graph_precision'))}, "
        f"recall {_fmt(r.get('graph_recall'))}, F1 {_fmt(r.get('graph_f1'))}, AUROC {_fmt(r.get('graph_auroc'))}"
    )


def format_score(score: dict[str, Any]) -> list[str]:
    """The figures of :func:`score_run`, one line each, for a terminal."""
    lines = [
        f"scored {score['run']} ({score.get('model') or 'model'}, {score['n_latent']} latents) against "
        f"{score['truth']} ({score['n_true_latent']} true latents) on {score['n_cells']} cells"
        + (f" ({score['n_cells_run'] - score['n_cells']} of the run's cells are not in the truth)"
           if score["n_cells_run"] != score["n_cells"] else ""),
        f"MCC: {_fmt(score['mcc_pearson'])} (Pearson), {_fmt(score['mcc_spearman'])} (Spearman)",
        f"R^2 (linear map from the learned latents, in-sample): {_fmt(score['r2'])}",
        f"MIG: {_fmt(score['mig'])}",
        (
            f"graph at 0.5: precision {_fmt(score['graph_precision'])}, recall {_fmt(score['graph_recall'])}, "
            f"F1 {_fmt(score['graph_f1'])} ({score['graph_tp']} true positives, {score['graph_fp']} false "
            f"positives, {score['graph_fn']} missed; {score['graph_n_perturbations']} perturbations)"
        ),
        f"graph AUROC: {_fmt(score['graph_auroc'])}",
        f"graph average precision: {_fmt(score['graph_average_precision'])}",
        f"active units: {score['active_units']} of {score['n_latent']} (Var_x E[z|x] > {score['active_threshold']:g})",
    ]
    diag = score.get("diagnostics")
    if isinstance(diag, dict) and diag.get("kl_total") is not None:
        lines.append(
            f"posterior collapse (run.json): KL to the prior {_fmt(diag.get('kl_total'), 2)} nats per cell, "
            f"mutual information I(x; z) {_fmt(diag.get('mutual_information'), 2)} nats"
        )
    if score.get("validation_nll") is not None:
        lines.append(f"validation NLL (run.json): {_fmt(score['validation_nll'], 2)} nats per cell")
    return lines


def write_score(score: dict[str, Any], path: str | Path, overwrite: bool = False) -> Path:
    """Write a score as strict JSON (sorted keys), atomically; an existing file needs ``overwrite``."""
    path = Path(path)
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_text(json.dumps(_json_ready(score), indent=2, sort_keys=True, allow_nan=False) + "\n")
    return path


# --------------------------------------------------------------------------- benchmark
def parse_seeds(seeds: str | Iterable[int]) -> list[int]:
    """Seeds from ``"0,1,2"`` (or a list): distinct non-negative integers."""
    items = seeds.split(",") if isinstance(seeds, str) else list(seeds)
    out = []
    for item in items:
        text = str(item).strip()
        if not text.isdigit():
            raise InputError(f"--seeds must be comma-separated non-negative integers (e.g. 0,1,2), not {seeds!r}")
        out.append(int(text))
    if not out:
        raise InputError("--seeds is empty; give e.g. 0,1,2")
    if len(set(out)) != len(out):
        raise InputError(f"--seeds lists a seed twice: {seeds!r}")
    return out


@dataclass
class BenchmarkResult:
    """What :func:`run_benchmark` wrote (``out``) and its tables."""

    out: Path
    #: one row per model x seed
    results: pd.DataFrame
    #: one row per model: ``{metric}_mean`` and ``{metric}_sd`` of :data:`SUMMARY_METRICS`
    summary: pd.DataFrame
    #: the summary as a Markdown table (summary.md)
    table: str


def summarise_results(results: pd.DataFrame, models: Sequence[str] | None = None) -> pd.DataFrame:
    """Mean and sample sd (``ddof=1``; NaN for one seed) over seeds of each summary metric, per model."""
    models = list(dict.fromkeys(results["model"])) if models is None else list(models)
    rows = []
    for model in models:
        part = results[results["model"] == model]
        row: dict[str, Any] = {"model": model, "n_seeds": len(part)}
        for metric in SUMMARY_METRICS:
            values = pd.to_numeric(part[metric], errors="coerce") if metric in part else pd.Series(dtype=float)
            values = values[np.isfinite(values)]
            row[f"{metric}_mean"] = float(values.mean()) if len(values) else np.nan
            row[f"{metric}_sd"] = float(values.std(ddof=1)) if len(values) > 1 else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def _digits(metric: str) -> int:
    return 1 if metric in ("active_units", "validation_nll", "train_seconds") else 3


def markdown_summary(summary: pd.DataFrame) -> str:
    """A Markdown table of :func:`summarise_results`: ``mean ± sd`` per model and metric."""
    header = ["model", "seeds", *SUMMARY_METRICS.values()]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * len(SUMMARY_METRICS)) + "|"]
    for _, row in summary.iterrows():
        cells = [str(row["model"]), str(int(row["n_seeds"]))]
        for metric in SUMMARY_METRICS:
            mean, sd = row[f"{metric}_mean"], row[f"{metric}_sd"]
            d = _digits(metric)
            if not np.isfinite(mean):
                cells.append("n/a")
            elif np.isfinite(sd):
                cells.append(f"{mean:.{d}f} ± {sd:.{d}f}")
            else:
                cells.append(f"{mean:.{d}f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _relocate_run_json(run_dir: Path, old: Path, new: Path) -> None:
    """Point run.json's paths (input, output) at the benchmark folder's final name.

    The runs are trained inside the benchmark's temporary folder, which is renamed at
    the end; without this, run.json would name the temporary folder.
    """
    path = run_dir / "run.json"
    info = json.loads(path.read_text())
    old_s, new_s = str(old), str(new)
    old_r, new_r = str(old.resolve()), str(new.absolute())

    def fix(value):
        if isinstance(value, str):
            for a, b in ((old_r, new_r), (old_s, new_s)):
                if value == a or value.startswith(a + "/"):
                    return b + value[len(a):]
        return value

    for section, key in (("settings", "adata"), ("settings", "out"), ("input", "path")):
        if isinstance(info.get(section), dict) and key in info[section]:
            info[section][key] = fix(info[section][key])
    from scperturb_vae.io import write_json

    write_json(info, path)


def _plot_metrics(results: pd.DataFrame, models: Sequence[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncols = 4
    nrows = math.ceil(len(PLOT_METRICS) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.3 * ncols, 3.0 * nrows), squeeze=False)
    x = np.arange(len(models))
    for ax, metric in zip(axes.ravel(), PLOT_METRICS):
        ax.set_title(SUMMARY_METRICS.get(metric, metric))
        ax.set_xticks(x)
        ax.set_xticklabels(models, rotation=30)
        values_any = False
        for i, model in enumerate(models):
            part = results[results["model"] == model]
            values = pd.to_numeric(part.get(metric, pd.Series(dtype=float)), errors="coerce").to_numpy(float)
            values = values[np.isfinite(values)]
            if not len(values):
                continue
            values_any = True
            jitter = np.linspace(-0.12, 0.12, len(values)) if len(values) > 1 else np.zeros(1)
            ax.scatter(i + jitter, values, s=14, color="0.55", zorder=2)
            sd = values.std(ddof=1) if len(values) > 1 else 0.0
            ax.errorbar(i + 0.3, values.mean(), yerr=sd, fmt="o", color="C3", capsize=3, zorder=3)
        if not values_any:
            ax.text(0.5, 0.5, "n/a", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlim(-0.6, len(models) - 0.3)
    for ax in axes.ravel()[len(PLOT_METRICS):]:
        ax.axis("off")
    fig.suptitle(f"{title}: grey points = seeds, red = mean ± sd")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _aligned_graph(graph: pd.DataFrame, true_graph: pd.DataFrame, assignment: dict[str, Any]) -> pd.DataFrame:
    """The learned graph on the true graph's rows, its columns in the true latents' order
    (by the MCC matching), the unmatched learned latents last."""
    matched = [assignment.get(t) for t in true_graph.columns]
    order = [c for c in matched if c is not None] + [c for c in graph.columns if c not in matched]
    rows = [p for p in true_graph.index if p in graph.index]
    return graph.loc[rows, order]


def _plot_graphs(true_graph: pd.DataFrame, learned: dict[str, pd.DataFrame], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("truth", true_graph.astype(float))] + list(learned.items())
    n_rows = true_graph.shape[0]
    height = min(14.0, max(3.8, 2.4 + 0.14 * n_rows))
    fig, axes = plt.subplots(1, len(panels), figsize=(2.2 + 2.0 * len(panels), height), squeeze=False,
                             layout="constrained")
    image = None
    for i, (ax, (name, graph)) in enumerate(zip(axes[0], panels)):
        image = ax.imshow(graph.to_numpy(float), aspect="auto", vmin=0.0, vmax=1.0, cmap="viridis",
                          interpolation="nearest")
        ax.set_title(name)
        ax.set_xticks(range(graph.shape[1]))
        ax.set_xticklabels([str(c) for c in graph.columns], rotation=90, fontsize=6)
        if i == 0 and n_rows <= 40:
            ax.set_yticks(range(n_rows))
            ax.set_yticklabels([str(r) for r in graph.index], fontsize=6)
        else:
            ax.set_yticks([])
        ax.set_xlabel("latent")
    axes[0][0].set_ylabel("perturbation")
    fig.colorbar(image, ax=list(axes[0]), shrink=0.6, label="edge score")
    fig.suptitle(f"{title}: learned latents permuted to match the true ones", fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_benchmark(
    out: str | Path,
    *,
    preset: str = "paper",
    models: str | Sequence[str] = ("svae+", "svae", "ivae", "vae"),
    seeds: str | Sequence[int] = (0, 1, 2),
    max_epochs: int | None = None,
    n_latent: int | None = None,
    quick: bool = False,
    overwrite: bool = False,
    ll_cells: int = 1000,
    sizes: dict[str, Any] | None = None,
    progress_bar: bool = False,
) -> BenchmarkResult:
    """Simulate, train every model on every seed's screen, score, summarise (see the module docstring).

    Parameters
    ----------
    out
        The benchmark folder to create.
    preset
        Simulation preset, ``"paper"`` or ``"programs"``.
    models
        Model names (``MODEL_NAMES`` of :mod:`scperturb_vae.pipelines.train`), a list or ``"svae+,vae"``.
    seeds
        Seeds, a list or ``"0,1,2"``: seed ``S`` simulates the screen and trains on it.
    max_epochs
        Training epochs (None: ``scvae train``'s default, or :data:`QUICK_EPOCHS` with
        ``quick``).
    n_latent
        Latents of the models (None: the simulation's number of true latents).
    quick
        Small screens (:data:`QUICK_SIZES`) and few epochs: a smoke test in seconds.
    overwrite
        Replace an existing ``out`` (only once the new one is complete).
    ll_cells
        Validation cells for the importance-sampled likelihood of each run (0 skips it).
    sizes
        Further :func:`~scperturb_vae.data.simulate.simulate_screen` arguments (override the
        preset's and ``quick``'s).
    progress_bar
        Show the training progress bars.
    """
    from scperturb_vae.tl.metrics import posterior_collapse
    from scperturb_vae.pipelines.train import TrainSettings, train_run
    from scperturb_vae.data.simulate import PRESETS, simulate_screen

    if preset not in PRESETS:
        raise InputError(f"unknown simulation preset {preset!r}; choose one of {', '.join(sorted(PRESETS))}")
    models = parse_models(models)
    seeds = parse_seeds(seeds)
    if n_latent is not None and n_latent < 1:
        raise InputError(f"--n-latent must be at least 1, not {n_latent}")
    if max_epochs is not None and max_epochs < 1:
        raise InputError(f"--max-epochs must be at least 1, not {max_epochs}")
    if ll_cells < 0:
        raise InputError(f"--ll-cells must be >= 0, not {ll_cells}")
    sim_args: dict[str, Any] = {}
    if quick:
        sim_args.update(QUICK_SIZES)
        if preset == "programs":
            sim_args["genes_per_program"] = QUICK_GENES_PER_PROGRAM
        if max_epochs is None:
            max_epochs = QUICK_EPOCHS
    sim_args.update(sizes or {})
    out = check_output(out, overwrite)

    rows: list[dict[str, Any]] = []
    graphs: dict[str, pd.DataFrame] = {}
    true_graph_first: pd.DataFrame | None = None
    total, done = len(models) * len(seeds), 0
    with atomic_dir(out, overwrite=overwrite) as tmp:
        (tmp / "data").mkdir()
        (tmp / "runs").mkdir()
        for seed in seeds:
            adata = simulate_screen(preset, seed=seed, **sim_args)
            data_name = f"data/{preset}_seed{seed}.h5ad"
            with atomic_path(tmp / data_name) as part:
                adata.write_h5ad(part)
            n_true = int(adata.obsm["z_true"].shape[1])
            if seed == seeds[0]:
                from scperturb_vae.data.simulate import graph_from_adata

                true_graph_first = graph_from_adata(adata)
            del adata
            for model in models:
                run_name = f"runs/{model}_seed{seed}"
                start = time.perf_counter()
                result = train_run(
                    TrainSettings(
                        adata=str(tmp / data_name),
                        out=str(tmp / run_name),
                        model=model,
                        n_latent=n_true if n_latent is None else n_latent,
                        max_epochs=max_epochs,
                        seed=seed,
                        ll_cells=ll_cells,
                    ),
                    progress_bar=progress_bar,
                )
                diagnostics = result.summary.get("diagnostics")
                if not isinstance(diagnostics, dict):
                    diagnostics = posterior_collapse(result.model, seed=seed)
                epochs = _get(result.summary, "resolved", "max_epochs")
                del result
                _relocate_run_json(tmp / run_name, tmp, out)
                score = score_run(tmp / run_name, tmp / data_name)
                score["run"], score["truth"] = str(out / run_name), str(out / data_name)
                write_score(score, tmp / run_name / "score.json")
                seconds = time.perf_counter() - start
                done += 1
                logger.info(
                    f"[{done}/{total}] {model} seed {seed}: MCC {_fmt(score['mcc_pearson'])}, "
                    f"R^2 {_fmt(score['r2'])}, MIG {_fmt(score['mig'])}, graph F1 {_fmt(score['graph_f1'])}, "
                    f"AUROC {_fmt(score['graph_auroc'])}, active units {score['active_units']}/{score['n_latent']} "
                    f"({seconds:.1f} s)"
                )
                rows.append({
                    "model": model,
                    "seed": seed,
                    "preset": preset,
                    "n_latent": score["n_latent"],
                    "n_true_latent": score["n_true_latent"],
                    "epochs": epochs,
                    "n_cells": score["n_cells"],
                    **{k: score[k] for k in (
                        "mcc_pearson", "mcc_spearman", "r2", "mig", "n_matched",
                        "graph_precision", "graph_recall", "graph_f1", "graph_auroc", "graph_average_precision",
                        "graph_tp", "graph_fp", "graph_fn", "active_units", "validation_nll", "train_seconds",
                    )},
                    "kl_total": diagnostics.get("kl_total"),
                    "mutual_information": diagnostics.get("mutual_information"),
                    "seconds": round(seconds, 3),
                    "run": run_name,
                })
                if seed == seeds[0] and true_graph_first is not None:
                    learned = pd.read_csv(tmp / run_name / "intervention_graph.csv", index_col=0)
                    learned.index = learned.index.astype(str)
                    learned.columns = learned.columns.astype(str)
                    graphs[model] = _aligned_graph(learned, true_graph_first, score["assignment"])

        results = pd.DataFrame(rows)
        summary = summarise_results(results, models)
        table = markdown_summary(summary)
        results.to_csv(tmp / "results.csv", index=False)
        summary.to_csv(tmp / "summary.csv", index=False)
        epochs_text = "default epochs" if max_epochs is None else f"{max_epochs} epochs"
        title = f"{preset} preset, seeds {','.join(map(str, seeds))}, {epochs_text}"
        (tmp / "summary.md").write_text(
            f"# Benchmark: {title}\n\nMean ± sd over seeds (sd with ddof=1). Recovery metrics against the "
            "simulated truth; active units: latents with Var_x E[z|x] > 0.01; validation NLL: "
            "importance-sampled, nats per cell; train s: training seconds.\n\n" + table
        )
        _plot_metrics(results, models, tmp / "metrics.png", title)
        if true_graph_first is not None:
            _plot_graphs(true_graph_first, graphs, tmp / f"graph_seed{seeds[0]}.png", f"{preset}, seed {seeds[0]}")
    return BenchmarkResult(out=out, results=results, summary=summary, table=table)
