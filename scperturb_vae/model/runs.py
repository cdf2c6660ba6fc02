"""A run folder of ``scvae train`` read back: ``run.json``, the model loaded onto its input's
training cells, the latents, the graph and the held-out split.

Run folders are written by :mod:`scperturb_vae.pipelines.train`; reading one is needed
below the pipelines too (``tl.embed(adata, "runs/NAME")``), so it lives with the models.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scperturb_vae.data.validate import PerturbationData, open_perturbation_adata
from scperturb_vae.errors import InputError

__all__ = ["RUN_FILES", "LoadedRun", "load_run", "read_run_summary"]


@dataclass
class LoadedRun:
    """A run folder read back: the model on its training cells, and the run's records."""

    path: Path
    #: ``run.json``
    summary: dict[str, Any]
    #: the trained model, set up on ``adata``
    model: Any
    #: the AnnData the model is registered with (the training cells of the input)
    adata: Any
    #: the whole validated input
    data: PerturbationData
    #: ``latent.h5ad``
    latent: Any
    #: ``intervention_graph.csv``
    graph: pd.DataFrame
    #: ``split.csv`` (cell -> part) for runs trained with a holdout, else ``None``
    split: pd.Series | None = None

    @property
    def model_name(self) -> str:
        return self.summary["settings"]["model"]


RUN_FILES = ("run.json", "latent.h5ad", "intervention_graph.csv", "model")


def read_run_summary(run_dir: str | Path, required: tuple[str, ...] = RUN_FILES) -> dict[str, Any]:
    """``run.json`` of a run folder, with one-line errors for a folder that is not a run.

    ``required`` names the entries the caller needs (default: all of :data:`RUN_FILES`).
    """
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise InputError(f"run folder {run_dir} does not exist")
    if not run_dir.is_dir():
        raise InputError(f"{run_dir} is not a run folder (a folder made by scvae train)")
    missing = [name for name in required if not (run_dir / name).exists()]
    if missing:
        raise InputError(f"run folder {run_dir} is incomplete: {', '.join(missing)} missing")
    try:
        summary = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError) as err:
        raise InputError(f"{run_dir / 'run.json'} cannot be read ({type(err).__name__}); is it a run folder?") from None
    if not isinstance(summary, dict):
        raise InputError(f"{run_dir / 'run.json'} does not hold a JSON object; is it a run folder?")
    return summary


def load_run(run_dir: str | Path, adata: str | Path | None = None, *, check_input: bool = True) -> LoadedRun:
    """Load a run folder made by :func:`train_run` (``scvae train``).

    The model was saved without its data: the input file named in ``run.json`` (or
    ``adata``, e.g. after moving it) is opened and validated with the run's perturbation
    column, control label and layer, restricted to the training cells when the run held
    perturbations out, and the model is loaded onto it.  With ``check_input`` the file must
    be the very file the run was trained on (same SHA-256).
    """
    import anndata as ad

    from scperturb_vae.model.models import MODELS

    run_dir = Path(run_dir)
    summary = read_run_summary(run_dir)
    try:
        settings, resolved = summary["settings"], summary.get("resolved", {})
        settings["model"]
    except (KeyError, TypeError) as err:
        raise InputError(f"{run_dir / 'run.json'} cannot be read ({type(err).__name__}); is it a run folder?") from None
    path = Path(adata) if adata is not None else Path(summary["input"]["path"])
    data = open_perturbation_adata(
        path,
        perturbation_key=resolved.get("perturbation_key"),
        control_label=resolved.get("control_label"),
        layer=settings.get("layer"),
        min_cells=settings.get("min_cells", 20),
    )
    recorded = summary.get("input", {}).get("sha256")
    if check_input and recorded and data.sha256 != recorded:
        raise InputError(
            f"{path} is not the file run {run_dir} was trained on (its SHA-256 differs from run.json's); "
            "pass the original with --adata"
        )
    split = None
    train_adata = data.adata
    if (run_dir / "split.csv").exists():
        split = pd.read_csv(run_dir / "split.csv", index_col=0)["part"].astype(str)
        missing = split.index.difference(data.adata.obs_names)
        if len(missing):
            raise InputError(f"{len(missing)} cells of {run_dir / 'split.csv'} are not in {path}")
        split = split.reindex(data.adata.obs_names)
        train_adata = data.adata[split.isin(["train", "validation"]).to_numpy()].copy()
    model_name = settings["model"]
    if model_name not in MODELS:
        raise InputError(f"run {run_dir} holds an unknown model {model_name!r}")
    try:
        model = MODELS[model_name].load(str(run_dir / "model"), adata=train_adata)
    except InputError:
        raise
    except ValueError as err:  # scvi-tools' registry transfer: other categories, ...
        raise InputError(f"cannot load the model of {run_dir}: {err}") from None
    if split is not None:
        codes = {name: i for i, name in enumerate(train_adata.obs_names)}
        model.validation_indices = np.array(
            sorted(codes[c] for c in split.index[split == "validation"]), dtype=np.int64
        )
        model.train_indices = np.array(sorted(codes[c] for c in split.index[split == "train"]), dtype=np.int64)
    latent = ad.read_h5ad(run_dir / "latent.h5ad")
    graph = pd.read_csv(run_dir / "intervention_graph.csv", index_col=0)
    return LoadedRun(run_dir, summary, model, train_adata, data, latent, graph, split)
