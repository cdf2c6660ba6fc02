"""``scvae predict``: counterfactual expression of a run's perturbations, in cell-eval's layout.

:func:`predict_run` loads a run folder, predicts the targets
(:meth:`~scperturb_vae.model.base.PerturbationModelBase.predict`) and writes ``DIR/``::

    pred.h5ad    one counterfactual cell per control cell and target (the controls' own
                 reconstructions under the control label): obs["target"], log1p-normalised X
                 (1e4 counts per cell) of sampled counts, the model's genes in its order,
                 layers["counts"], uns["scvae_predict"] the settings
    means.csv    targets x genes: predicted normalised means (per 1e4 counts)
    ate.csv      perturbations x genes: the average treatment effect against control

``pred.h5ad`` is what cell-eval's ``MetricsEvaluator`` reads (``pert_col="target"``,
``control_pert`` the run's control label).  The folder appears only when complete.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scperturb_vae.io import atomic_dir, check_output, write_json
from scperturb_vae.tl.prediction import evaluation_layout

logger = logging.getLogger("scperturb_vae")

__all__ = ["PredictResult", "predict_run"]


@dataclass
class PredictResult:
    out: Path
    targets: list[str]
    n_cells: int


def predict_run(run_dir, perturbations, out, *, n_cells: int = 1000, seed: int = 0, overwrite: bool = False,
                adata=None) -> PredictResult:
    """Predict ``perturbations`` (``"A,B,A+B"``) with the run's model and write ``out`` (module docstring)."""
    from scperturb_vae.model.runs import load_run

    out = check_output(out, overwrite)
    run = load_run(run_dir, adata=adata)
    logger.info(f"predicting from {len(run.model.perturbations)} trained perturbations with {n_cells} control cells")
    prediction = run.model.predict(perturbations, n_cells=n_cells, sample_counts=True, seed=seed)
    targets = list(prediction.means.index[1:])
    settings = {"run": str(Path(run_dir).resolve()), "targets": targets, "n_cells": len(prediction.control_cells),
                "seed": seed, "estimator": "control cells moved by the prior's transport to p(z | a), decoded"}
    pred = evaluation_layout(prediction.cells, run.model.control_label, settings)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        pred.write_h5ad(tmp / "pred.h5ad")
        prediction.means.to_csv(tmp / "means.csv")
        prediction.ate.to_csv(tmp / "ate.csv")
        write_json({**settings, "ate_l1": {t: float(np.abs(prediction.ate.loc[t]).sum()) for t in targets}},
                   tmp / "predict.json")
    return PredictResult(out=out, targets=targets, n_cells=len(prediction.control_cells))
