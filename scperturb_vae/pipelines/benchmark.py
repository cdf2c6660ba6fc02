"""Benchmark the models over seeds on simulated screens (``scvae benchmark``).

:func:`run_benchmark` simulates one screen per seed, trains every model on it, scores each
run (:func:`scperturb_vae.pipelines.score.score_run`) and writes a folder::

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
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scperturb_vae.errors import InputError
from scperturb_vae.io import atomic_dir, atomic_path, check_output, write_json
from scperturb_vae.model.registry import parse_models
from scperturb_vae.pipelines.score import format_value, nested_get, score_run, write_score
from scperturb_vae.pl.base import save
from scperturb_vae.pl.benchmark import learned_vs_true_graphs, metrics_by_model
from scperturb_vae.tl.checks import check_settings
from scperturb_vae.tl.targets import aligned_graph

logger = logging.getLogger("scperturb_vae")

__all__ = [
    "SUMMARY_METRICS",
    "QUICK_SIZES",
    "QUICK_EPOCHS",
    "parse_seeds",
    "BenchmarkResult",
    "run_benchmark",
    "summarise_results",
    "markdown_summary",
]


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
    "graph_perturbation_recall": "effects with an edge",
    "graph_null_specificity": "nulls without",
    "edge_jaccard": "edge Jaccard across seeds",
    "active_units": "active units",
    "kl_total": "KL (nats)",
    "mutual_information": "MI (nats)",
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
#: ... the "programs" and "realistic" presets' genes per program (4 x 5 of the 40 genes) ...
QUICK_GENES_PER_PROGRAM = 5
#: ... the "realistic" preset's other quick sizes ...
QUICK_REALISTIC = {"n_pathways": 4, "n_control_cells": 120, "condition_genes": 0, "n_combinations": 1,
                   "n_cells_per_combination": 30, "min_cells": 30, "max_cells": 120}
#: ... and the training epochs
QUICK_EPOCHS = 5


# --------------------------------------------------------------------------- score


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

    write_json(info, path)


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
    data_seed: int | None = None,
    decoders: Sequence[str] = ("standard",),
    network: dict[str, Any] | None = None,
    latent_factor: int = 1,
) -> BenchmarkResult:
    """Simulate, train every model on every seed's screen, score, summarise (see the module docstring).

    Parameters
    ----------
    out
        The benchmark folder to create.
    preset
        Simulation preset, ``"paper"``, ``"programs"`` or ``"realistic"``.
    models
        Model names (``MODEL_NAMES`` of :mod:`scperturb_vae.model.registry`), a list or ``"svae+,vae"``.
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
    data_seed
        Simulate one screen with this seed and train every seed on it: the seeds then vary
        only the training, and ``edge_jaccard`` (each run's mean Jaccard index of its
        truth-matched edges with the other seeds' runs of the model) says how reproducible
        the graph is.  None: one screen per seed, ``edge_jaccard`` is NaN.
    decoders
        Train every model with each decoder (``"standard"``, ``"injective"``); with more than
        one, a run is labelled ``MODEL (DECODER)`` and ``kl_per_latent.csv`` is written.
    network
        Network options of every model (e.g. ``{"n_layers": 2}``).
    latent_factor
        Without ``n_latent``: this many latents per true latent (2: an over-specified model).
    """
    import anndata as ad

    from scperturb_vae.data.simulate import graph_from_adata, simulate_screen
    from scperturb_vae.tl.stability import edge_jaccard, matched_edges

    models, seeds, sim_args, max_epochs = _check_args(preset, models, seeds, n_latent, max_epochs, ll_cells, quick,
                                                      sizes)
    if data_seed is not None and (isinstance(data_seed, bool) or int(data_seed) != data_seed or data_seed < 0):
        raise InputError(f"--data-seed must be a non-negative integer, not {data_seed!r}")
    from scperturb_vae.module.likelihoods import DECODERS

    unknown = [d for d in decoders if d not in DECODERS]
    if unknown or not decoders:
        raise InputError(f"unknown decoder(s) {', '.join(unknown) or '(none given)'}; choose among {', '.join(DECODERS)}")
    if isinstance(latent_factor, bool) or int(latent_factor) != latent_factor or latent_factor < 1:
        raise InputError(f"the latents per true latent must be a positive integer, not {latent_factor!r}")
    out = check_output(out, overwrite)
    train = {"n_latent": n_latent, "max_epochs": max_epochs, "ll_cells": ll_cells, "progress_bar": progress_bar,
             "latent_factor": int(latent_factor), "network": dict(network or {})}
    labels = {(m, d): m if len(decoders) == 1 else f"{m} ({d})" for m in models for d in decoders}
    rows: list[dict[str, Any]] = []
    graphs: dict[str, pd.DataFrame] = {}
    true_graph_first: pd.DataFrame | None = None
    total = len(labels) * len(seeds)
    edges: dict[str, list[set]] = {label: [] for label in labels.values()}
    kl_rows: list[dict[str, Any]] = []
    with atomic_dir(out, overwrite=overwrite) as tmp:
        (tmp / "data").mkdir()
        (tmp / "runs").mkdir()
        for seed in seeds:
            screen_seed = seed if data_seed is None else data_seed
            data_name = f"data/{preset}_seed{screen_seed}.h5ad"
            if not (tmp / data_name).exists():
                adata = simulate_screen(preset, seed=screen_seed, **sim_args)
                with atomic_path(tmp / data_name) as part:
                    adata.write_h5ad(part)
                del adata
            truth = ad.read_h5ad(tmp / data_name, backed="r")
            n_true, true_graph = int(truth.obsm["z_true"].shape[1]), graph_from_adata(truth)
            truth.file.close()
            if seed == seeds[0]:
                true_graph_first = true_graph
            for (model, decoder), label in labels.items():
                row, score, kl = _benchmark_run(tmp, out, model, seed, preset, data_name, n_true, train,
                                                f"{len(rows) + 1}/{total}", decoder=decoder, label=label)
                rows.append(row)
                kl_rows += [{"model": label, "seed": seed, "latent": i, "kl": v} for i, v in enumerate(kl)]
                learned = pd.read_csv(tmp / row["run"] / "intervention_graph.csv", index_col=0)
                learned.index = learned.index.astype(str)
                learned.columns = learned.columns.astype(str)
                edges[label].append(matched_edges(true_graph, learned, score["assignment"]))
                if seed == seeds[0]:
                    graphs[label] = aligned_graph(learned, true_graph_first, score["assignment"])
        if data_seed is not None:
            for label in labels.values():
                for row, value in zip([r for r in rows if r["model"] == label], edge_jaccard(edges[label])):
                    row["edge_jaccard"] = value
        if len(decoders) > 1:
            pd.DataFrame(kl_rows).to_csv(tmp / "kl_per_latent.csv", index=False)
        results, summary, table = _write_tables(tmp, rows, list(labels.values()), preset, seeds, max_epochs,
                                                true_graph_first, graphs, data_seed)
    return BenchmarkResult(out=out, results=results, summary=summary, table=table)


def _check_args(preset, models, seeds, n_latent, max_epochs, ll_cells, quick, sizes):
    """Checked model names and seeds, the simulation's arguments and the epochs."""
    from scperturb_vae.data.simulate import PRESETS

    if preset not in PRESETS:
        raise InputError(f"unknown simulation preset {preset!r}; choose one of {', '.join(sorted(PRESETS))}")
    models = parse_models(models)
    seeds = parse_seeds(seeds)
    check_settings(flags=True, max_epochs=max_epochs, ll_cells=ll_cells,
                   **({} if n_latent is None else {"n_latent": n_latent}))
    sim_args: dict[str, Any] = {}
    if quick:
        sim_args.update(QUICK_SIZES)
        if preset in ("programs", "realistic"):
            sim_args["genes_per_program"] = QUICK_GENES_PER_PROGRAM
        if preset == "realistic":
            sim_args.update(QUICK_REALISTIC)
        if max_epochs is None:
            max_epochs = QUICK_EPOCHS
    sim_args.update(sizes or {})
    return models, seeds, sim_args, max_epochs


#: the score's entries copied into results.csv
RESULT_METRICS = (
    "mcc_pearson", "mcc_spearman", "r2", "mig", "n_matched",
    "graph_precision", "graph_recall", "graph_f1", "graph_auroc", "graph_average_precision",
    "graph_tp", "graph_fp", "graph_fn", "graph_perturbation_recall", "graph_null_specificity", "active_units", "validation_nll", "train_seconds",
)


def _benchmark_run(tmp: Path, out: Path, model: str, seed: int, preset: str, data_name: str, n_true: int,
                   train: dict[str, Any], progress: str, *, decoder: str = "standard", label: str | None = None):
    """Train one model on one seed's screen and score it; ``(results.csv row, score, KL per latent)``."""
    from scperturb_vae.pipelines.train import TrainSettings, train_run
    from scperturb_vae.tl.metrics import posterior_collapse

    label = model if label is None else label
    run_name = f"runs/{model}_seed{seed}" if label == model else f"runs/{model}_{decoder}_seed{seed}"
    model_kwargs = dict(train["network"])
    if decoder != "standard":
        model_kwargs["decoder"] = decoder
    start = time.perf_counter()
    result = train_run(
        TrainSettings(
            adata=str(tmp / data_name),
            out=str(tmp / run_name),
            model=model,
            n_latent=n_true * train["latent_factor"] if train["n_latent"] is None else train["n_latent"],
            max_epochs=train["max_epochs"],
            seed=seed,
            ll_cells=train["ll_cells"],
            model_kwargs=model_kwargs,
        ),
        progress_bar=train["progress_bar"],
    )
    diagnostics = result.summary.get("diagnostics")
    if not isinstance(diagnostics, dict):
        diagnostics = posterior_collapse(result.model, seed=seed)
    epochs = nested_get(result.summary, "resolved", "max_epochs")
    del result
    _relocate_run_json(tmp / run_name, tmp, out)
    score = score_run(tmp / run_name, tmp / data_name)
    score["run"], score["truth"] = str(out / run_name), str(out / data_name)
    write_score(score, tmp / run_name / "score.json")
    seconds = time.perf_counter() - start
    logger.info(
        f"[{progress}] {label} seed {seed}: MCC {format_value(score['mcc_pearson'])}, "
        f"R^2 {format_value(score['r2'])}, MIG {format_value(score['mig'])}, graph F1 {format_value(score['graph_f1'])}, "
        f"AUROC {format_value(score['graph_auroc'])}, active units {score['active_units']}/{score['n_latent']} "
        f"({seconds:.1f} s)"
    )
    row = {
        "model": label,
        "decoder": decoder,
        "seed": seed,
        "preset": preset,
        "n_latent": score["n_latent"],
        "n_true_latent": score["n_true_latent"],
        "epochs": epochs,
        "n_cells": score["n_cells"],
        **{k: score[k] for k in RESULT_METRICS},
        "kl_total": diagnostics.get("kl_total"),
        "mutual_information": diagnostics.get("mutual_information"),
        "seconds": round(seconds, 3),
        "run": run_name,
    }
    return row, score, list(diagnostics.get("kl_per_latent") or [])


def _write_tables(tmp: Path, rows: list, models: list[str], preset: str, seeds: list[int], max_epochs,
                  true_graph: pd.DataFrame | None, graphs: dict[str, pd.DataFrame], data_seed: int | None = None):
    """``results.csv``, ``summary.csv`` / ``summary.md`` and the plots; ``(results, summary, table)``."""
    results = pd.DataFrame(rows)
    summary = summarise_results(results, models)
    table = markdown_summary(summary)
    results.to_csv(tmp / "results.csv", index=False)
    summary.to_csv(tmp / "summary.csv", index=False)
    epochs_text = "default epochs" if max_epochs is None else f"{max_epochs} epochs"
    screens = "" if data_seed is None else f" on the screen of seed {data_seed}"
    title = f"{preset} preset, seeds {','.join(map(str, seeds))}{screens}, {epochs_text}"
    (tmp / "summary.md").write_text(
        f"# Benchmark: {title}\n\nMean ± sd over seeds (sd with ddof=1). Recovery metrics against the "
        "simulated truth; active units: latents with Var_x E[z|x] > 0.01; validation NLL: "
        "importance-sampled, nats per cell; train s: training seconds; edge Jaccard: "
        "each run's mean Jaccard index of its truth-matched edges with the other seeds' (one screen "
        "for all seeds, `--data-seed`).\n\n" + table
    )
    save(metrics_by_model(results, models, PLOT_METRICS, SUMMARY_METRICS, title), tmp / "metrics.png")
    if true_graph is not None:
        save(learned_vs_true_graphs(true_graph, graphs, f"{preset}, seed {seeds[0]}"), tmp / f"graph_seed{seeds[0]}.png")
    return results, summary, table
