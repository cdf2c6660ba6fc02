"""Recovery metrics against a known truth (simulations).

- :func:`mean_correlation_coefficient` (MCC): the mean absolute correlation between true
  and learned latents after matching them one-to-one with the Hungarian algorithm on the
  absolute correlations (Pearson or Spearman).
- :func:`graph_scores`: precision, recall and F1 of the learned perturbation -> latent graph
  (probabilities thresholded at 0.5) after permuting the learned latents by the same
  matching.

When there are more learned latents than true ones, the extra learned latents are left
unmatched (they do not count in MCC; their graph edges count as false positives).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats
from scipy.optimize import linear_sum_assignment

__all__ = ["MCCResult", "mean_correlation_coefficient", "graph_scores", "recovery_summary"]


@dataclass(frozen=True)
class MCCResult:
    mcc: float
    #: learned latent matched to each true latent (index into the learned columns)
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


def mean_correlation_coefficient(true, learned, method: str = "pearson") -> MCCResult:
    """MCC between true (cells x k) and learned (cells x m, m >= k) latents."""
    true, learned = np.asarray(true, float), np.asarray(learned, float)
    if true.shape[0] != learned.shape[0]:
        raise ValueError("true and learned latents must have the same number of cells")
    corr = _abs_corr(true, learned, method)
    rows, cols = linear_sum_assignment(-corr)
    assignment = np.full(true.shape[1], -1)
    assignment[rows] = cols
    return MCCResult(float(corr[rows, cols].sum() / true.shape[1]), assignment, corr)


def graph_scores(true_graph: pd.DataFrame, learned_graph: pd.DataFrame, assignment, threshold: float = 0.5) -> dict:
    """Precision / recall / F1 of ``learned_graph > threshold`` against the 0/1 ``true_graph``.

    Rows are aligned by perturbation name (the true graph's rows that the learned graph
    has); learned column ``assignment[j]`` is compared with true column ``j``.
    """
    rows = [p for p in true_graph.index if p in learned_graph.index]
    truth = true_graph.loc[rows].to_numpy().astype(bool)
    learned = learned_graph.loc[rows].to_numpy() > threshold
    matched = np.zeros_like(truth)
    for j, col in enumerate(np.asarray(assignment)):
        if col >= 0:
            matched[:, j] = learned[:, col]
    unmatched = np.setdiff1d(np.arange(learned.shape[1]), np.asarray(assignment))
    extra_fp = int(learned[:, unmatched].sum()) if len(unmatched) else 0
    tp = int((matched & truth).sum())
    fp = int((matched & ~truth).sum()) + extra_fp
    fn = int((~matched & truth).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": fp, "fn": fn}


def recovery_summary(true_latent, learned_latent, true_graph: pd.DataFrame, learned_graph: pd.DataFrame) -> dict:
    """MCC (Pearson and Spearman) and graph scores in one dictionary."""
    pearson = mean_correlation_coefficient(true_latent, learned_latent, "pearson")
    spearman = mean_correlation_coefficient(true_latent, learned_latent, "spearman")
    out = {"mcc_pearson": pearson.mcc, "mcc_spearman": spearman.mcc}
    out.update({f"graph_{k}": v for k, v in graph_scores(true_graph, learned_graph, pearson.assignment).items()})
    return out
