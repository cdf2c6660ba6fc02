"""The held-out evaluation: score models on perturbations left out of training (zero-shot,
after adapting only their prior parameters, few-shot curve, held-in), used by
:func:`heldout_nll` in notebooks and by ``scvae evaluate``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from scperturb_vae.data.labels import COMBINATION_SEP, split_combination
from scperturb_vae.errors import InputError
from scperturb_vae.model.registry import DEFAULT_N_LATENT
from scperturb_vae.tl.checks import check_adata, check_fewshot, check_key, check_settings
from scperturb_vae.tl.fit import train_model, training_record
from scperturb_vae.tl.store import writable

logger = logging.getLogger("scperturb_vae")


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
    n_latent: int = DEFAULT_N_LATENT,
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
       :func:`scperturb_vae.tl.holdout.resolve_holdout`) and the split
       (:func:`scperturb_vae.tl.holdout.make_split`): every cell of a held-out perturbation is
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
    from scperturb_vae.tl.holdout import holdout_split

    check_adata(adata)
    models, shots, model_kwargs = _check_heldout_args(
        models, n_latent=n_latent, max_epochs=max_epochs, batch_size=batch_size, lr=lr, seed=seed,
        likelihood=likelihood, n_importance=n_importance, adapt_steps=adapt_steps, heldin_cells=heldin_cells,
        adapt_fraction=adapt_fraction, fewshot=fewshot, model_kwargs=model_kwargs, key_added=key_added,
    )
    if holdout_perturbations is not None and not isinstance(holdout_perturbations, str):
        holdout_perturbations = [str(p) for p in np.asarray(holdout_perturbations, dtype=object).ravel()]

    data = validate_perturbation_adata(adata, perturbation_key=perturbation_key, control_label=control_label,
                                       layer=layer, min_cells=min_cells)
    spec, split = holdout_split(data, holdout=holdout, holdout_perturbations=holdout_perturbations,
                                clusters=None if clusters is None else str(clusters), n_clusters=n_clusters,
                                adapt_fraction=float(adapt_fraction), seed=int(seed))
    n_train = int((split == "train").sum())
    scoring = Scoring(seed=int(seed), n_importance=int(n_importance), fewshot=shots, adapt_steps=int(adapt_steps),
                      heldin_cells=int(heldin_cells))

    scores, infos, trained_models = [], {}, {}
    parts = split.copy()
    for i, name in enumerate(models):
        logger.info(f"[{i + 1}/{len(models)}] training {name} on {n_train} cells")
        train_adata = adata[(split == "train").to_numpy()].copy()
        trained, seconds = train_model(
            train_adata, model=name, perturbation_key=data.perturbation_key, control_label=data.control_label,
            layer=layer, batch_key=batch_key, n_latent=n_latent, max_epochs=max_epochs, batch_size=batch_size,
            lr=lr, likelihood=likelihood, seed=seed, min_cells=min_cells, progress_bar=progress_bar,
            accelerator=accelerator, devices=devices, model_kwargs=model_kwargs.get(name, {}), train_kwargs=None,
            allow_empty_genes=True,
        )
        record = training_record(trained, seconds)
        if i == 0:
            val = getattr(trained, "validation_indices", None)
            if val is not None and len(val):
                parts.loc[train_adata.obs_names[np.asarray(val)]] = "validation"
        start = time.perf_counter()
        result = evaluate_model(name, trained, data, spec, split, scoring)
        infos[name] = {**result.info, "training": record, "evaluate_seconds": round(time.perf_counter() - start, 2)}
        scores.append(result)
        trained_models[name] = trained

    tables = assemble_tables(scores)
    result = HeldoutResult(tables.table, tables.per_perturbation, tables.fewshot, tables.adapted_graph,
                           parts.rename("part"), spec.to_json(), trained_models, infos)
    if key_added is not None:
        _store_heldout(adata, key_added, result)
    return result


def _check_heldout_args(models, *, fewshot, model_kwargs, key_added, **settings):
    """The model names, the few-shot sizes and the per-model options, checked."""
    models = [models] if isinstance(models, str) else list(models)
    if not models:
        raise InputError("no model to evaluate: give models=('svae+', 'vae') for example")
    if len(set(models)) != len(models):
        raise InputError(f"a model is listed twice in models={tuple(models)}")
    for name in models:
        check_settings(model=name, **settings)
    shots = check_fewshot(fewshot)
    model_kwargs = {str(k): dict(v) for k, v in (model_kwargs or {}).items()}
    stray = sorted(set(model_kwargs) - set(models))
    if stray:
        raise InputError(f"model_kwargs names model(s) {', '.join(stray)} that are not in models={tuple(models)}")
    if key_added is not None:
        check_key(key_added)
    return models, shots, model_kwargs


def _store_heldout(adata, key: str, result: HeldoutResult) -> None:
    """``uns[key]`` (the tables) and ``obs[key + "_part"]`` (the split)."""
    curves = result.fewshot
    entry = {
        "table": result.table,
        "per_perturbation": result.per_perturbation,
        "fewshot": curves.assign(adaptation_cells_per_perturbation=curves["adaptation_cells_per_perturbation"]
                                 .astype(str)),
        "holdout": result.holdout,
    }
    if result.adapted_graph is not None:
        entry["adapted_graph"] = result.adapted_graph.rename_axis("perturbation").reset_index()
    adata.uns[key] = writable(entry)
    adata.obs[key + "_part"] = pd.Categorical(result.split.reindex(adata.obs_names).to_numpy(),
                                              categories=["train", "validation", "heldout_adapt", "heldout_eval"])


SETTINGS_ORDER = ("heldout_adapted", "heldout_zeroshot", "heldin")


def fewshot_rows(adapt_rows: np.ndarray, labels: np.ndarray, n: int | str) -> np.ndarray:
    """The first ``n`` adaptation cells of each held-out label (the split's random order)."""
    if n == "all":
        return adapt_rows
    keep, seen = [], {}
    for row in adapt_rows:
        lab = labels[row]
        if seen.get(lab, 0) < n:
            keep.append(row)
            seen[lab] = seen.get(lab, 0) + 1
    return np.asarray(keep, dtype=np.int64)


@dataclass
class Scoring:
    """How held-out perturbations are scored (the evaluation's own settings)."""

    seed: int = 0
    #: importance samples per cell
    n_importance: int = 1000
    #: adaptation cells per held-out perturbation on the few-shot curve (numbers and "all")
    fewshot: list = field(default_factory=lambda: [0, 10, 50, "all"])
    adapt_steps: int = 500
    #: held-in (validation) cells scored, at most
    heldin_cells: int = 1000
    #: also predict the held-out perturbations' expression after each adaptation
    predict: bool = False
    #: control cells transported per prediction (and in real.h5ad)
    predict_cells: int = 500


@dataclass
class ModelScores:
    """One model's rows of the held-out tables (see :func:`evaluate_model`)."""

    records: list
    per_perturbation: list
    fewshot: list
    adapted_graph: pd.DataFrame | None
    info: dict
    #: few-shot size -> predicted cells of the held-out perturbations (``Scoring.predict``)
    predictions: dict = field(default_factory=dict)


def adaptation_rows(data, split: pd.Series, seed: int) -> np.ndarray:
    """The adaptation cells' rows in the seeded order the few-shot subsets take them from."""
    parts = split.reindex(data.adata.obs_names).to_numpy()
    rows = np.flatnonzero(parts == "heldout_adapt")
    return rows[np.random.default_rng(seed).permutation(len(rows))]


def evaluate_model(name: str, model, data, spec, split: pd.Series, settings: Scoring) -> ModelScores:
    """Score one trained model on the held-out perturbations of ``spec`` and on held-in cells.

    ``heldout_zeroshot``: the held-out perturbations unknown to the prior (control's prior);
    ``heldout_adapted``: only their new prior rows fitted on all adaptation cells (networks
    frozen); the few-shot curve: the same on the first ``n`` adaptation cells of each label
    (a seeded random order); ``heldin``: validation cells of the training perturbations.
    Importance-sampled NLL per cell, ``settings.n_importance`` samples.
    """
    from scperturb_vae.tl.heldout import (
        adapt_prior,
        extended_module,
        heldout_cells,
        heldout_log_likelihood,
        mean_and_stderr,
    )

    labels = data.adata.obs[data.perturbation_key].astype(str).to_numpy()
    parts = split.reindex(data.adata.obs_names).to_numpy()
    eval_rows = np.flatnonzero(parts == "heldout_eval")
    # few-shot subsets take the first n cells of each label in a seeded random order
    adapt_rows = adaptation_rows(data, split, settings.seed)
    # a held-out combination of trained singles brings no new perturbation
    new = sorted({q for p in spec.perturbations for q in split_combination(p, COMBINATION_SEP)}
                 - set(model.perturbations))
    eval_cells = heldout_cells(model, data.adata, eval_rows, new_perturbations=new)
    adapt_all = heldout_cells(model, data.adata, adapt_rows, new_perturbations=new)
    order = {row: i for i, row in enumerate(adapt_rows)}
    n_s = settings.n_importance

    def score(module):
        ll, se = heldout_log_likelihood(module, eval_cells, n_samples=n_s, seed=settings.seed)
        return ll, se

    records, per_pert, fewshot, adapt_info = [], [], [], {}
    t0 = time.perf_counter()
    zero_module = extended_module(model, len(new))
    ll0, se0 = score(zero_module)
    seconds_zero = time.perf_counter() - t0
    results, modules = {}, {0: zero_module}
    # "all" adaptation cells is the heldout_adapted setting: computed even when not on the curve
    shots = list(settings.fewshot) + ([] if "all" in settings.fewshot else ["all"])
    for n in shots:
        if n == 0:
            results[0] = (ll0, se0, {"adapted": False, "n_cells": 0})
            continue
        rows = fewshot_rows(adapt_rows, labels, n)
        module = modules[n] = extended_module(model, len(new))
        info = adapt_prior(module, adapt_all.subset(np.array([order[r] for r in rows], dtype=np.int64)),
                           n_steps=settings.adapt_steps, seed=settings.seed)
        if not info["adapted"]:  # nothing to adapt (the VAE): the zero-shot numbers
            results[n] = (ll0, se0, info)
        else:
            ll, se = score(module)
            results[n] = (ll, se, info)
        if n == "all":
            adapt_info = info
            adapted_module = module
    ll1, se1, _ = results["all"]

    # held-in: validation cells of the training perturbations (never trained on)
    val = getattr(model, "validation_indices", None)
    val = np.asarray([] if val is None else val, dtype=np.int64)
    if len(val) and settings.heldin_cells:
        val = np.sort(np.random.default_rng(settings.seed).choice(val, min(settings.heldin_cells, len(val)), replace=False))
        llh, seh = model.get_marginal_ll(indices=val, n_mc_samples=n_s, return_stderr=True)
    else:
        llh, seh = np.zeros(0), np.zeros(0)

    for setting, (ll, se) in (("heldout_adapted", (ll1, se1)), ("heldout_zeroshot", (ll0, se0)), ("heldin", (llh, seh))):
        nll, err = mean_and_stderr(ll, se)
        records.append({"model": name, "setting": setting, "nll": nll, "stderr": err, "n_cells": int(len(ll))})
        if setting == "heldin":
            continue
        frame = pd.DataFrame({"perturbation": eval_cells.labels, "ll": ll, "se": se})
        for pert, g in frame.groupby("perturbation", sort=True):
            nll, err = mean_and_stderr(g["ll"].to_numpy(), g["se"].to_numpy())
            per_pert.append({"model": name, "setting": setting, "perturbation": pert, "nll": nll,
                             "stderr": err, "n_cells": int(len(g))})
    for n in settings.fewshot:
        ll, se, info = results[n]
        nll, err = mean_and_stderr(ll, se)
        n_cells = int(info.get("n_cells", 0))
        fewshot.append({"model": name, "adaptation_cells_per_perturbation": n, "n_adaptation_cells": n_cells,
                        "nll": nll, "stderr": err, "n_cells": int(len(ll))})
    graph = adapted_module.prior.intervention_graph()
    adapted_graph = None
    if graph is not None and new:
        names = list(model.perturbations) + new
        values = graph.detach().cpu().numpy()
        adapted_graph = pd.DataFrame(values[len(model.perturbations):], index=pd.Index(names[len(model.perturbations):], name="perturbation"),
                                     columns=model.latent_names)
        adapted_graph.insert(0, "model", name)
    info = {"adaptation": adapt_info, "new_perturbations": new, "zeroshot_seconds": round(seconds_zero, 2)}
    predictions = _predict_adapted(model, modules, data, split, new, settings) if settings.predict else {}
    return ModelScores(records, per_pert, fewshot, adapted_graph, info, predictions)


def _predict_adapted(model, modules: dict, data, split: pd.Series, new: list[str], settings: Scoring) -> dict:
    """Predicted cells of the held-out evaluation labels after each few-shot adaptation."""
    from scperturb_vae.tl.prediction import evaluation_targets, model_prediction, prediction_controls

    targets = evaluation_targets(data, split)
    controls = prediction_controls(data, split, settings.predict_cells, settings.seed)
    return {n: model_prediction(modules[n], model, data, controls, targets, new, seed=settings.seed)
            for n in settings.fewshot}


@dataclass
class HeldoutTables:
    """The held-out tables of several models (rows in model order, then :data:`SETTINGS_ORDER`)."""

    table: pd.DataFrame
    per_perturbation: pd.DataFrame
    fewshot: pd.DataFrame
    adapted_graph: pd.DataFrame | None


def assemble_tables(scores: Sequence[ModelScores]) -> HeldoutTables:
    """One table per kind from each model's :class:`ModelScores`."""
    table = pd.DataFrame([r for s in scores for r in s.records], columns=["model", "setting", "nll", "stderr", "n_cells"])
    per_pert = pd.DataFrame([r for s in scores for r in s.per_perturbation],
                            columns=["model", "setting", "perturbation", "nll", "stderr", "n_cells"])
    curves = pd.DataFrame([r for s in scores for r in s.fewshot],
                          columns=["model", "adaptation_cells_per_perturbation", "n_adaptation_cells", "nll", "stderr",
                                   "n_cells"])
    graphs = [s.adapted_graph for s in scores if s.adapted_graph is not None]
    return HeldoutTables(table, per_pert, curves, pd.concat(graphs) if graphs else None)
