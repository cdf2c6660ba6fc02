"""``scvae evaluate --predict``: the held-out perturbations' predicted expression, beside baselines.

Writes ``DIR/predict/`` (inside ``evaluate``'s folder, so it appears only when complete)::

    real.h5ad                  the held-out evaluation cells (never the adaptation cells) and a
                               seeded sample of training control cells, cell-eval's layout
    pred_<method>_k<k>.h5ad    each model after k-cell adaptation, and each baseline
                               (:mod:`scperturb_vae.tl.prediction`), the same layout
    metrics.csv                one row per method, k and group of perturbations (single,
                               combination, and all when there are both): the mean over the
                               group's perturbations of ate_pearson, ate_pearson_top20, ate_mse,
                               and cell-eval's metrics on the group when cell-eval is installed
    metrics_per_perturbation.csv
    metrics.png                ATE Pearson (top-20 DE genes) against k, per method

``split.csv`` of the evaluation folder says which cells adapted and which evaluated.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from scperturb_vae.data.labels import COMBINATION_SEP
from scperturb_vae.pl.base import save
from scperturb_vae.pl.heldout import prediction_scores
from scperturb_vae.tl.evaluate import adaptation_rows, fewshot_rows
from scperturb_vae.tl.prediction import (
    CELL_EVAL_HINT,
    baseline_predictions,
    cell_eval_scores,
    delta_scores,
    prediction_controls,
    real_cells,
    top_de_genes,
)

logger = logging.getLogger("scperturb_vae")

__all__ = ["write_predictions"]


def _file_name(method: str, k) -> str:
    return f"pred_{method.replace('+', '_plus').replace(' ', '_')}_k{k}.h5ad"


def _groups(perturbations: list[str]) -> dict[str, list[str]]:
    """``single`` and ``combination`` targets, and ``all`` when there are both."""
    groups = {"single": [p for p in perturbations if COMBINATION_SEP not in p],
              "combination": [p for p in perturbations if COMBINATION_SEP in p]}
    groups = {g: ps for g, ps in groups.items() if ps}
    if len(groups) > 1:
        groups["all"] = list(perturbations)
    return groups


def _subset(adata, targets: list[str], control: str):
    keep = adata.obs["target"].astype(str).isin([control, *targets]).to_numpy()
    return adata[keep].copy()


def write_predictions(out: Path, predictions: dict, data, split: pd.Series, fewshot: list, *, n_cells: int,
                      seed: int) -> dict:
    """Write ``out`` (module docstring) from ``predictions`` (model -> k -> AnnData); returns a record."""
    out.mkdir(parents=True)
    controls = prediction_controls(data, split, n_cells, seed)
    real = real_cells(data, split, controls)
    real.write_h5ad(out / "real.h5ad")
    labels = data.adata.obs[data.perturbation_key].astype(str).to_numpy()
    adapt = adaptation_rows(data, split, seed)
    by_k = {k: fewshot_rows(adapt, labels, k) for k in fewshot}
    methods = {(m, k): pred for m, preds in predictions.items() for k, pred in preds.items()}
    methods.update(baseline_predictions(data, split, controls, by_k, seed=seed))
    control = data.control_label
    top = top_de_genes(real, control)
    groups = _groups(sorted(top))
    reals = {g: _subset(real, targets, control) for g, targets in groups.items()}
    rows, per_pert, have_cell_eval = [], [], True
    for (method, k), pred in methods.items():
        pred.write_h5ad(out / _file_name(method, k))
        scores = delta_scores(real, pred, control, top)
        per_pert.append(scores.assign(method=method, k=str(k)))
        for group, targets in groups.items():
            mine = scores[scores["perturbation"].isin(targets)]
            row = {"method": method, "k": str(k), "group": group, "n_perturbations": len(mine),
                   **mine.drop(columns="perturbation").mean().to_dict()}
            extra = (cell_eval_scores(reals[group], _subset(pred, targets, control), control, out)
                     if have_cell_eval else None)
            if extra is None:
                have_cell_eval = False
            else:
                row.update(dict(zip(extra["metric"], extra["mean"])))
            rows.append(row)
    if not have_cell_eval:
        logger.warning(CELL_EVAL_HINT)
    metrics = pd.DataFrame(rows)
    metrics.to_csv(out / "metrics.csv", index=False)
    per = pd.concat(per_pert)
    per.insert(3, "group", np.where(per["perturbation"].str.contains(COMBINATION_SEP, regex=False),
                                    "combination", "single"))
    per[["method", "k", "perturbation", "group", "ate_pearson", "ate_pearson_top20", "ate_mse"]].to_csv(
        out / "metrics_per_perturbation.csv", index=False)
    save(prediction_scores(metrics), out / "metrics.png")
    return {"control_cells": int(len(controls.real)), "cell_eval": have_cell_eval,
            "perturbations": sorted(top), "groups": groups, "files": sorted(p.name for p in out.glob("*.h5ad")),
            "metrics": metrics.replace({np.nan: None}).to_dict(orient="records")}
