"""Score a run against a simulation's truth (``scvae score``).

:func:`score_run` compares a run folder written by :func:`scperturb_vae.pipelines.train.train_run`
(``scvae train``) with the ground truth of the simulated file it was trained on
(:func:`scperturb_vae.data.simulate.simulate_screen`): MCC, linear R^2 and MIG of the latents,
precision / recall / F1 / AUROC / average precision of the graph (see
:mod:`scperturb_vae.tl.metrics`), and the active units of the posterior means.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scperturb_vae.errors import InputError
from scperturb_vae.io import json_ready, write_json

logger = logging.getLogger("scperturb_vae")

__all__ = ["SCORE_FILES", "format_recovery", "format_score", "format_value", "nested_get", "score_run", "write_score"]


#: what scoring reads from a run folder
SCORE_FILES = ("latent.h5ad", "intervention_graph.csv", "run.json")


@dataclass
class _Truth:
    path: Path
    cells: pd.Index
    z: np.ndarray
    graph: pd.DataFrame
    latent_names: list[str]


def _read_truth(path: str | Path) -> _Truth:
    """The ground truth of a simulated h5ad (the counts stay on disk)."""
    from scperturb_vae.data.reading import check_h5ad_file, short_reason
    from scperturb_vae.data.simulate import graph_from_adata

    path = check_h5ad_file(path)
    import anndata

    try:
        adata = anndata.read_h5ad(path, backed="r")
    except MemoryError:
        raise
    except Exception as error:
        raise InputError(f"cannot read {path} as h5ad: {short_reason(error)}") from error
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
    from scperturb_vae.data.reading import short_reason
    from scperturb_vae.model.runs import read_run_summary

    run_dir = Path(run_dir)
    info = read_run_summary(run_dir, required=SCORE_FILES)
    import anndata

    try:
        latent = anndata.read_h5ad(run_dir / "latent.h5ad")
    except MemoryError:
        raise
    except Exception as error:
        raise InputError(f"cannot read {run_dir / 'latent.h5ad'}: {short_reason(error)}") from error
    try:
        graph = pd.read_csv(run_dir / "intervention_graph.csv", index_col=0)
    except Exception as error:
        raise InputError(f"cannot read {run_dir / 'intervention_graph.csv'}: {short_reason(error)}") from error
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


def nested_get(mapping: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(mapping, dict) or key not in mapping:
            return None
        mapping = mapping[key]
    return mapping


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
        "model": nested_get(run.info, "settings", "model"),
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
        "validation_nll": nested_get(run.info, "validation_likelihood", "nll_mean"),
        "train_seconds": nested_get(run.info, "timing", "train_seconds"),
    }
    if run.info.get("diagnostics") is not None:
        score["diagnostics"] = run.info["diagnostics"]
    return json_ready(score)


def format_value(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def format_recovery(r: dict[str, Any]) -> str:
    """A :func:`~scperturb_vae.tl.metrics.recovery_summary` in one line."""
    return (
        f"MCC {format_value(r.get('mcc_pearson'))} (Pearson), {format_value(r.get('mcc_spearman'))} (Spearman); "
        f"R^2 {format_value(r.get('r2'))}; MIG {format_value(r.get('mig'))}; graph precision {format_value(r.get('graph_precision'))}, "
        f"recall {format_value(r.get('graph_recall'))}, F1 {format_value(r.get('graph_f1'))}, AUROC {format_value(r.get('graph_auroc'))}"
    )


def format_score(score: dict[str, Any]) -> list[str]:
    """The figures of :func:`score_run`, one line each, for a terminal."""
    lines = [
        f"scored {score['run']} ({score.get('model') or 'model'}, {score['n_latent']} latents) against "
        f"{score['truth']} ({score['n_true_latent']} true latents) on {score['n_cells']} cells"
        + (f" ({score['n_cells_run'] - score['n_cells']} of the run's cells are not in the truth)"
           if score["n_cells_run"] != score["n_cells"] else ""),
        f"MCC: {format_value(score['mcc_pearson'])} (Pearson), {format_value(score['mcc_spearman'])} (Spearman)",
        f"R^2 (linear map from the learned latents, in-sample): {format_value(score['r2'])}",
        f"MIG: {format_value(score['mig'])}",
        (
            f"graph at 0.5: precision {format_value(score['graph_precision'])}, recall {format_value(score['graph_recall'])}, "
            f"F1 {format_value(score['graph_f1'])} ({score['graph_tp']} true positives, {score['graph_fp']} false "
            f"positives, {score['graph_fn']} missed; {score['graph_n_perturbations']} perturbations)"
        ),
        f"graph AUROC: {format_value(score['graph_auroc'])}",
        f"graph average precision: {format_value(score['graph_average_precision'])}",
        f"active units: {score['active_units']} of {score['n_latent']} (Var_x E[z|x] > {score['active_threshold']:g})",
    ]
    diag = score.get("diagnostics")
    if isinstance(diag, dict) and diag.get("kl_total") is not None:
        lines.append(
            f"posterior collapse (run.json): KL to the prior {format_value(diag.get('kl_total'), 2)} nats per cell, "
            f"mutual information I(x; z) {format_value(diag.get('mutual_information'), 2)} nats"
        )
    if score.get("validation_nll") is not None:
        lines.append(f"validation NLL (run.json): {format_value(score['validation_nll'], 2)} nats per cell")
    return lines


def write_score(score: dict[str, Any], path: str | Path, overwrite: bool = False) -> Path:
    """Write a score as strict JSON (sorted keys), atomically; an existing file needs ``overwrite``."""
    return write_json(score, path, overwrite=overwrite)
