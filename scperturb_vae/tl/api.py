"""Tools in scanpy's style: train, embed, interpret and evaluate on an AnnData in a notebook.

Every function takes the AnnData first and its options as keywords, writes its results
into the AnnData (``obsm``, ``varm``, ``uns``) under a key (``key_added``), and works on
a copy with ``copy=True``::

    import scanpy as sc
    import scperturb_vae as sv

    model = sv.tl.fit(adata, model="svae+", perturbation_key="gene", n_latent=10)
    sc.pp.neighbors(adata, use_rep="X_svae")
    sc.tl.umap(adata)
    sv.pl.latents(adata, basis="umap")
    sv.tl.gene_effects(adata, model)
    table = sv.tl.enrich(adata, "h.all.v7.0.symbols.gmt")

The key of a fitted model defaults to its name: ``svae+`` -> ``"svae"``, ``svae`` ->
``"svae_l1"``, ``ivae`` -> ``"ivae"``, ``vae`` -> ``"vae"`` (:data:`DEFAULT_KEYS`).  Under
key ``K`` (written by :func:`fit` or :func:`embed`):

``adata.obsm["X_K"]``
    The posterior means, cells x latents (float32).
``adata.uns["K"]``
    ``model`` (``"svae+"``...), ``model_class``, ``obsm_key``, ``latent_names``,
    ``perturbation_key``, ``control_label``, ``layer`` and ``batch_key`` (when set),
    ``intervention_graph`` (DataFrame, perturbations x latents, values in [0, 1]),
    ``params`` (the settings and the model's hyperparameters), ``training`` (epochs,
    seconds, the last epoch's metrics; :func:`fit` only), ``versions``, ``source``
    (``"tl.fit"``, ``"tl.embed"``) and ``run_dir`` (:func:`embed` of a run folder); later
    ``gene_effects`` (:func:`gene_effects`), ``enrichment`` (:func:`enrich`) and
    ``recovery`` (:func:`recovery`).
``adata.varm["K_gene_effects"]``
    Genes x latents (DataFrame): :func:`scperturb_vae.pipelines.interpret.gene_effects`.

Everything written into ``uns`` is made of DataFrames, arrays, strings, numbers and
nested dicts of them (``None`` values are left out), so ``adata.write_h5ad`` keeps it.

The computations are the library's: the models (:data:`scperturb_vae.model.models.MODELS`),
:mod:`scperturb_vae.pipelines.interpret`, :mod:`scperturb_vae.tl.enrichment`, :mod:`scperturb_vae.tl.heldout`
and :mod:`scperturb_vae.pipelines.evaluate` (held-out likelihood), :mod:`scperturb_vae.tl.metrics`.
torch and scvi-tools are imported inside the functions, so ``import scperturb_vae.tl`` is
quick.
"""

from __future__ import annotations

import logging
import numbers
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scperturb_vae.errors import InputError
from scperturb_vae.get.fitted import GENE_EFFECTS_SUFFIX, effects_key, fitted_keys, resolve_key
from scperturb_vae.get.fitted import gene_effects as read_gene_effects
from scperturb_vae.get.fitted import graph as read_graph
from scperturb_vae.get.fitted import latent as read_latent
from scperturb_vae.io import package_versions
from scperturb_vae.model.registry import DEFAULT_KEYS
from scperturb_vae.model.registry import model_name as registry_model_name

logger = logging.getLogger("scperturb_vae")

__all__ = [
    "DEFAULT_KEYS",
    "GENE_EFFECTS_SUFFIX",
    "HeldoutResult",
    "default_key",
    "embed",
    "enrich",
    "fit",
    "fitted_keys",
    "gene_effects",
    "heldout_nll",
    "recovery",
]




# --------------------------------------------------------------------------- helpers
def _check_adata(adata, what: str = "adata") -> None:
    import anndata as ad

    if not isinstance(adata, ad.AnnData):
        raise InputError(f"{what} must be an AnnData, not {type(adata).__name__}")


def _check_key(key: str, what: str = "key_added") -> str:
    if not isinstance(key, str) or not key.strip() or "/" in key:
        raise InputError(f"{what} must be a non-empty string without '/', not {key!r}")
    return key


def _writable(obj):
    """``obj`` made of what ``write_h5ad`` stores in ``uns`` (``None`` entries dropped)."""
    if isinstance(obj, Mapping):
        return {str(k): _writable(v) for k, v in obj.items() if v is not None}
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
    return DEFAULT_KEYS[_model_name(model)]


def _model_name(model) -> str:
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
    _model_name(model)
    if not getattr(model, "is_trained_", True):
        raise InputError("the model is not trained yet; call model.train() or use tl.fit")
    return model, None


def _key_for_model(adata, model, key_added: str | None) -> str:
    """``key_added``, else the one fitted key of the model's class, else its default key."""
    if key_added is not None:
        return _check_key(key_added)
    cls = type(model).__name__
    same = [k for k in fitted_keys(adata) if str(adata.uns[k].get("model_class")) == cls]
    return same[0] if len(same) == 1 else default_key(model)


def _model_params(model) -> dict[str, Any]:
    init = getattr(model, "init_params_", {}) or {}
    return {**init.get("non_kwargs", {}), **init.get("kwargs", {}).get("module_kwargs", {})}


def _setup_value(model, name: str):
    return model.adata_manager.registry["setup_args"].get(name)


def _with_setup(model, adata, action: str):
    """Run ``action(adata)`` for ``model``; scvi-tools' refusals become one-line InputErrors."""
    try:
        return action(adata)
    except InputError:
        raise
    except (ValueError, KeyError) as err:
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"this AnnData cannot be used with the model ({text})") from None


def _store(adata, key: str, model, latent: np.ndarray, graph: pd.DataFrame, params: dict, extra: dict) -> None:
    name = _model_name(model)
    obsm_key = "X_" + key
    adata.obsm[obsm_key] = np.asarray(latent, dtype=np.float32)
    entry = {
        "model": name,
        "model_class": type(model).__name__,
        "obsm_key": obsm_key,
        "latent_names": [str(x) for x in model.latent_names],
        "perturbation_key": model.perturbation_key,
        "control_label": model.control_label,
        "layer": _setup_value(model, "layer"),
        "batch_key": _setup_value(model, "batch_key"),
        "intervention_graph": graph.astype(np.float64),
        "params": params,
        "versions": package_versions(),
        **extra,
    }
    adata.uns[key] = _writable(entry)


def _embed_arrays(model, adata):
    latent = _with_setup(model, adata, lambda a: model.get_latent_representation(a))
    graph = _with_setup(model, adata, lambda a: model.get_intervention_graph(a, latent=latent))
    return latent, graph


# --------------------------------------------------------------------------- fit
def _check_settings(model: str, n_latent, max_epochs, batch_size, lr, seed, likelihood) -> None:
    if model not in DEFAULT_KEYS:
        raise InputError(f"unknown model {model!r}; choose one of {', '.join(DEFAULT_KEYS)}")
    if isinstance(n_latent, bool) or not isinstance(n_latent, numbers.Integral) or n_latent < 1:
        raise InputError(f"n_latent must be a positive integer, not {n_latent!r}")
    if max_epochs is not None and (isinstance(max_epochs, bool) or not isinstance(max_epochs, numbers.Integral)
                                   or max_epochs < 1):
        raise InputError(f"max_epochs must be a positive integer or None, not {max_epochs!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 2:
        raise InputError(f"batch_size must be an integer >= 2, not {batch_size!r}")
    if not isinstance(lr, numbers.Real) or not np.isfinite(lr) or lr <= 0:
        raise InputError(f"lr must be a positive number, not {lr!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise InputError(f"seed must be a non-negative integer, not {seed!r}")
    if likelihood not in ("nb", "zinb", "poisson"):
        raise InputError(f"unknown likelihood {likelihood!r}; choose nb, zinb or poisson")


def _check_model_kwargs(cls, model: str, model_kwargs: Mapping) -> None:
    import inspect

    from scperturb_vae.model.models import _MODULE_OPTIONS

    params = inspect.signature(cls.__init__).parameters
    own = {n for n, p in params.items()
           if n not in ("self", "adata", "n_latent", "likelihood") and p.kind is not p.VAR_KEYWORD}
    unknown = sorted(set(model_kwargs) - own - set(_MODULE_OPTIONS))
    if unknown:
        raise InputError(
            f"unknown option(s) {', '.join(unknown)} for model {model!r}; "
            f"its options are {', '.join(sorted(own | set(_MODULE_OPTIONS)))}"
        )


def _count(indices) -> int:
    return 0 if indices is None else len(indices)


def _train(
    adata,
    *,
    model: str,
    perturbation_key,
    control_label,
    layer,
    batch_key,
    n_latent: int,
    max_epochs,
    batch_size: int,
    lr: float,
    likelihood: str,
    seed: int,
    min_cells: int,
    progress_bar: bool,
    accelerator: str,
    devices,
    model_kwargs: Mapping,
    train_kwargs: Mapping | None,
    allow_empty_genes: bool = False,
):
    """Set up ``adata`` for ``model``, train it; returns ``(model, training record)``."""
    import scvi

    from scperturb_vae.model.models import MODELS
    from scperturb_vae.pipelines.train import _final_metrics, _history_frame

    cls = MODELS[model]
    _check_model_kwargs(cls, model, model_kwargs)
    if batch_key is not None and batch_key not in adata.obs:
        raise InputError(f"batch column {batch_key!r} is not in adata.obs")
    scvi.settings.seed = int(seed)
    cls.setup_anndata(
        adata, perturbation_key=perturbation_key, control_label=control_label, layer=layer,
        batch_key=batch_key, min_cells=min_cells, allow_empty_genes=allow_empty_genes,
    )
    trained = cls(adata, n_latent=int(n_latent), likelihood=likelihood, **dict(model_kwargs))
    logger.info(str(trained._model_summary_string))
    start = time.perf_counter()
    trained.train(
        max_epochs=max_epochs, batch_size=int(batch_size), lr=float(lr), accelerator=accelerator,
        devices=devices, enable_progress_bar=progress_bar, **dict(train_kwargs or {}),
    )
    seconds = time.perf_counter() - start
    hist = _history_frame(trained.history)
    record = {
        "epochs": len(hist),
        "seconds": round(seconds, 3),
        "n_train_cells": _count(getattr(trained, "train_indices", None)),
        "n_validation_cells": _count(getattr(trained, "validation_indices", None)),
        "final_metrics": _final_metrics(hist),
    }
    return trained, record


def fit(
    adata,
    *,
    model: str = "svae+",
    perturbation_key: str | None = None,
    control_label: str | None = None,
    layer: str | None = None,
    batch_key: str | None = None,
    n_latent: int = 10,
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
    _check_adata(adata)
    _check_settings(model, n_latent, max_epochs, batch_size, lr, seed, likelihood)
    key = _check_key(key_added) if key_added is not None else DEFAULT_KEYS[model]
    if copy:
        adata = adata.copy()
    trained, record = _train(
        adata, model=model, perturbation_key=perturbation_key, control_label=control_label, layer=layer,
        batch_key=batch_key, n_latent=n_latent, max_epochs=max_epochs, batch_size=batch_size, lr=lr,
        likelihood=likelihood, seed=seed, min_cells=min_cells, progress_bar=progress_bar,
        accelerator=accelerator, devices=devices, model_kwargs=model_kwargs, train_kwargs=train_kwargs,
    )
    latent, graph = _embed_arrays(trained, adata)
    params = {
        "n_latent": int(n_latent), "max_epochs": record["epochs"], "batch_size": int(batch_size),
        "lr": float(lr), "likelihood": likelihood, "seed": int(seed), "min_cells": int(min_cells),
        "model_kwargs": dict(model_kwargs), "train_kwargs": dict(train_kwargs or {}),
        "init_params": _model_params(trained),
    }
    _store(adata, key, trained, latent, graph, params, {"training": record, "source": "tl.fit"})
    logger.info(f"tl.fit: {type(trained).__name__} trained for {record['epochs']} epochs; wrote "
                f"obsm['X_{key}'] and uns['{key}']")
    return (adata, trained) if copy else trained


# --------------------------------------------------------------------------- embed
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
        (:func:`scperturb_vae.pipelines.train.load_run`, which reads the input file named in its
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
    _check_adata(adata)
    trained, run_dir = as_model(model)
    key = _key_for_model(adata, trained, key_added)
    if copy:
        adata = adata.copy()
    latent, graph = _embed_arrays(trained, adata)
    params: dict[str, Any] = {"init_params": _model_params(trained)}
    extra: dict[str, Any] = {"source": "tl.embed"}
    if run_dir is not None:
        from scperturb_vae.model.runs import read_run_summary

        settings = read_run_summary(run_dir).get("settings", {})
        params["run_settings"] = {k: v for k, v in settings.items() if k not in ("out", "overwrite")}
        extra["run_dir"] = run_dir
    _store(adata, key, trained, latent, graph, params, extra)
    return adata if copy else None


# --------------------------------------------------------------------------- interpretation
def gene_effects(
    adata,
    model,
    *,
    key_added: str | None = None,
    n_cells: int = 2000,
    seed: int = 0,
    batch_size: int = 256,
    copy: bool = False,
):
    """The change of each gene's decoded log expression per standard deviation of each latent.

    :func:`scperturb_vae.pipelines.interpret.gene_effects` (see there for the definition) over a
    seeded sample of ``n_cells`` cells of ``adata``.

    Parameters
    ----------
    adata
        The cells to average over, with the model's genes.
    model
        A trained model or a run folder.
    key_added
        The key (default: the key of a model of the same class in ``adata``, else
        :data:`DEFAULT_KEYS`).
    n_cells, seed, batch_size
        Cells sampled (at most), the seed of the sample, cells decoded at once.
    copy
        Work on a copy of ``adata`` and return it with the table.

    Returns
    -------
    pandas.DataFrame, or (adata copy, DataFrame) with ``copy=True``
        Latents x genes, as :func:`scperturb_vae.pipelines.interpret.gene_effects` (the transpose of
        the ``varm`` entry; ``attrs["latent_sd"]`` and ``attrs["n_cells"]``), ready for
        :func:`scperturb_vae.tl.enrichment.enrich_latents`.

    Writes
    ------
    ``adata.varm[key + "_gene_effects"]``
        Genes x latents DataFrame (columns: the latent names).
    ``adata.uns[key]["gene_effects"]``
        ``n_cells`` (used), ``seed``, ``latent_sd`` (latent -> standard deviation of its
        posterior means over the sampled cells).
    """
    from scperturb_vae.pipelines.interpret import gene_effects as _gene_effects

    _check_adata(adata)
    trained, _ = as_model(model)
    if isinstance(n_cells, bool) or not isinstance(n_cells, numbers.Integral) or n_cells < 1:
        raise InputError(f"n_cells must be a positive integer, not {n_cells!r}")
    key = _key_for_model(adata, trained, key_added)
    if copy:
        adata = adata.copy()
    effects = _with_setup(
        trained, adata, lambda a: _gene_effects(trained, a, n_cells=int(n_cells), seed=int(seed), batch_size=batch_size)
    )
    table = effects.T.copy()
    table.index = pd.Index(adata.var_names, name=None)
    table.columns = pd.Index([str(c) for c in effects.index], name=None)
    adata.varm[key + GENE_EFFECTS_SUFFIX] = table
    entry = adata.uns.get(key)
    if not isinstance(entry, Mapping):
        entry = {}
    entry = dict(entry)
    entry["gene_effects"] = _writable({
        "n_cells": effects.attrs["n_cells"], "seed": int(seed),
        "latent_sd": {str(k): float(v) for k, v in effects.attrs["latent_sd"].items()},
    })
    adata.uns[key] = entry
    return (adata, effects) if copy else effects


def _gene_set_sources(gene_sets, organism) -> dict[str, dict[str, list[str]]]:
    from scperturb_vae.data.genesets import load_gene_sets

    if isinstance(gene_sets, (str, os.PathLike)):
        return load_gene_sets(gene_sets, organism=organism)
    if isinstance(gene_sets, Mapping):
        if not gene_sets:
            raise InputError("gene_sets is empty")
        values = list(gene_sets.values())
        if all(isinstance(v, Mapping) for v in values):
            sources = {str(s): dict(v) for s, v in gene_sets.items()}
        elif not any(isinstance(v, Mapping) for v in values):
            sources = {"gene_sets": dict(gene_sets)}
        else:
            raise InputError("gene_sets mixes sets and sources; give {set: genes} or {source: {set: genes}}")
        for source, sets in sources.items():
            for name, genes in sets.items():
                if isinstance(genes, str) or not isinstance(genes, (Sequence, np.ndarray, set, frozenset)):
                    raise InputError(f"gene set {name!r} of {source!r} must be a list of genes, "
                                     f"not {type(genes).__name__}")
            sources[source] = {str(n): [str(g) for g in genes] for n, genes in sets.items()}
        return sources
    if isinstance(gene_sets, Sequence) and gene_sets and all(isinstance(p, (str, os.PathLike)) for p in gene_sets):
        return load_gene_sets(list(gene_sets), organism=organism)
    raise InputError("gene_sets must be a GMT/CORUM file, a list of them, or a dict {set name: genes}")


def enrich(
    adata,
    gene_sets,
    *,
    key: str | None = None,
    top_n: int = 50,
    min_size: int = 5,
    max_size: int = 500,
    tests: Sequence[str] = ("ora", "rank"),
    directions: Sequence[str] = ("up", "down", "any"),
    organism: str | None = "Human",
    store: bool = True,
) -> pd.DataFrame:
    """Gene-set enrichment of each latent's gene effects (run :func:`gene_effects` first).

    :func:`scperturb_vae.tl.enrichment.enrich_latents` on ``adata.varm[key + "_gene_effects"]``:
    over-representation among each latent's ``top_n`` genes and rank-sum tests, for the
    genes it raises (``up``), lowers (``down``) or moves either way (``any``), with the FDR
    per latent, source and test.

    Parameters
    ----------
    adata
        An AnnData with gene effects.
    gene_sets
        A GMT file or CORUM table (:func:`scperturb_vae.tl.enrichment.read_gene_sets`), a list
        of them (each file a source named by its stem), a dict ``{set name: genes}`` (one
        source, ``"gene_sets"``), or a dict ``{source: {set name: genes}}``.
    key
        Whose gene effects (default: the only ones in ``adata.varm``).
    top_n, min_size, max_size, tests, directions
        As :func:`scperturb_vae.tl.enrichment.enrich_latents`.
    organism
        Organism kept from CORUM tables (``None``: all).
    store
        Write the table into ``adata.uns``.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`scperturb_vae.tl.enrichment.ENRICHMENT_COLUMNS`, sorted by latent then
        FDR; ``attrs["universe"]`` and ``attrs["n_sets"]`` per source.

    Writes
    ------
    ``adata.uns[key]["enrichment"]``
        The table (with ``store``).
    ``adata.uns[key]["enrichment_params"]``
        ``top_n``, ``min_size``, ``max_size``, ``tests``, ``directions``, and per source the
        ``universe`` size and the number of sets tested (``n_sets``).
    """
    from scperturb_vae.tl.enrichment import enrich_latents

    _check_adata(adata)
    key = effects_key(adata, key)
    effects = read_gene_effects(adata, key)
    sources = _gene_set_sources(gene_sets, organism)
    table = enrich_latents(effects, sources, top_n=top_n, min_size=min_size, max_size=max_size,
                           tests=tests, directions=directions)
    if store:
        entry = dict(adata.uns.get(key, {}) if isinstance(adata.uns.get(key), Mapping) else {})
        entry["enrichment"] = table.reset_index(drop=True).copy()
        entry["enrichment_params"] = _writable({
            "top_n": top_n, "min_size": min_size, "max_size": max_size, "tests": list(tests),
            "directions": list(directions), "universe": dict(table.attrs.get("universe", {})),
            "n_sets": dict(table.attrs.get("n_sets", {})),
        })
        adata.uns[key] = entry
    return table


def recovery(adata, *, key: str | None = None, truth_key: str = "z_true") -> dict[str, Any]:
    """Recovery of a simulation's true latents and graph by a fitted model.

    :func:`scperturb_vae.tl.metrics.recovery_summary` of ``adata.obsm[truth_key]`` and the
    true graph of ``adata.uns["simulation"]``
    (:func:`scperturb_vae.data.simulate.graph_from_adata`) against the model's latents
    (``obsm["X_" + key]``) and intervention graph (``uns[key]["intervention_graph"]``).

    Returns
    -------
    dict
        ``mcc_pearson``, ``mcc_spearman``, ``r2``, ``mig``, ``n_matched`` and the graph's
        ``graph_precision``, ``graph_recall``, ``graph_f1``, ``graph_tp``, ``graph_fp``,
        ``graph_fn``, ``graph_auroc``, ``graph_average_precision``,
        ``graph_n_perturbations`` (``None`` where undefined).

    Writes
    ------
    ``adata.uns[key]["recovery"]``
        The dict (``None`` values left out).

    Raises
    ------
    InputError
        Without a simulation's truth, or without a fitted model.
    """
    from scperturb_vae.tl.metrics import recovery_summary
    from scperturb_vae.data.simulate import graph_from_adata

    _check_adata(adata)
    key = resolve_key(adata, key, "tl.recovery")
    if truth_key not in adata.obsm or "simulation" not in adata.uns:
        raise InputError(
            f"adata has no simulation truth (obsm[{truth_key!r}] and uns['simulation']); "
            "tl.recovery needs a simulated screen (scperturb_vae.simulate_screen)"
        )
    true_graph = graph_from_adata(adata)
    learned_graph = read_graph(adata, key)
    if not learned_graph.index.isin(true_graph.index).any():
        raise InputError(f"none of the perturbations of uns[{key!r}]'s graph is in the simulation's graph")
    result = recovery_summary(np.asarray(adata.obsm[truth_key], dtype=np.float64), read_latent(adata, key),
                              true_graph, learned_graph)
    entry = dict(adata.uns[key])
    entry["recovery"] = _writable(result)
    adata.uns[key] = entry
    return result


# --------------------------------------------------------------------------- held-out evaluation
@dataclass
class HeldoutResult:
    """What :func:`heldout_nll` returns (all in memory)."""

    #: ``model``, ``setting`` (``heldout_adapted``, ``heldout_zeroshot``, ``heldin``), ``nll``
    #: (mean per-cell NLL, nats), ``stderr`` (its Monte Carlo standard error), ``n_cells``
    table: pd.DataFrame
    #: the same per held-out perturbation (``perturbation`` column; held-out settings only)
    per_perturbation: pd.DataFrame
    #: ``model``, ``adaptation_cells_per_perturbation``, ``n_adaptation_cells``, ``nll``,
    #: ``stderr``, ``n_cells``: the few-shot curve
    fewshot: pd.DataFrame
    #: the held-out perturbations' adapted graph rows (``model`` column first; models with
    #: a graph only), or ``None``
    adapted_graph: pd.DataFrame | None
    #: cell -> ``train``, ``validation``, ``heldout_adapt`` or ``heldout_eval``
    split: pd.Series
    #: ``name``, ``source``, ``perturbations``
    holdout: dict
    #: model name -> the model trained on the ``train`` cells
    models: dict = field(repr=False)
    #: per model: the adaptation record, the new perturbations, timings
    info: dict = field(default_factory=dict, repr=False)


def _check_fewshot(fewshot) -> list:
    from scperturb_vae.pipelines.evaluate import parse_fewshot

    if isinstance(fewshot, (str, numbers.Integral)):
        fewshot = [fewshot]
    items = list(fewshot)
    for item in items:
        ok = (isinstance(item, str) and item.strip().lower() == "all") or (
            isinstance(item, numbers.Integral) and not isinstance(item, bool) and item >= 0)
        if not ok:
            raise InputError(f"fewshot takes cell numbers >= 0 and 'all' (e.g. (0, 10, 50, 'all')), not {item!r}")
    return parse_fewshot(items)


def heldout_nll(
    adata,
    *,
    holdout_perturbations: Sequence[str] | str | None = None,
    holdout: str | None = None,
    clusters: str | os.PathLike | None = None,
    n_clusters: int = 8,
    models: Sequence[str] = ("svae+", "vae"),
    perturbation_key: str | None = None,
    control_label: str | None = None,
    layer: str | None = None,
    batch_key: str | None = None,
    n_latent: int = 10,
    max_epochs: int | None = None,
    batch_size: int = 128,
    lr: float = 1e-3,
    likelihood: str = "nb",
    seed: int = 0,
    min_cells: int = 20,
    adapt_fraction: float = 0.5,
    n_importance: int = 1000,
    fewshot: Sequence = (0, 10, 50, "all"),
    adapt_steps: int = 500,
    heldin_cells: int = 1000,
    model_kwargs: Mapping[str, Mapping] | None = None,
    key_added: str | None = None,
    progress_bar: bool = False,
    accelerator: str = "auto",
    devices: int | str = "auto",
) -> HeldoutResult:
    """Held-out-perturbation likelihood of several models, in memory (``scvae evaluate``'s numbers).

    1. The held-out perturbations (``holdout_perturbations``, or the cluster ``holdout`` of
       a cluster table or of clusters computed from the data;
       :func:`scperturb_vae.tl.heldout.resolve_holdout`) and the split
       (:func:`scperturb_vae.tl.heldout.make_split`): every cell of a held-out perturbation is
       held out, a seeded ``adapt_fraction`` of each held-out label adapts, the rest
       evaluates; all other cells train.
    2. Each model is trained (as :func:`fit`) on the training cells.
    3. :mod:`scperturb_vae.pipelines.evaluate`'s scoring of each model: ``heldout_zeroshot`` (the
       held-out perturbations unknown to the prior), ``heldout_adapted`` (only their new
       prior rows fitted on the adaptation cells, networks frozen), ``heldin`` (the
       validation cells of the training perturbations), importance-sampled NLL per cell,
       and the few-shot curve (``fewshot`` adaptation cells per held-out perturbation).

    Nothing is written to disk.  The user's ``adata`` is not modified, unless
    ``key_added`` is given.

    Parameters
    ----------
    adata
        The screen (raw counts).
    holdout_perturbations
        Perturbations to hold out (a list, or one comma-separated string).  For a screen
        made by :func:`scperturb_vae.data.simulate.simulate_screen`, the ones it marks held out
        are ``adata.uns["simulation"]["heldout_perturbations"]``.
    holdout, clusters, n_clusters
        Or a cluster name, of the cluster table ``clusters`` or of ``n_clusters`` clusters
        computed from the data.
    models
        Model names (``"svae+"``, ``"svae"``, ``"ivae"``, ``"vae"``), each trained once.
    perturbation_key, control_label, layer, batch_key, n_latent, max_epochs, batch_size, lr, likelihood, seed, min_cells
        As :func:`fit` (the same for every model).
    adapt_fraction
        Fraction of each held-out label's cells that adapt.
    n_importance
        Importance samples per cell.
    fewshot
        Adaptation cells per held-out perturbation on the few-shot curve (numbers and
        ``"all"``).
    adapt_steps
        Adam steps of the adaptation.
    heldin_cells
        Validation cells scored for ``heldin`` (at most).
    model_kwargs
        Model name -> options of that model class.
    key_added
        When given: ``adata.uns[key_added]`` gets ``table``, ``per_perturbation``,
        ``fewshot``, ``adapted_graph`` (when any) and ``holdout``; ``adata.obs[key_added +
        "_part"]`` the split.
    progress_bar, accelerator, devices
        As :func:`fit`.

    Returns
    -------
    HeldoutResult
    """
    from scperturb_vae.data.validate import validate_perturbation_adata
    from scperturb_vae.pipelines.evaluate import EvaluateSettings, _evaluate_model, _Evaluated
    from scperturb_vae.tl.heldout import make_split, resolve_holdout

    _check_adata(adata)
    models = [models] if isinstance(models, str) else list(models)
    if not models:
        raise InputError("no model to evaluate: give models=('svae+', 'vae') for example")
    if len(set(models)) != len(models):
        raise InputError(f"a model is listed twice in models={tuple(models)}")
    for name in models:
        _check_settings(name, n_latent, max_epochs, batch_size, lr, seed, likelihood)
    for name, value in (("n_importance", n_importance), ("adapt_steps", adapt_steps)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise InputError(f"{name} must be a positive integer, not {value!r}")
    if isinstance(heldin_cells, bool) or not isinstance(heldin_cells, numbers.Integral) or heldin_cells < 0:
        raise InputError(f"heldin_cells must be a non-negative integer, not {heldin_cells!r}")
    if not isinstance(adapt_fraction, numbers.Real) or not 0.0 < adapt_fraction < 1.0:
        raise InputError(f"adapt_fraction must be between 0 and 1, not {adapt_fraction!r}")
    shots = _check_fewshot(fewshot)
    model_kwargs = {str(k): dict(v) for k, v in (model_kwargs or {}).items()}
    stray = sorted(set(model_kwargs) - set(models))
    if stray:
        raise InputError(f"model_kwargs names model(s) {', '.join(stray)} that are not in models={tuple(models)}")
    if key_added is not None:
        _check_key(key_added)
    if holdout_perturbations is not None and not isinstance(holdout_perturbations, str):
        holdout_perturbations = [str(p) for p in np.asarray(holdout_perturbations, dtype=object).ravel()]

    data = validate_perturbation_adata(adata, perturbation_key=perturbation_key, control_label=control_label,
                                       layer=layer, min_cells=min_cells)
    spec = resolve_holdout(data, holdout=holdout, holdout_perturbations=holdout_perturbations,
                           clusters=None if clusters is None else str(clusters), n_clusters=n_clusters)
    split = make_split(adata.obs[data.perturbation_key], data.control_label, spec.perturbations,
                       adapt_fraction=float(adapt_fraction), seed=int(seed))
    n_train = int((split == "train").sum())
    logger.info(f"holding out {spec.name!r} ({len(spec.perturbations)} perturbations): "
                f"{int((split == 'heldout_adapt').sum())} adaptation and {int((split == 'heldout_eval').sum())} "
                f"evaluation cells; {n_train} cells train")
    settings = EvaluateSettings(
        out="", models=list(models), holdout=holdout, holdout_perturbations=list(spec.perturbations),
        n_latent=int(n_latent), seed=int(seed), adapt_fraction=float(adapt_fraction),
        n_importance=int(n_importance), fewshot=shots, adapt_steps=int(adapt_steps), heldin_cells=int(heldin_cells),
    )

    records, per_pert, curves, graphs, infos, trained_models = [], [], [], [], {}, {}
    parts = split.copy()
    for i, name in enumerate(models):
        logger.info(f"[{i + 1}/{len(models)}] training {name} on {n_train} cells")
        train_adata = adata[(split == "train").to_numpy()].copy()
        trained, record = _train(
            train_adata, model=name, perturbation_key=data.perturbation_key, control_label=data.control_label,
            layer=layer, batch_key=batch_key, n_latent=n_latent, max_epochs=max_epochs, batch_size=batch_size,
            lr=lr, likelihood=likelihood, seed=seed, min_cells=min_cells, progress_bar=progress_bar,
            accelerator=accelerator, devices=devices, model_kwargs=model_kwargs.get(name, {}), train_kwargs=None,
            allow_empty_genes=True,
        )
        if i == 0:
            val = getattr(trained, "validation_indices", None)
            if val is not None and len(val):
                parts.loc[train_adata.obs_names[np.asarray(val)]] = "validation"
        start = time.perf_counter()
        r, p, f, g, info = _evaluate_model(_Evaluated(name, trained, None), data, spec, split, settings)
        info["training"] = record
        info["evaluate_seconds"] = round(time.perf_counter() - start, 2)
        records += r
        per_pert += p
        curves += f
        if g is not None:
            graphs.append(g)
        infos[name] = info
        trained_models[name] = trained

    # rows in model order, then SETTINGS_ORDER (as _evaluate_model returns them)
    table = pd.DataFrame(records, columns=["model", "setting", "nll", "stderr", "n_cells"])
    per_pert = pd.DataFrame(per_pert, columns=["model", "setting", "perturbation", "nll", "stderr", "n_cells"])
    curves = pd.DataFrame(curves, columns=["model", "adaptation_cells_per_perturbation", "n_adaptation_cells",
                                           "nll", "stderr", "n_cells"])
    adapted = pd.concat(graphs) if graphs else None
    result = HeldoutResult(table, per_pert, curves, adapted, parts.rename("part"), spec.to_json(), trained_models,
                           infos)
    if key_added is not None:
        entry = {
            "table": table,
            "per_perturbation": per_pert,
            "fewshot": curves.assign(adaptation_cells_per_perturbation=curves["adaptation_cells_per_perturbation"]
                                     .astype(str)),
            "holdout": spec.to_json(),
        }
        if adapted is not None:
            entry["adapted_graph"] = adapted.rename_axis("perturbation").reset_index()
        adata.uns[key_added] = _writable(entry)
        adata.obs[key_added + "_part"] = pd.Categorical(result.split.reindex(adata.obs_names).to_numpy(),
                                                        categories=["train", "validation", "heldout_adapt",
                                                                    "heldout_eval"])
    return result
