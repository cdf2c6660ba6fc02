"""Train and embed: the one training path (:func:`train_model`, also behind ``scvae train``,
``scvae evaluate`` and ``scvae benchmark``), and the notebook functions :func:`fit` and
:func:`embed`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from scperturb_vae.errors import InputError
from scperturb_vae.logs import on_terminal
from scperturb_vae.model.registry import DEFAULT_KEYS, DEFAULT_N_LATENT
from scperturb_vae.tl.checks import check_adata, check_key, check_model_kwargs, check_settings
from scperturb_vae.tl.store import as_model, embed_arrays, key_for_model, model_params, store

logger = logging.getLogger("scperturb_vae")


def _count(indices) -> int:
    return 0 if indices is None else len(indices)


def build_model(
    adata,
    *,
    model: str,
    perturbation_key,
    control_label,
    layer,
    batch_key,
    n_latent: int,
    likelihood: str,
    seed: int,
    min_cells: int,
    model_kwargs: Mapping,
    allow_empty_genes: bool = False,
):
    """Seed scvi-tools, set ``adata`` up for the model ``model`` and build it (untrained)."""
    import scvi

    from scperturb_vae.model.registry import model_class

    cls = model_class(model)
    check_model_kwargs(cls, model, model_kwargs)
    if batch_key is not None and batch_key not in adata.obs:
        raise InputError(f"batch column {batch_key!r} is not in adata.obs")
    scvi.settings.seed = int(seed)
    cls.setup_anndata(
        adata, perturbation_key=perturbation_key, control_label=control_label, layer=layer,
        batch_key=batch_key, min_cells=min_cells, allow_empty_genes=allow_empty_genes,
    )
    built = cls(adata, n_latent=int(n_latent), likelihood=likelihood, **dict(model_kwargs))
    logger.info(str(built._model_summary_string))
    return built


def train_model(
    adata,
    *,
    max_epochs,
    batch_size: int,
    lr: float,
    progress_bar: bool,
    accelerator: str,
    devices,
    train_kwargs: Mapping | None = None,
    **build,
):
    """The one training path (``tl.fit``, ``tl.heldout_nll``, ``scvae train``, ``evaluate``, ``benchmark``).

    Builds the model as :func:`build_model` (``build``: its keywords), trains it with these
    settings (``train_kwargs``: more of ``model.train``'s, e.g. Lightning callbacks), and
    returns ``(model, seconds of training)``.  With ``progress_bar`` on a file or pipe (not a terminal
    or notebook), :class:`~scperturb_vae.train.progress.ProgressLines` writes a line every 10
    epochs or minute instead of the bar.
    """
    trained = build_model(adata, **build)
    train_kwargs = dict(train_kwargs or {})
    if progress_bar and not on_terminal():
        # a file or pipe: plain lines every few epochs instead of a bar's \r fragments
        from scperturb_vae.train.progress import ProgressLines

        train_kwargs["callbacks"] = [*train_kwargs.get("callbacks", []), ProgressLines()]
        progress_bar = False
    start = time.perf_counter()
    trained.train(
        max_epochs=max_epochs, batch_size=int(batch_size), lr=float(lr), accelerator=accelerator,
        devices=devices, enable_progress_bar=progress_bar, **train_kwargs,
    )
    return trained, time.perf_counter() - start


def training_record(trained, seconds: float) -> dict[str, Any]:
    """Epochs (and the one early stopping stopped after), seconds, cells and the last epoch's metrics."""
    hist = history_frame(trained.history)
    return {
        "epochs": len(hist),
        "stopped_early_after_epoch": getattr(trained, "stopped_epoch", None),
        "seconds": round(seconds, 3),
        "n_train_cells": _count(getattr(trained, "train_indices", None)),
        "n_validation_cells": _count(getattr(trained, "validation_indices", None)),
        "final_metrics": final_metrics(hist),
    }


def fit(
    adata,
    *,
    model: str = "svae+",
    perturbation_key: str | None = None,
    control_label: str | None = None,
    layer: str | None = None,
    batch_key: str | None = None,
    n_latent: int = DEFAULT_N_LATENT,
    max_epochs: int | None = None,
    batch_size: int = 128,
    lr: float = 1e-3,
    likelihood: str = "nb",
    seed: int = 0,
    min_cells: int = 20,
    key_added: str | None = None,
    copy: bool = False,
    progress_bar: bool = False,
    accelerator: str = "auto",
    devices: int | str = "auto",
    train_kwargs: Mapping | None = None,
    **model_kwargs,
):
    """Set up and train a model on ``adata``; write its latents and intervention graph.

    ``scvi.settings.seed = seed`` is set before the model is built, so a seed fixes the
    numbers (on one machine and torch version).  The data are validated first (raw counts,
    the perturbation column, the control label; see
    :func:`scperturb_vae.data.validate.validate_perturbation_adata`), and registered with the model
    (scvi-tools adds its ``_scvi_*`` columns to ``obs``).

    Parameters
    ----------
    adata
        The screen: raw counts in ``X`` (or ``layer``), one perturbation label per cell.
    model
        ``"svae+"`` (:class:`~scperturb_vae.model.models.SVAEPlus`), ``"svae"``, ``"ivae"`` or
        ``"vae"``.
    perturbation_key, control_label
        The ``obs`` column of the labels and the control's label (detected when ``None``).
    layer
        The layer of raw counts (default ``X``).
    batch_key
        An ``obs`` column of batches, given to the decoder.
    n_latent
        Number of latents.
    max_epochs
        Training epochs (scvi-tools' heuristic from the number of cells when ``None``).
    batch_size, lr
        Minibatch size and learning rate.
    likelihood
        ``"nb"``, ``"zinb"`` or ``"poisson"``.
    seed
        The seed of everything random (initialisation, the validation split, minibatches).
    min_cells
        Perturbations with fewer cells are reported (a warning), not removed.
    key_added
        The key (default :data:`DEFAULT_KEYS` of ``model``).
    copy
        Work on a copy of ``adata`` and return it with the model.
    progress_bar
        Show scvi-tools' progress bar.
    accelerator, devices
        Lightning's device options (``"auto"`` uses a GPU when there is one).
    train_kwargs
        Further arguments of the model's ``train`` (``lr_prior``, ``n_epochs_kl_warmup``,
        ``early_stopping``, ``train_size``...).
    **model_kwargs
        Options of the model class (``beta_k`` of sVAE+, ``n_hidden``, ``n_layers``,
        ``encode_perturbation``...).

    Returns
    -------
    model, or (adata copy, model) with ``copy=True``.

    Writes
    ------
    ``adata.obsm["X_" + key]``
        Posterior means (cells x latents, float32).
    ``adata.uns[key]``
        ``model``, ``model_class``, ``obsm_key``, ``latent_names``, ``perturbation_key``,
        ``control_label``, ``layer`` / ``batch_key`` (when set), ``intervention_graph``
        (DataFrame, perturbations x latents), ``params`` (these settings, ``model_kwargs``
        and ``init_params``: every hyperparameter of the model), ``training`` (``epochs``,
        ``seconds``, ``n_train_cells``, ``n_validation_cells``, ``final_metrics``),
        ``versions``, ``source = "tl.fit"``.

    Raises
    ------
    InputError
        Not an AnnData, an unknown model or option, bad settings, or data the models
        cannot use (see :func:`scperturb_vae.data.validate.validate_perturbation_adata`).
    """
    check_adata(adata)
    check_settings(model=model, n_latent=n_latent, max_epochs=max_epochs, batch_size=batch_size, lr=lr, seed=seed,
                   likelihood=likelihood)
    key = check_key(key_added) if key_added is not None else DEFAULT_KEYS[model]
    if copy:
        adata = adata.copy()
    trained, seconds = train_model(
        adata, model=model, perturbation_key=perturbation_key, control_label=control_label, layer=layer,
        batch_key=batch_key, n_latent=n_latent, max_epochs=max_epochs, batch_size=batch_size, lr=lr,
        likelihood=likelihood, seed=seed, min_cells=min_cells, progress_bar=progress_bar,
        accelerator=accelerator, devices=devices, model_kwargs=model_kwargs, train_kwargs=train_kwargs,
    )
    record = training_record(trained, seconds)
    latent, graph, shifts = embed_arrays(trained, adata)
    planned = max_epochs
    if planned is None:  # the epoch rule model.train applied
        from scvi.model._utils import get_max_epochs_heuristic

        planned = get_max_epochs_heuristic(trained.adata.n_obs)
    params = {
        "n_latent": int(n_latent), "max_epochs": int(planned), "batch_size": int(batch_size),
        "lr": float(lr), "likelihood": likelihood, "seed": int(seed), "min_cells": int(min_cells),
        "model_kwargs": dict(model_kwargs), "train_kwargs": dict(train_kwargs or {}),
        "init_params": model_params(trained),
    }
    store(adata, key, trained, latent, graph, params, {"training": record, "source": "tl.fit"}, shifts)
    logger.info(f"tl.fit: {type(trained).__name__} trained for {record['epochs']} epochs; wrote "
                f"obsm['X_{key}'] and uns['{key}']")
    return (adata, trained) if copy else trained


def embed(adata, model, *, key_added: str | None = None, copy: bool = False):
    """Write the latents and intervention graph of an already trained model for ``adata``.

    Parameters
    ----------
    adata
        Cells with the model's genes and perturbation column (registered with the model,
        or set up from its registry on the fly; perturbations unknown to the model are
        refused).
    model
        A trained model, or a run folder made by ``scvae train``
        (:func:`scperturb_vae.model.runs.load_run`, which reads the input file named in its
        ``run.json``).
    key_added
        The key (default: the key of a model of the same class already in ``adata``,
        else :data:`DEFAULT_KEYS`).
    copy
        Work on a copy of ``adata`` and return it.

    Returns
    -------
    None, or the AnnData copy with ``copy=True``.

    Writes
    ------
    ``adata.obsm["X_" + key]``, ``adata.uns[key]``
        As :func:`fit` (without ``training``; ``params`` holds the model's
        ``init_params``, and a run folder's settings as ``run_settings``), with
        ``source = "tl.embed"`` and ``run_dir`` for a run folder.  The graph of a VAE
        (which has no perturbation parameters) is computed from these cells.
    """
    check_adata(adata)
    trained, run_dir = as_model(model)
    key = key_for_model(adata, trained, key_added)
    if copy:
        adata = adata.copy()
    latent, graph, shifts = embed_arrays(trained, adata)
    params: dict[str, Any] = {"init_params": model_params(trained)}
    extra: dict[str, Any] = {"source": "tl.embed"}
    if run_dir is not None:
        from scperturb_vae.model.runs import read_run_summary

        settings = read_run_summary(run_dir).get("settings", {})
        params["run_settings"] = {k: v for k, v in settings.items() if k not in ("out", "overwrite")}
        extra["run_dir"] = run_dir
    store(adata, key, trained, latent, graph, params, extra, shifts)
    return adata if copy else None


def history_frame(history: dict[str, pd.DataFrame]) -> pd.DataFrame:
    frames = [df for df in history.values() if isinstance(df, pd.DataFrame) and len(df)]
    if not frames:
        return pd.DataFrame(index=pd.Index([], name="epoch"))
    hist = pd.concat(frames, axis=1)
    hist.index.name = "epoch"
    return hist


def final_metrics(hist: pd.DataFrame) -> dict[str, float]:
    """The last epoch's finite metrics (JSON has no NaN)."""
    if not len(hist):
        return {}
    last = pd.to_numeric(hist.iloc[-1], errors="coerce")
    return {k: float(v) for k, v in last.items() if np.isfinite(v)}
