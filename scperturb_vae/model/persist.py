"""Saving and loading models without pickle.

scvi-tools saves a model as one pickled ``model.pt`` (state dict, registry, attributes) and
loads it with ``torch.load(weights_only=False)``, which can run arbitrary code hidden in the
file.  A model folder written here holds instead:

``weights.pt``
    The module's state dict: tensors only, read back with ``torch.load(weights_only=True)``.
``model.json``
    Everything else, as JSON: the format and its version, the package version that wrote
    it, the model class and its constructor arguments, the scvi-tools registry (how the
    AnnData was set up: perturbation column, control label, label and batch categories in
    training order), the genes, the train / validation indices and the training history.

Loading checks, each with a one-line :class:`~scperturb_vae.errors.InputError`: that the
folder is a model folder of this format (an older pickled ``model.pt`` is refused, not
unpickled), that its format version is one this version reads, that the class matches, that
the AnnData has the model's genes in the model's order, and that the weights fit the model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scperturb_vae.errors import InputError
from scperturb_vae.io import atomic_dir, write_json
from scperturb_vae.train.checkpoint import history_from_json, history_to_json

__all__ = ["MODEL_FORMAT", "MODEL_FORMAT_VERSION", "save_model", "load_model", "read_model_meta"]

MODEL_FORMAT = "scperturb-vae-model"
#: bump when a saved folder could not be read back correctly by older code
MODEL_FORMAT_VERSION = 1
WEIGHTS_FILE = "weights.pt"
META_FILE = "model.json"


# --------------------------------------------------------------------------- JSON with arrays
def _encode(value: Any) -> Any:
    """Registry values -> JSON: arrays become ``{"__ndarray__": [...], "dtype": ...}``."""
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    if isinstance(value, np.ndarray):
        kind = "object" if value.dtype == object else value.dtype.str
        return {"__ndarray__": [_encode(v) for v in value.tolist()], "dtype": kind}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    raise TypeError(f"cannot save a {type(value).__name__} in {META_FILE}")


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if "__ndarray__" in value:
            dtype = object if value["dtype"] == "object" else np.dtype(value["dtype"])
            return np.array(value["__ndarray__"], dtype=dtype)
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def _indices(value) -> list[int] | None:
    return None if value is None else [int(i) for i in np.asarray(value).ravel()]


# --------------------------------------------------------------------------- save
def save_model(model, dir_path: str | os.PathLike, *, overwrite: bool = False, save_anndata: bool = False) -> Path:
    """Write ``model`` to ``dir_path`` (``weights.pt`` + ``model.json``), atomically."""
    import torch

    from scperturb_vae import __version__

    registry = model.adata_manager.registry
    meta = {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "package_version": __version__,
        "model_class": type(model).__name__,
        "init_params": _encode(model.init_params_),
        "registry": _encode(registry),
        "var_names": [str(v) for v in model.adata.var_names],
        "perturbations": [str(p) for p in model.perturbations],
        "is_trained": bool(model.is_trained_),
        "train_indices": _indices(getattr(model, "train_indices", None)),
        "validation_indices": _indices(getattr(model, "validation_indices", None)),
        "test_indices": _indices(getattr(model, "test_indices", None)),
        "history": history_to_json(model.history_ if model.is_trained_ else None),
    }
    state = {k: v.detach().cpu().clone() for k, v in model.module.state_dict().items()}
    with atomic_dir(dir_path, overwrite=overwrite) as tmp:
        torch.save(state, tmp / WEIGHTS_FILE)
        write_json(meta, tmp / META_FILE)
        if save_anndata:
            model.adata.write_h5ad(tmp / "adata.h5ad")
    return Path(dir_path)


# --------------------------------------------------------------------------- load
def read_model_meta(dir_path: str | os.PathLike) -> dict[str, Any]:
    """``model.json`` of a model folder, checked for format and version."""
    from scperturb_vae import __version__

    dir_path = Path(dir_path)
    if not dir_path.is_dir():
        raise InputError(f"{dir_path} is not a model folder (it does not exist or is a file)")
    meta_path = dir_path / META_FILE
    if not meta_path.exists():
        if (dir_path / "model.pt").exists():
            raise InputError(
                f"{dir_path} holds a pickled scvi-tools model.pt (written by scperturb-vae 0.1 or scvi-tools); "
                "it is not loaded because unpickling can run arbitrary code: train the model again with this version"
            )
        raise InputError(f"{dir_path} is not a model folder ({META_FILE} missing)")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as err:
        raise InputError(f"{meta_path} cannot be read ({type(err).__name__}); the model folder is damaged") from None
    if not isinstance(meta, dict) or meta.get("format") != MODEL_FORMAT:
        raise InputError(f"{meta_path} is not a scperturb-vae model description")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > MODEL_FORMAT_VERSION:
        raise InputError(
            f"the model in {dir_path} was saved by scperturb-vae {meta.get('package_version', '?')} in model format "
            f"{version}; this version ({__version__}) reads format {MODEL_FORMAT_VERSION} and older: upgrade scperturb-vae"
        )
    if not (dir_path / WEIGHTS_FILE).exists():
        raise InputError(f"the model folder {dir_path} is incomplete: {WEIGHTS_FILE} missing")
    return meta


def _check_genes(adata, var_names: list[str], dir_path: Path) -> None:
    have = pd.Index(adata.var_names.astype(str))
    want = pd.Index(var_names)
    if have.equals(want):
        return
    missing = want.difference(have)
    if len(missing):
        shown = ", ".join(map(str, missing[:5])) + (", ..." if len(missing) > 5 else "")
        raise InputError(
            f"the model in {dir_path} was trained on {len(want)} genes; the data lack {len(missing)} of them ({shown})"
        )
    extra = have.difference(want)
    if len(extra):
        raise InputError(
            f"the data have {len(extra)} genes the model in {dir_path} was not trained on; "
            f"subset them to the model's {len(want)} genes first (adata[:, genes] with the genes of {META_FILE})"
        )
    raise InputError(f"the data hold the model's genes in another order; reorder them as in {dir_path / META_FILE}")


def load_model(cls, dir_path: str | os.PathLike, adata=None, *, accelerator: str = "auto", device: int | str = "auto"):
    """Load a model folder written by :func:`save_model` onto ``adata`` (see the module docstring).

    ``cls`` is the model class (its ``load`` classmethod calls this); ``adata`` is set up
    again with the saved registry, so label codes are those of training.  Without
    ``adata``, the AnnData saved with ``save_anndata=True`` is used.
    """
    import anndata as ad
    import torch
    from scvi.model._utils import parse_device_args

    dir_path = Path(dir_path)
    meta = read_model_meta(dir_path)
    if meta.get("model_class") != cls.__name__:
        raise InputError(f"{dir_path} holds a {meta.get('model_class')} model, not a {cls.__name__}")
    if adata is None:
        if not (dir_path / "adata.h5ad").exists():
            raise InputError(f"{dir_path} was saved without its data: pass the AnnData the model was trained on")
        adata = ad.read_h5ad(dir_path / "adata.h5ad")
    _check_genes(adata, meta["var_names"], dir_path)

    registry = _decode(meta["registry"])
    init = _decode(meta["init_params"])
    cls.setup_anndata(adata, source_registry=registry, **registry["setup_args"])
    non_kwargs = dict(init.get("non_kwargs", {}))
    kwargs = dict(init.get("kwargs", {}))
    module_kwargs = kwargs.pop("module_kwargs", {}) or {}
    model = cls(adata, **non_kwargs, **kwargs, **module_kwargs)
    if [str(p) for p in model.perturbations] != meta.get("perturbations", model.perturbations):
        raise InputError(f"the perturbations of the data do not match those the model in {dir_path} was trained on")

    try:
        state = torch.load(dir_path / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - a damaged or unsafe file, whatever torch raises
        raise InputError(f"{dir_path / WEIGHTS_FILE} cannot be loaded safely ({type(err).__name__}); the model folder is damaged") from None
    if not isinstance(state, dict):
        raise InputError(f"{dir_path / WEIGHTS_FILE} does not hold a state dict")
    try:
        model.module.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        raise InputError(
            f"the weights in {dir_path} do not fit this version's {cls.__name__} "
            f"({first[1].strip() if len(first) > 1 else first[0]})"
        ) from None

    model.is_trained_ = bool(meta.get("is_trained", True))
    for name in ("train_indices", "validation_indices", "test_indices"):
        value = meta.get(name)
        setattr(model, name, None if value is None else np.asarray(value, dtype=np.int64))
    model.history_ = history_from_json(meta.get("history"))
    _, _, torch_device = parse_device_args(accelerator=accelerator, devices=device, return_device="torch",
                                           validate_single_device=True)
    model.to_device(torch_device)
    model.module.eval()
    return model
