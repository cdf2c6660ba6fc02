"""How ``tl`` writes into an AnnData: keys, the ``uns`` record of a model (made of what
``write_h5ad`` keeps), and models given as objects or run folders.
"""

from __future__ import annotations

import logging
import numbers
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scperturb_vae.errors import InputError
from scperturb_vae.get.fitted import fitted_keys
from scperturb_vae.io import package_versions
from scperturb_vae.model.registry import DEFAULT_KEYS
from scperturb_vae.model.registry import model_name as registry_model_name
from scperturb_vae.tl.checks import check_key

logger = logging.getLogger("scperturb_vae")


def writable(obj):
    """``obj`` made of what ``write_h5ad`` stores in ``uns`` (``None`` entries dropped)."""
    if isinstance(obj, Mapping):
        return {str(k): writable(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, (pd.DataFrame, np.ndarray)):
        return obj
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, numbers.Real):
        return float(obj)
    if isinstance(obj, str):
        return obj
    if isinstance(obj, (list, tuple)):
        items = [v for v in obj if v is not None]
        if all(isinstance(v, (bool, np.bool_)) for v in items) and items:
            return np.asarray(items, dtype=bool)
        if all(isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_)) for v in items) and items:
            return np.asarray(items, dtype=float if any(isinstance(v, float) for v in items) else np.int64)
        return np.asarray([str(v) for v in items], dtype=object)
    if isinstance(obj, os.PathLike):
        return str(obj)
    return str(obj)


def default_key(model) -> str:
    """The default key of a model name (``"svae+"``) or of a trained model."""
    if isinstance(model, str):
        if model not in DEFAULT_KEYS:
            raise InputError(f"unknown model {model!r}; choose one of {', '.join(DEFAULT_KEYS)}")
        return DEFAULT_KEYS[model]
    return DEFAULT_KEYS[model_name(model)]


def model_name(model) -> str:
    name = registry_model_name(model)
    if name is None:
        raise InputError(
            f"model must be a trained SVAEPlus, SVAE, IVAE or VAE (or a run folder), not {type(model).__name__}"
        )
    return name


def as_model(model):
    """``(model, run_dir)``: a trained model, or one loaded from a run folder."""
    if isinstance(model, (str, os.PathLike)):
        from scperturb_vae.model.runs import load_run

        run = load_run(model)
        return run.model, str(Path(model).resolve())
    model_name(model)
    if not getattr(model, "is_trained_", True):
        raise InputError("the model is not trained yet; call model.train() or use tl.fit")
    return model, None


def key_for_model(adata, model, key_added: str | None) -> str:
    """``key_added``, else the one fitted key of the model's class, else its default key."""
    if key_added is not None:
        return check_key(key_added)
    cls = type(model).__name__
    same = [k for k in fitted_keys(adata) if str(adata.uns[k].get("model_class")) == cls]
    return same[0] if len(same) == 1 else default_key(model)


def model_params(model) -> dict[str, Any]:
    init = getattr(model, "init_params_", {}) or {}
    return {**init.get("non_kwargs", {}), **init.get("kwargs", {}).get("module_kwargs", {})}


def setup_value(model, name: str):
    return model.adata_manager.registry["setup_args"].get(name)


def with_setup(model, adata, action: str):
    """Run ``action(adata)`` for ``model``; scvi-tools' refusals become one-line InputErrors."""
    try:
        return action(adata)
    except InputError:
        raise
    except (ValueError, KeyError) as err:
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"this AnnData cannot be used with the model ({text})") from None


def store(adata, key: str, model, latent: np.ndarray, graph: pd.DataFrame, params: dict, extra: dict,
          shifts: pd.DataFrame | None = None) -> None:
    name = model_name(model)
    obsm_key = "X_" + key
    adata.obsm[obsm_key] = np.asarray(latent, dtype=np.float32)
    entry = {
        "model": name,
        "model_class": type(model).__name__,
        "obsm_key": obsm_key,
        "latent_names": [str(x) for x in model.latent_names],
        "perturbation_key": model.perturbation_key,
        "control_label": model.control_label,
        "layer": setup_value(model, "layer"),
        "batch_key": setup_value(model, "batch_key"),
        "intervention_graph": graph.astype(np.float64),
        "edge_shift_sd": None if shifts is None else shifts.astype(np.float64),
        "edge_evidence": model.get_edge_evidence(),
        "params": params,
        "versions": package_versions(),
        **extra,
    }
    adata.uns[key] = writable(entry)


def shift_table(signed: pd.DataFrame, graph: pd.DataFrame) -> pd.DataFrame:
    """A signed graph's ``shift_sd`` as perturbations x latents, in ``graph``'s order."""
    wide = signed.pivot(index="perturbation", columns="latent", values="shift_sd")
    return wide.loc[graph.index.astype(str), graph.columns.astype(str)]


def embed_arrays(model, adata):
    """``(latent, graph, shifts)``: posterior means, the graph and each edge's shift in control sd."""
    latent = with_setup(model, adata, lambda a: model.get_latent_representation(a))
    graph = with_setup(model, adata, lambda a: model.get_intervention_graph(a, latent=latent))
    signed = with_setup(model, adata, lambda a: model.get_signed_graph(a, latent=latent))
    return latent, graph, shift_table(signed, graph)
