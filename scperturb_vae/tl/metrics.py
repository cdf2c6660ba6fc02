"""Recovery metrics against a known truth (simulations), and posterior-collapse diagnostics.

Recovery of the true latents (cells x ``k`` true, cells x ``m`` learned):

- :func:`mean_correlation_coefficient` (MCC): the mean absolute correlation between true
  and learned latents after matching them one-to-one with the Hungarian algorithm on the
  absolute correlations (Pearson or Spearman).
- :func:`linear_r2`: the in-sample R^2 of the least-squares linear map (with intercept)
  from all learned latents to each true latent; identifiability up to an invertible
  linear map, where MCC asks for a permutation and rescaling.
- :func:`mutual_information_gap` (MIG, Chen et al. 2018): for each true factor, the gap
  between the two learned latents that carry the most information about it, divided by
  the factor's entropy, on discretised values.

Recovery of the perturbation -> latent graph (:func:`graph_scores`): the learned latents
are permuted by the Pearson MCC matching, then

- precision, recall and F1 of the learned graph thresholded at 0.5;
- the threshold-free AUROC (:func:`roc_auc`) and average precision
  (:func:`average_precision`) of its scores against the true 0/1 graph.

What the "learned graph" is depends on the model
(:meth:`~scperturb_vae.model.models.PerturbationModelBase.get_intervention_graph`): sVAE+ and
sVAE give mask probabilities.  Models without mask probabilities give a score in [0, 1]:
the iVAE ``1 - exp(-KL(p(z_i | a) || N(0, 1)))`` of its prior, the plain VAE the
posterior-shift score ``1 - exp(-d^2 / 2)`` (the KL between two unit Gaussians ``d`` apart,
``d`` the standardised shift of the perturbation's mean latent from the controls').  The
same 0.5 threshold applies to every model; for these scores it means a KL above ``log 2``
(a mean shift of about 1.18 sd).  AUROC and average precision do not depend on the
threshold, so they compare the models' rankings of edges on an equal footing.

Extra latents: when there are more learned latents than true ones, the extra learned
latents are left unmatched; they do not count in MCC or MIG, and their graph entries count
as predicted edges that are absent from the truth (false positives at the threshold,
negatives with their scores for AUROC / AP).  When there are fewer, the unmatched true
latents' edges are missed (false negatives, scored 0).

Posterior collapse (Burda et al. 2016; Hoffman & Johnson 2016; the LIDVAE paper, Wang et
al. 2023): :func:`active_units`, :func:`mutual_information` (the index-code mutual
information ``I(x; z)``), and :func:`posterior_collapse` which runs a trained model's
encoder and adds the KL to the prior per latent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats
from scipy.optimize import linear_sum_assignment
from scipy.special import logsumexp

from scperturb_vae.io import json_ready

__all__ = [
    "MCCResult",
    "mean_correlation_coefficient",
    "R2Result",
    "linear_r2",
    "MIGResult",
    "mutual_information_gap",
    "discretize",
    "roc_auc",
    "average_precision",
    "graph_scores",
    "recovery_summary",
    "ActiveUnits",
    "active_units",
    "mutual_information",
    "posterior_collapse",
]

_LOG_2PI = math.log(2.0 * math.pi)


# --------------------------------------------------------------------------- latents
@dataclass(frozen=True)
class MCCResult:
    """Mean correlation coefficient and the matching behind it."""

    mcc: float
    #: learned latent matched to each true latent (index into the learned columns; -1: unmatched)
    assignment: np.ndarray
    #: absolute correlations, true x learned
    correlations: np.ndarray


def _abs_corr(true: np.ndarray, learned: np.ndarray, method: str) -> np.ndarray:
    if method == "spearman":
        true = np.apply_along_axis(stats.rankdata, 0, true)
        learned = np.apply_along_axis(stats.rankdata, 0, learned)
    elif method != "pearson":
        raise ValueError(f"method must be 'pearson' or 'spearman', not {method!r}")
    t = (true - true.mean(0)) / (true.std(0) + 1e-12)
    lrn = (learned - learned.mean(0)) / (learned.std(0) + 1e-12)
    return np.abs(t.T @ lrn) / len(t)


def _check_pair(true, learned) -> tuple[np.ndarray, np.ndarray]:
    true, learned = np.asarray(true, float), np.asarray(learned, float)
    if true.ndim != 2 or learned.ndim != 2:
        raise ValueError("true and learned latents must be 2-d arrays (cells x latents)")
    if true.shape[0] != learned.shape[0]:
        raise ValueError("true and learned latents must have the same number of cells")
    return true, learned


def mean_correlation_coefficient(true, learned, method: str = "pearson") -> MCCResult:
    """MCC between true (cells x k) and learned (cells x m) latents.

    The Hungarian algorithm matches each true latent with a distinct learned latent so
    that the sum of absolute correlations is largest; MCC is that sum divided by ``k``
    (a true latent left unmatched, when ``m < k``, counts as 0).
    """
    true, learned = _check_pair(true, learned)
    corr = _abs_corr(true, learned, method)
    rows, cols = linear_sum_assignment(-corr)
    assignment = np.full(true.shape[1], -1)
    assignment[rows] = cols
    return MCCResult(float(corr[rows, cols].sum() / true.shape[1]), assignment, corr)


@dataclass(frozen=True)
class R2Result:
    """Linear predictability of the true latents from the learned ones."""

    #: mean of ``per_latent`` (over the true latents with non-zero variance)
    r2: float
    #: R^2 of each true latent (NaN for a constant true latent)
    per_latent: np.ndarray


def linear_r2(true, learned) -> R2Result:
    """In-sample R^2 of the least-squares linear map (with intercept) from learned to true latents.

    For each true latent ``t_j`` the ordinary least-squares fit ``t_j ~ b_0 + learned @ b``
    is computed on all cells, and ``R^2_j = 1 - SS_res / SS_tot``.  It is in-sample (no
    held-out cells): with ``m`` learned latents and ``n`` cells, independent noise gives
    ``R^2`` of about ``m / (n - 1)``, not 0.  A learned representation that equals the truth
    up to any invertible linear map (permutation, scaling, sign, rotation) has R^2 = 1.

    Parameters
    ----------
    true
        ``(n_cells, k)`` true latents.
    learned
        ``(n_cells, m)`` learned latents (e.g. posterior means).

    Returns
    -------
    R2Result
        The mean over true latents and the per-latent values.
    """
    true, learned = _check_pair(true, learned)
    t = true - true.mean(0)
    x = learned - learned.mean(0)  # centring both is the intercept
    coef, *_ = np.linalg.lstsq(x, t, rcond=None)
    ss_res = ((t - x @ coef) ** 2).sum(0)
    ss_tot = (t**2).sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        per = np.where(ss_tot > 0, 1.0 - ss_res / np.where(ss_tot > 0, ss_tot, 1.0), np.nan)
    per = np.clip(per, 0.0, 1.0)  # rounding only: least squares with an intercept gives [0, 1]
    mean = float(np.nanmean(per)) if np.isfinite(per).any() else float("nan")
    return R2Result(mean, per)


def discretize(values, n_bins: int = 20, central: float = 0.98) -> np.ndarray:
    """Equal-width bins per column on the central ``central`` range of the values.

    Each column is clipped to its ``(1 - central) / 2`` and ``(1 + central) / 2`` quantiles
    (the 1st and 99th percentiles by default), so a few outliers do not squeeze the bulk
    of the values into one bin, and that range is cut into ``n_bins`` equal-width bins.
    When the central range is empty (most values equal) the full range is used; a
    constant column falls into one bin.

    Returns
    -------
    numpy.ndarray
        Integer bin codes in ``[0, n_bins)``, same shape as ``values`` (2-d).
    """
    values = np.asarray(values, float)
    if values.ndim == 1:
        values = values[:, None]
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, not {n_bins}")
    tail = (1.0 - central) / 2.0
    codes = np.zeros(values.shape, dtype=np.int64)
    for j in range(values.shape[1]):
        col = values[:, j]
        lo, hi = np.quantile(col, [tail, 1.0 - tail])
        if not hi > lo:
            lo, hi = col.min(), col.max()
        if not hi > lo:
            continue  # constant: one bin
        scaled = (np.clip(col, lo, hi) - lo) / (hi - lo) * n_bins
        codes[:, j] = np.minimum(np.floor(scaled).astype(np.int64), n_bins - 1)
    return codes


def _entropy(codes: np.ndarray, n_bins: int) -> float:
    p = np.bincount(codes, minlength=n_bins) / len(codes)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def _discrete_mutual_info(a: np.ndarray, b: np.ndarray, n_bins: int) -> float:
    """Plug-in mutual information (nats) between two integer codes in ``[0, n_bins)``."""
    joint = np.bincount(a * n_bins + b, minlength=n_bins * n_bins).reshape(n_bins, n_bins) / len(a)
    pa, pb = joint.sum(1), joint.sum(0)
    nz = joint > 0
    return float(max(0.0, (joint[nz] * np.log(joint[nz] / np.outer(pa, pb)[nz])).sum()))


@dataclass(frozen=True)
class MIGResult:
    """Mutual information gap and its ingredients."""

    #: mean of ``gaps`` over the true factors with non-zero entropy
    mig: float
    #: normalised gap of each true factor (NaN for a constant factor)
    gaps: np.ndarray
    #: plug-in mutual information (nats), true x learned
    mutual_info: np.ndarray
    #: entropy (nats) of each discretised true factor
    entropy: np.ndarray


def mutual_information_gap(true, learned, n_bins: int = 20) -> MIGResult:
    """Mutual information gap (MIG; Chen et al. 2018) between true and learned latents.

    Every true factor and every learned latent is discretised by :func:`discretize`
    (``n_bins`` equal-width bins on its central 98% range) and the plug-in mutual
    information ``I(v_k; z_j)`` of each pair is computed from the joint histogram.  For
    each true factor ``v_k``::

        gap_k = (I(v_k; z_(1)) - I(v_k; z_(2))) / H(v_k)

    with ``z_(1)``, ``z_(2)`` the learned latents of largest and second-largest mutual
    information with ``v_k`` (``I(v_k; z_(2)) = 0`` when there is one learned latent), and
    ``H(v_k)`` the entropy of the discretised factor.  MIG is the mean gap: 1 when every
    factor is captured by one latent alone, near 0 when no latent carries a factor (or
    two carry it equally).  The plug-in estimate is biased upwards by about
    ``(n_bins - 1)^2 / (2 n)`` nats per pair (0.04 nats for 20 bins and 5,000 cells, 0.9
    for 200 cells); the gap cancels part of it, but with few cells MIG stays well below 1
    even for a perfect representation, so compare MIG across models on the same cells.
    """
    true, learned = _check_pair(true, learned)
    t_codes = discretize(true, n_bins)
    l_codes = discretize(learned, n_bins)
    k, m = true.shape[1], learned.shape[1]
    mi = np.array([[_discrete_mutual_info(t_codes[:, i], l_codes[:, j], n_bins) for j in range(m)] for i in range(k)])
    mi = mi.reshape(k, m)
    entropy = np.array([_entropy(t_codes[:, i], n_bins) for i in range(k)])
    top = -np.sort(-mi, axis=1) if m else np.zeros((k, 0))
    first = top[:, 0] if m >= 1 else np.zeros(k)
    second = top[:, 1] if m >= 2 else np.zeros(k)
    with np.errstate(divide="ignore", invalid="ignore"):
        gaps = np.where(entropy > 0, (first - second) / np.where(entropy > 0, entropy, 1.0), np.nan)
    mig = float(np.nanmean(gaps)) if np.isfinite(gaps).any() else float("nan")
    return MIGResult(mig, gaps, mi, entropy)


# --------------------------------------------------------------------------- graph
def _binary_scores(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    """Labels as booleans (nonzero: positive) and scores as floats, both flat."""
    return np.asarray(labels).astype(bool).ravel(), np.asarray(scores, float).ravel()


def _threshold_keys(scores: np.ndarray) -> np.ndarray:
    """Finite keys for scores with NaN or infinite values (scikit-learn refuses them).

    With the scores sorted in decreasing order (NaN last, stable), a new threshold starts
    wherever the difference to the previous score is nonzero, so each NaN and each
    infinite score is a threshold of its own; the keys, one per score, rank the
    thresholds in that order.
    """
    order = np.argsort(-scores, kind="mergesort")
    with np.errstate(invalid="ignore"):
        starts = np.r_[True, np.diff(scores[order]) != 0]
    keys = np.empty(scores.size)
    keys[order] = -np.cumsum(starts)
    return keys


def roc_auc(labels, scores) -> float:
    """Area under the ROC curve of ``scores`` for the 0/1 ``labels`` (NaN without both classes).

    ``sklearn.metrics.roc_auc_score``: the trapezoidal area under the ROC curve, which
    equals the probability that a random positive scores higher than a random negative,
    ties counting one half.  NaN (where scikit-learn warns or raises) when the labels
    hold one class only or a score is NaN; infinite scores are ranked with the others.
    """
    from sklearn.metrics import roc_auc_score

    labels, scores = _binary_scores(labels, scores)
    if labels.all() or not labels.any() or np.isnan(scores).any():
        return float("nan")
    if not np.isfinite(scores).all():
        scores = stats.rankdata(scores)  # the same ranking, in numbers scikit-learn accepts
    return float(roc_auc_score(labels, scores))


def average_precision(labels, scores) -> float:
    """Average precision of ``scores`` for the 0/1 ``labels`` (NaN without positives).

    ``sklearn.metrics.average_precision_score``: ``AP = sum_t (R_t - R_{t-1}) P_t`` over
    the distinct score thresholds ``t`` in decreasing order, with ``P_t`` and ``R_t`` the
    precision and recall of ``scores >= t``: the step-wise area under the
    precision-recall curve, without interpolation.  NaN (where scikit-learn returns 0)
    without a positive label.  NaN scores count as below every other score; each NaN and
    each infinite score is a threshold of its own (:func:`_threshold_keys`).
    """
    from sklearn.metrics import average_precision_score

    labels, scores = _binary_scores(labels, scores)
    if not labels.any():
        return float("nan")
    if not np.isfinite(scores).all():
        scores = _threshold_keys(scores)
    return float(average_precision_score(labels, scores))


def _matched_graph(true_graph: pd.DataFrame, learned_graph: pd.DataFrame, assignment):
    """Truth (P x k, bool), learned scores matched to it (P x k) and the unmatched learned columns."""
    rows = [p for p in true_graph.index if p in learned_graph.index]
    truth = true_graph.loc[rows].to_numpy().astype(bool)
    learned = learned_graph.loc[rows].to_numpy().astype(float)
    assignment = np.asarray(assignment, dtype=int)
    matched = np.zeros(truth.shape, dtype=float)  # an unmatched true latent scores 0
    for j, col in enumerate(assignment):
        if col >= 0:
            matched[:, j] = learned[:, col]
    unmatched = np.setdiff1d(np.arange(learned.shape[1]), assignment[assignment >= 0])
    return truth, matched, learned[:, unmatched]


def graph_scores(true_graph: pd.DataFrame, learned_graph: pd.DataFrame, assignment, threshold: float = 0.5) -> dict:
    """Precision / recall / F1 of ``learned_graph > threshold``, AUROC and AP, against the 0/1 ``true_graph``.

    Rows are aligned by perturbation name (the true graph's rows that the learned graph
    has); learned column ``assignment[j]`` is compared with true column ``j``.  Learned
    columns that no true latent is matched to count as predicted edges absent from the
    truth: false positives where above the threshold, negatives (with their scores) for
    ``auroc`` and ``average_precision``.  A true latent without a match (``-1``) has
    score 0 everywhere.  ``auroc`` / ``average_precision`` are NaN when the true graph has
    no edge (or, for AUROC, no non-edge) among the compared entries.

    Returns
    -------
    dict
        ``precision``, ``recall``, ``f1``, ``tp``, ``fp``, ``fn`` (at the threshold),
        ``auroc``, ``average_precision`` (threshold-free), ``n_perturbations`` (rows
        compared), ``perturbation_recall`` (the share of perturbations with a true effect
        that have an edge, on any latent) and ``null_specificity`` (the share of
        perturbations without a true effect that have none; NaN without such).
    """
    truth, matched_scores, extra_scores = _matched_graph(true_graph, learned_graph, assignment)
    matched = matched_scores > threshold
    extra_fp = int((extra_scores > threshold).sum())
    tp = int((matched & truth).sum())
    fp = int((matched & ~truth).sum()) + extra_fp
    fn = int((~matched & truth).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    labels = np.r_[truth.ravel(), np.zeros(extra_scores.size, dtype=bool)]
    scores = np.r_[matched_scores.ravel(), extra_scores.ravel()]
    rows = [p for p in true_graph.index if p in learned_graph.index]
    any_edge = (learned_graph.loc[rows].to_numpy(dtype=float) > threshold).any(axis=1)
    effective = truth.any(axis=1)
    return {
        "perturbation_recall": float(any_edge[effective].mean()) if effective.any() else float("nan"),
        "null_specificity": float((~any_edge[~effective]).mean()) if (~effective).any() else float("nan"),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "auroc": roc_auc(labels, scores),
        "average_precision": average_precision(labels, scores),
        "n_perturbations": int(truth.shape[0]),
    }


def recovery_summary(true_latent, learned_latent, true_graph: pd.DataFrame, learned_graph: pd.DataFrame) -> dict:
    """Every recovery metric in one JSON-ready dictionary.

    Keys: ``mcc_pearson``, ``mcc_spearman``, ``r2`` (:func:`linear_r2`), ``mig``
    (:func:`mutual_information_gap`), ``n_matched`` (true latents matched to a learned one)
    and the :func:`graph_scores` entries prefixed ``graph_`` (``graph_precision``,
    ``graph_recall``, ``graph_f1``, ``graph_tp``, ``graph_fp``, ``graph_fn``,
    ``graph_auroc``, ``graph_average_precision``, ``graph_n_perturbations``).  The graph is
    matched by the Pearson MCC assignment.  An undefined value (e.g. AUROC of a graph
    without edges) is ``None``, so the dictionary can be written as strict JSON.
    """
    pearson = mean_correlation_coefficient(true_latent, learned_latent, "pearson")
    spearman = mean_correlation_coefficient(true_latent, learned_latent, "spearman")
    out = {
        "mcc_pearson": pearson.mcc,
        "mcc_spearman": spearman.mcc,
        "r2": linear_r2(true_latent, learned_latent).r2,
        "mig": mutual_information_gap(true_latent, learned_latent).mig,
        "n_matched": int((pearson.assignment >= 0).sum()),
    }
    out.update({f"graph_{k}": v for k, v in graph_scores(true_graph, learned_graph, pearson.assignment).items()})
    return json_ready(out)


# --------------------------------------------------------------------------- posterior collapse
@dataclass(frozen=True)
class ActiveUnits:
    """Active latent units (Burda et al. 2016)."""

    #: number of active latents
    count: int
    #: which latents are active
    mask: np.ndarray
    #: ``Var_x E[z | x]`` of each latent
    variance: np.ndarray
    threshold: float


def active_units(qz_mean, threshold: float = 0.01) -> ActiveUnits:
    """Latents whose posterior mean varies across cells: ``Var_x E[z_i | x] > threshold``.

    A collapsed latent has ``q(z_i | x) = p(z_i)`` for every cell, so its posterior mean does
    not depend on the cell.  The variance is the population variance (``ddof=0``) over the
    given cells; 0.01 is the usual threshold (the prior has variance 1).

    Parameters
    ----------
    qz_mean
        ``(n_cells, n_latent)`` posterior means.
    threshold
        Variance above which a latent counts as active.
    """
    qz_mean = np.asarray(qz_mean, float)
    if qz_mean.ndim != 2:
        raise ValueError("qz_mean must be a 2-d array (cells x latents)")
    variance = qz_mean.var(axis=0)
    mask = variance > threshold
    return ActiveUnits(int(mask.sum()), mask, variance, float(threshold))


def mutual_information(
    qz_mean,
    qz_var,
    n_samples: int = 1,
    seed: int = 0,
    sample_chunk: int = 512,
    cell_chunk: int = 4096,
) -> float:
    r"""Index-code mutual information ``I(x; z)`` between cells and latents, in nats.

    ``I(x; z) = E_x[KL(q(z | x) || q(z))]`` with ``q(z) = (1/N) sum_j q(z | x_j)`` the
    aggregate posterior over the ``N`` given cells (Hoffman & Johnson 2016), estimated as in
    the LIDVAE / lagging-inference-networks code::

        I ~= mean over cells i and samples z ~ q(z | x_i) of  log q(z | x_i) - log q(z),
        log q(z) = logsumexp_j log q(z | x_j) - log N.

    The entropy term ``E[log q(z | x)] = -E[H(q(z | x))]`` is evaluated at the same samples
    as ``log q(z)`` (same expectation as the closed-form entropy, but the sampling noise of
    the two terms cancels: the estimate is exactly 0 when every cell has the same
    posterior).  ``q(z)`` is computed in blocks of ``sample_chunk`` samples x
    ``cell_chunk`` cells (``scipy.special.logsumexp`` over each block, then over the
    blocks), so memory stays bounded (a 16 MB block and logsumexp's temporaries, about
    100 MB by default) for any number of cells; time grows as ``N^2 * n_samples``.  The estimate lies in ``[0, log N]`` up
    to sampling noise: ``log N`` when the posteriors are point masses at distinct places.

    Parameters
    ----------
    qz_mean, qz_var
        ``(n_cells, n_latent)`` means and variances of the diagonal Gaussian posteriors.
    n_samples
        Samples of ``z`` per cell.
    seed
        Seed of the samples.
    """
    mu = np.asarray(qz_mean, np.float64)
    var = np.asarray(qz_var, np.float64)
    if mu.ndim != 2 or mu.shape != var.shape:
        raise ValueError("qz_mean and qz_var must be 2-d arrays of the same shape")
    if not (var > 0).all():
        raise ValueError("qz_var must be positive")
    n, d = mu.shape
    rng = np.random.default_rng(seed)
    # log N(z; mu_j, var_j) = -0.5 [ (z^2) @ (1/var_j) - 2 z @ (mu_j/var_j) + c_j ]
    inv_var = 1.0 / var
    mu_over_var = mu * inv_var
    const = (mu * mu_over_var).sum(1) + np.log(var).sum(1) + d * _LOG_2PI  # (N,)
    z = np.repeat(mu, n_samples, axis=0) + np.sqrt(np.repeat(var, n_samples, axis=0)) * rng.standard_normal(
        (n * n_samples, d)
    )
    owner = np.repeat(np.arange(n), n_samples)
    total = 0.0
    for start in range(0, len(z), sample_chunk):
        zs = z[start:start + sample_chunk]
        own = owner[start:start + sample_chunk]
        log_qzx = -0.5 * (((zs - mu[own]) ** 2 * inv_var[own]).sum(1) + np.log(var[own]).sum(1) + d * _LOG_2PI)
        blocks = []
        for c0 in range(0, n, cell_chunk):
            sl = slice(c0, c0 + cell_chunk)
            log_density = (zs * zs) @ inv_var[sl].T
            log_density -= 2.0 * zs @ mu_over_var[sl].T
            log_density += const[sl]
            log_density *= -0.5
            blocks.append(logsumexp(log_density, axis=1))
        log_qz = logsumexp(np.stack(blocks, 1), axis=1) - math.log(n)
        total += float((log_qzx - log_qz).sum())
    return total / len(z)


def posterior_collapse(
    model,
    adata=None,
    indices=None,
    n_cells: int = 2000,
    seed: int = 0,
    batch_size: int = 256,
    n_kl_samples: int = 16,
    threshold: float = 0.01,
) -> dict:
    """Posterior-collapse diagnostics of a trained model, JSON-ready.

    Runs the encoder (``model.module.inference``, in eval mode and without gradients) on at
    most ``n_cells`` cells drawn at random (``seed``) from ``indices`` (all cells of
    ``adata`` when None; ``adata`` defaults to the model's registered AnnData), and
    reports:

    ``active_units``, ``active_mask``, ``latent_variance``
        :func:`active_units` of the posterior means (``Var_x E[z|x] > threshold``).
    ``kl_per_latent``, ``kl_total``
        The mean over cells of ``KL(q(z_i | x) || p(z_i | a))`` per latent, a Monte Carlo
        estimate with ``n_kl_samples`` samples per cell of
        ``log q(z_i | x) - log p(z_i | a)``, where ``log p`` is the prior's exact per-latent
        marginal (``model.module.prior.log_prob``); ``kl_total`` is their sum.  A latent
        with a KL near 0 carries no information about its cells.
    ``mutual_information``
        :func:`mutual_information` of the cells' posteriors (nats; at most ``log n_cells``).
    ``n_cells``, ``n_kl_samples``, ``active_threshold``
        What the numbers were computed on.
    """
    import torch

    adata = model._validate_anndata(adata)
    pool = np.arange(adata.n_obs) if indices is None else np.asarray(indices, dtype=int)
    if len(pool) == 0:
        raise ValueError("no cells to compute the posterior-collapse diagnostics on")
    rng = np.random.default_rng(seed)
    if len(pool) > n_cells:
        pool = np.sort(rng.choice(pool, size=n_cells, replace=False))
    gen = torch.Generator().manual_seed(int(seed))
    module = model.module
    was_training = module.training
    module.eval()
    means, variances, kl_sums = [], [], np.zeros(module.n_latent, dtype=np.float64)
    try:
        with torch.inference_mode():
            loader = model._make_data_loader(adata=adata, indices=pool, batch_size=batch_size)
            for tensors in loader:
                inference = module.inference(**module._get_inference_input(tensors))
                qz, pert_idx = inference["qz"], inference["pert_idx"]
                loc, scale = qz.loc, qz.scale
                eps = torch.randn((n_kl_samples, *loc.shape), generator=gen).to(device=loc.device, dtype=loc.dtype)
                z = loc + scale * eps
                log_q = -0.5 * (eps.square() + _LOG_2PI) - torch.log(scale)
                log_p = module.prior.log_prob(z, pert_idx)
                kl_sums += (log_q - log_p).mean(0).sum(0).double().cpu().numpy()
                means.append(loc.double().cpu().numpy())
                variances.append(scale.square().double().cpu().numpy())
    finally:
        module.train(was_training)
    mean = np.concatenate(means)
    var = np.concatenate(variances)
    units = active_units(mean, threshold)
    kl = kl_sums / len(mean)
    return {
        "active_units": units.count,
        "active_mask": [bool(v) for v in units.mask],
        "active_threshold": float(threshold),
        "latent_variance": [float(v) for v in units.variance],
        "kl_per_latent": [float(v) for v in kl],
        "kl_total": float(kl.sum()),
        "mutual_information": mutual_information(mean, var, n_samples=1, seed=seed),
        "n_cells": len(mean),
        "n_kl_samples": int(n_kl_samples),
    }
