r"""Predicted expression of held-out perturbations, scored against honest baselines.

``scvae evaluate --predict`` (and :func:`scperturb_vae.tl.evaluate.evaluate_model` with
``Scoring(predict=True)``) compares, on the held-out perturbations' **evaluation cells** only:

- each model after adapting the new perturbations' prior on ``k`` cells each
  (:func:`model_prediction`: control cells moved by the adapted prior's transport, decoded,
  and one count profile drawn per cell from the count likelihood at the cell's own library
  size, so that the predicted cells pass through the same normalisation as the real ones);
- baselines built from the same cells (:func:`baseline_predictions`):

  ``control``
      no effect: control cells under the perturbation's label;
  ``kcell_mean``
      the ``k`` adaptation cells themselves (what a scientist has without a model);
  ``training_mean``
      cells of the training perturbations, pooled (the mean perturbation);
  ``linear``
      the ``k``-cell mean effect projected onto the top principal directions of the training
      perturbations' effects, each coordinate shrunk by ``s^2 / (s^2 + noise / k)`` (``s^2``:
      the training effects' variance along it, ``noise``: the control cells'); added to the
      control cells in log space.  It is the PCA-ridge baseline for perturbations that are
      not genes of the panel (Ahlmann-Eltze et al. 2025 embed perturbations by their target
      gene, which a simulated or guide-named perturbation does not have);
  ``additive``
      for held-out combinations ``A+B`` of trained singles: control + the observed effect of
      ``A`` + that of ``B`` (training cells), in log space.

**Three disjoint samples of control cells** (:func:`prediction_controls`): ``real`` (the
control rows of ``real.h5ad``), ``basis`` (the control rows of every prediction, the cells the
models transport, and the reference of every baseline's effect) and ``null`` (the ``control``
baseline's "perturbed" cells).  No prediction sees a cell of the real file: a prediction that
shared the real control cells would share their noise with the observed effect, and even the
no-effect baseline would correlate with it.

Every prediction is an AnnData in cell-eval's layout (:func:`evaluation_layout`:
``obs["target"]``, the control label present, log1p of counts per 1e4 in ``X``).  The scores
(:func:`delta_scores`) are on pseudobulk means of ``X``: the predicted effect
``mean(pred, target) - mean(pred, control)`` against the observed one; ``ate_pearson`` over
all genes, ``ate_pearson_top20`` over the observed top-20 DE genes (scanpy's Wilcoxon test of
the evaluation cells against the control cells), ``ate_mse`` over all genes.  cell-eval's own
metrics are added by :func:`cell_eval_scores` when it is installed.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from scperturb_vae.data.labels import COMBINATION_SEP, split_combination
from scperturb_vae.errors import InputError
from scperturb_vae.tl.checks import check_adata
from scperturb_vae.tl.store import as_model, key_for_model, writable

logger = logging.getLogger("scperturb_vae")

__all__ = ["ATE_SUFFIX", "ControlSamples", "baseline_predictions", "cell_eval_scores", "delta_scores", "evaluation_layout",
           "evaluation_targets", "model_prediction", "predict", "prediction_controls", "real_cells", "top_de_genes", "CELL_EVAL_HINT"]

CELL_EVAL_HINT = ("cell-eval is not installed: the h5ad files are written; score them with "
                  "pip install cell-eval, then cell-eval run -ap pred_X.h5ad -ar real.h5ad --control-pert CONTROL")


@dataclass
class ControlSamples:
    """Three disjoint seeded samples of training control cells (rows of the AnnData)."""

    #: the control rows of ``real.h5ad``
    real: np.ndarray
    #: the control rows of every prediction: transported by the models, the baselines' reference
    basis: np.ndarray
    #: the ``control`` baseline's "perturbed" cells
    null: np.ndarray


def prediction_controls(data, split: pd.Series, n_cells: int, seed: int) -> ControlSamples:
    """:class:`ControlSamples` of ``n_cells`` each (fewer when the screen has under ``3 n_cells`` controls)."""
    labels = data.adata.obs[data.perturbation_key].astype(str).to_numpy()
    parts = split.reindex(data.adata.obs_names).to_numpy()
    control = np.flatnonzero((labels == data.control_label) & np.isin(parts, ["train", "validation"]))
    control = control[np.random.default_rng(seed).permutation(len(control))]
    n = min(int(n_cells), len(control) // 3)
    if n < 2:
        raise InputError(f"{len(control)} control cells cannot give the three disjoint samples of at least 2 "
                         "cells that the predictions are scored with")
    return ControlSamples(*(np.sort(control[i * n:(i + 1) * n]) for i in range(3)))


def evaluation_layout(cells, control_label: str, settings: dict, *, counts: bool = True):
    """An AnnData in cell-eval's layout: ``obs["target"]``, settings in ``uns["scvae_predict"]``.

    With ``counts`` (``X`` holds counts) the counts move to ``layers["counts"]`` and ``X``
    becomes ``log1p`` of counts per 1e4 (scanpy's ``normalize_total`` + ``log1p``); without,
    ``X`` is taken as already on that scale.
    """
    import scanpy as sc

    out = cells.copy()
    if counts:
        out.layers["counts"] = out.X.copy()
        sc.pp.normalize_total(out, target_sum=1e4)
        sc.pp.log1p(out)
    out.uns["scvae_predict"] = {**settings, "control_label": control_label, "pert_col": "target"}
    return out


def _counts(data, rows: np.ndarray):
    """The counts of ``rows`` (any order, repeats allowed), each stored row read once in row order
    (as a backed file needs)."""
    counts = data.adata.layers[data.layer] if data.layer is not None else data.adata.X
    unique, inverse = np.unique(np.asarray(rows, dtype=np.int64), return_inverse=True)
    return sp.csr_matrix(counts[unique], dtype=np.float32)[inverse]


def _cells(data, rows_by_target: dict[str, np.ndarray], settings: dict):
    """Real cells ``rows`` under the labels of ``rows_by_target``, in cell-eval's layout."""
    import anndata as ad

    names = list(rows_by_target)
    rows = np.concatenate([np.asarray(r, dtype=np.int64) for r in rows_by_target.values()])
    target = np.repeat(names, [len(r) for r in rows_by_target.values()])
    obs = pd.DataFrame({"target": pd.Categorical(target, categories=names)},
                       index=[f"{t}_{c}" for t, c in zip(target, data.adata.obs_names[rows].astype(str))])
    cells = ad.AnnData(X=_counts(data, rows), obs=obs, var=pd.DataFrame(index=data.adata.var_names.astype(str)))
    return evaluation_layout(cells, data.control_label, settings)


def evaluation_targets(data, split: pd.Series) -> list[str]:
    """The labels of the held-out evaluation cells, sorted."""
    labels = data.adata.obs[data.perturbation_key].astype(str).to_numpy()
    parts = split.reindex(data.adata.obs_names).to_numpy()
    return sorted(set(labels[parts == "heldout_eval"]))


def real_cells(data, split: pd.Series, controls: ControlSamples):
    """The held-out perturbations' evaluation cells (never the adaptation cells) and ``controls.real``."""
    labels = data.adata.obs[data.perturbation_key].astype(str).to_numpy()
    parts = split.reindex(data.adata.obs_names).to_numpy()
    rows = {data.control_label: controls.real}
    for lab in evaluation_targets(data, split):
        rows[lab] = np.flatnonzero((parts == "heldout_eval") & (labels == lab))
    return _cells(data, rows, {"kind": "real", "parts": "heldout_eval"})


def model_prediction(module, model, data, controls: ControlSamples, targets: list[str], new: list[str],
                     *, seed: int, batch_size: int = 256):
    """Counterfactual cells of ``targets`` from ``module`` (an adapted copy of ``model``'s).

    The ``controls.basis`` cells are moved by the prior's transport
    (:func:`scperturb_vae.model.predict.decode_counterfactuals`) and one count profile is drawn
    per cell and target (torch seeded with ``seed``); the control rows are the same cells'
    reconstructions, drawn the same way.
    """
    import anndata as ad
    import torch

    from scperturb_vae.data.labels import COMBINATION_SEP, split_combination
    from scperturb_vae.model.predict import decode_counterfactuals
    from scperturb_vae.tl.heldout import heldout_cells, iter_batches

    rows = controls.basis
    cells = heldout_cells(model, data.adata, rows, new_perturbations=new)
    index = {p: i for i, p in enumerate(list(model.perturbations) + list(new))}
    parts = [split_combination(t, COMBINATION_SEP) for t in targets]
    width = max(len(p) for p in parts)
    table = torch.tensor([[index[p] for p in ps] + [-1] * (width - len(ps)) for ps in parts], dtype=torch.long)
    torch.manual_seed(int(seed))
    _, sampled = decode_counterfactuals(module, (t for t, _ in iter_batches(cells, batch_size)), table,
                                        sample_counts=True)
    names = [data.control_label, *targets]
    cell_names = data.adata.obs_names[rows].astype(str)
    obs = pd.DataFrame({"target": pd.Categorical(np.repeat(names, len(rows)), categories=names)},
                       index=[f"{t}_{c}" for t in names for c in cell_names])
    out = ad.AnnData(X=sp.vstack(sampled).tocsr(), obs=obs, var=pd.DataFrame(index=data.adata.var_names.astype(str)))
    return evaluation_layout(out, data.control_label, {"kind": "model", "x": "counts drawn at the control cells' "
                                                       "library sizes, log1p-normalised"})


def _mean(x) -> np.ndarray:
    return np.asarray(x.mean(axis=0)).ravel()


def _linear(delta: np.ndarray, train_effects: np.ndarray, noise: np.ndarray, k: int) -> np.ndarray:
    """The k-cell mean effect ``delta``, projected on the training effects' principal directions and shrunk."""
    if len(train_effects) < 2:
        return np.zeros_like(delta)
    _, s, vt = np.linalg.svd(train_effects, full_matrices=False)
    keep = s > s[0] * 1e-3
    vt, var = vt[keep], (s[keep] ** 2) / len(train_effects)
    coords = vt @ delta
    noise_var = (vt ** 2) @ noise / max(k, 1)
    return (coords * var / (var + noise_var)) @ vt


def _means_by_target(cells) -> dict[str, np.ndarray]:
    """Mean ``X`` (log1p-normalised) of each target of a cell-eval layout AnnData."""
    target = cells.obs["target"].astype(str).to_numpy()
    return {t: _mean(cells.X[target == t]) for t in pd.unique(target)}


def _effects(data, rows_by_label: dict[str, np.ndarray], ref: np.ndarray) -> np.ndarray:
    """Mean log1p-normalised expression of each label's rows (read one label at a time) minus ``ref``."""
    if not rows_by_label:
        return np.zeros((0, len(ref)))
    return np.stack([_mean(_cells(data, {lab: rows}, {}).X) - ref for lab, rows in rows_by_label.items()])


def baseline_predictions(data, split: pd.Series, controls: ControlSamples, adapt_rows_by_k: dict,
                         *, seed: int) -> dict[tuple[str, object], object]:
    """``(baseline, k) -> AnnData`` in cell-eval's layout (the module docstring lists them).

    Every baseline's control rows are ``controls.basis`` and its effects are measured against
    them; none uses ``controls.real``.
    """
    labels = data.adata.obs[data.perturbation_key].astype(str).to_numpy()
    parts = split.reindex(data.adata.obs_names).to_numpy()
    targets = evaluation_targets(data, split)
    ctrl, basis = data.control_label, controls.basis
    out = {("control", 0): _cells(data, {ctrl: basis, **{t: controls.null for t in targets}}, {"kind": "control"})}
    training = np.isin(parts, ["train", "validation"]) & (labels != ctrl)
    trained = np.flatnonzero(training)
    pool = np.random.default_rng(seed).choice(trained, size=min(len(trained), len(basis)), replace=False)
    out[("training_mean", 0)] = _cells(data, {ctrl: basis, **{t: np.sort(pool) for t in targets}},
                                       {"kind": "training_mean"})
    basis_x = _cells(data, {ctrl: basis}, {}).X
    ref = _mean(basis_x)
    basis_x = basis_x.toarray() if sp.issparse(basis_x) else np.asarray(basis_x)
    train_labels = sorted(set(labels[trained]))
    effects = _effects(data, {lab: np.flatnonzero(training & (labels == lab)) for lab in train_labels}, ref)
    if any(COMBINATION_SEP in t for t in targets):  # control + the training effects of the parts
        effect_of = dict(zip(train_labels, effects))
        zero = np.zeros(basis_x.shape[1])
        deltas = {t: sum((effect_of.get(q, zero) for q in split_combination(t, COMBINATION_SEP)), zero)
                  for t in targets}
        out[("additive", 0)] = _shifted(basis_x, ctrl, deltas, data, {"kind": "additive"})
    noise = basis_x.var(axis=0)
    for k, rows in adapt_rows_by_k.items():
        if k == 0:
            continue
        by_target = {t: rows[labels[rows] == t] for t in targets}
        kcell = out[("kcell_mean", k)] = _cells(data, {ctrl: basis, **by_target}, {"kind": "kcell_mean", "k": str(k)})
        observed = _means_by_target(kcell)
        deltas = {t: _linear(observed[t] - ref, effects, noise, len(by_target[t])) for t in targets}
        out[("linear", k)] = _shifted(basis_x, ctrl, deltas, data, {"kind": "linear", "k": str(k)})
    return out


def _shifted(ctrl_x: np.ndarray, control: str, deltas: dict[str, np.ndarray], data, settings: dict):
    """The control cells (log space) and, per target, the same cells plus its effect, clipped at 0."""
    import anndata as ad

    names = [control, *deltas]
    blocks = [ctrl_x, *(np.maximum(ctrl_x + d, 0.0) for d in deltas.values())]
    target = np.repeat(names, len(ctrl_x))
    obs = pd.DataFrame({"target": pd.Categorical(target, categories=names)},
                       index=[f"{t}_{i}" for t in names for i in range(len(ctrl_x))])
    cells = ad.AnnData(X=sp.csr_matrix(np.vstack(blocks).astype(np.float32)), obs=obs,
                       var=pd.DataFrame(index=data.adata.var_names.astype(str)))
    return evaluation_layout(cells, control, settings, counts=False)


def top_de_genes(real, control: str, n: int = 20) -> dict[str, np.ndarray]:
    """Per perturbation of ``real``: the indices of its top-``n`` genes by scanpy's Wilcoxon |z|."""
    import scanpy as sc

    from scperturb_vae.threads import keep_torch_threads

    real = real.copy()
    groups = [t for t in real.obs["target"].cat.categories if t != control]
    with warnings.catch_warnings(), keep_torch_threads():
        warnings.simplefilter("ignore")
        sc.tl.rank_genes_groups(real, "target", groups=groups, reference=control, method="wilcoxon", key_added="_de")
    names = real.uns["_de"]["names"]
    scores = real.uns["_de"]["scores"]
    position = {g: i for i, g in enumerate(real.var_names)}
    top = {}
    for t in groups:
        order = np.argsort(-np.abs(np.asarray(scores[t], dtype=float)), kind="stable")[:n]
        top[t] = np.asarray([position[names[t][i]] for i in order], dtype=np.int64)
    return top


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2 or np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def delta_scores(real, pred, control: str, top: dict[str, np.ndarray]) -> pd.DataFrame:
    """Per perturbation: ``ate_pearson``, ``ate_pearson_top20``, ``ate_mse`` (module docstring)."""
    real_m, pred_m = _means_by_target(real), _means_by_target(pred)
    rows = []
    for t, genes in top.items():
        if t not in pred_m:
            continue
        truth = real_m[t] - real_m[control]
        guess = pred_m[t] - pred_m[control]
        rows.append({"perturbation": t, "ate_pearson": _pearson(guess, truth),
                     "ate_pearson_top20": _pearson(guess[genes], truth[genes]),
                     "ate_mse": float(np.mean((guess - truth) ** 2))})
    return pd.DataFrame(rows, columns=["perturbation", "ate_pearson", "ate_pearson_top20", "ate_mse"])


def cell_eval_scores(real, pred, control: str, outdir, *, threads: int = 1) -> pd.DataFrame | None:
    """cell-eval's aggregated metrics (``metric``, ``mean``), or None when cell-eval is not installed."""
    try:
        from cell_eval import MetricsEvaluator
    except ImportError:
        return None
    import contextlib
    import io
    import os
    import tempfile

    from scperturb_vae.threads import keep_torch_threads

    quiet = {"TQDM_DISABLE": "1"}
    saved = {k: os.environ.get(k) for k in quiet}
    os.environ.update(quiet)
    quiet_loggers = [logging.getLogger(n) for n in ("cell_eval", "pdex")]
    levels = [lg.level for lg in quiet_loggers]
    try:
        for lg in quiet_loggers:
            lg.setLevel(logging.ERROR)
        # cell-eval's dependencies draw progress bars on stderr whatever TQDM_DISABLE says
        with warnings.catch_warnings(), keep_torch_threads(), tempfile.TemporaryDirectory(dir=outdir) as scratch, \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            evaluator = MetricsEvaluator(adata_pred=pred, adata_real=real, control_pert=control, pert_col="target",
                                         outdir=scratch, num_threads=threads)
            _, agg = evaluator.compute(profile="full", write_csv=False, break_on_error=False)
    finally:
        for lg, level in zip(quiet_loggers, levels):
            lg.setLevel(level)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    agg = agg.to_pandas()
    stat = agg.columns[0]
    mean = agg[agg[stat] == "mean"].drop(columns=stat)
    return mean.T.reset_index().set_axis(["metric", "mean"], axis=1)


#: suffix of the ``varm`` entry :func:`predict` writes (``varm[key + ATE_SUFFIX]``)
ATE_SUFFIX = "_predicted_ate"


def predict(adata, model, perturbations, *, n_cells: int = 1000, seed: int = 0, key_added: str | None = None,
            copy: bool = False):
    """Counterfactual expression of trained perturbations and combinations ``A+B``, in a notebook.

    The estimator of :meth:`~scperturb_vae.model.base.PerturbationModelBase.predict`
    (:mod:`scperturb_vae.model.predict`): a seeded sample of the model's control cells, moved by
    the prior's transport to ``p(z | a)``, decoded, and one count profile drawn per cell and
    target, coupled with the cell's own control draw.  The control cells are those of the
    AnnData the model was set up with (``model.adata``).

    Parameters
    ----------
    adata
        Where the results are written (the model's genes, in its order).
    model
        A trained model or a run folder.
    perturbations
        ``"A,B,A+B"`` or a list of labels: trained perturbations and combinations of them.
    n_cells, seed
        Control cells transported (a seeded sample) and the seed of the sample and the counts.
    key_added
        The key (default: as :func:`scperturb_vae.tl.gene_effects`).
    copy
        Work on a copy of ``adata`` and return it with the predicted cells.

    Returns
    -------
    anndata.AnnData, or (adata copy, AnnData) with ``copy=True``
        The predicted cells in cell-eval's layout (:func:`evaluation_layout`): one cell per
        control cell and target (the controls' own draws under the control label),
        ``obs["target"]``, ``log1p`` of counts per 1e4 in ``X``, the counts in
        ``layers["counts"]``; ready for ``sc.tl.rank_genes_groups(pred, "target")``.

    Writes
    ------
    ``adata.varm[key + "_predicted_ate"]``
        Genes x targets DataFrame: the average treatment effect on the normalised means
        (counts per 1e4) against the control.
    ``adata.uns[key]["prediction"]``
        ``targets``, ``n_cells``, ``seed``.
    """
    check_adata(adata)
    trained, _ = as_model(model)
    if list(adata.var_names) != list(trained.adata.var_names):
        raise InputError("adata does not have the model's genes in the model's order")
    key = key_for_model(adata, trained, key_added)
    result = trained.predict(perturbations, n_cells=n_cells, sample_counts=True, seed=seed)
    if copy:
        adata = adata.copy()
    ate = result.ate.T.copy()
    ate.index = pd.Index(adata.var_names, name=None)
    ate.columns = pd.Index([str(c) for c in result.ate.index], name=None)
    adata.varm[key + ATE_SUFFIX] = ate
    entry = dict(adata.uns[key]) if isinstance(adata.uns.get(key), Mapping) else {}
    settings = {"targets": list(ate.columns), "n_cells": len(result.control_cells), "seed": int(seed)}
    entry["prediction"] = writable(settings)
    adata.uns[key] = entry
    estimator = "control cells moved by the prior's transport to p(z | a), decoded, coupled counts"
    cells = evaluation_layout(result.cells, trained.control_label, {**settings, "estimator": estimator})
    return (adata, cells) if copy else cells
