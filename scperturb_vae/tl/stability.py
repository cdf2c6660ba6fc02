"""How reproducible a learned graph is: runs of different seeds on one screen compared through the truth.

- :func:`matched_edges`: a run's edges named by the true latents they were matched to;
- :func:`edge_jaccard`: each run's mean Jaccard index with the other runs' edges.

``scvae benchmark --data-seed`` reports :func:`edge_jaccard` per run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["matched_edges", "edge_jaccard"]


def matched_edges(true_graph: pd.DataFrame, learned_graph: pd.DataFrame, assignment: Mapping[str, Any],
                  threshold: float = 0.5) -> set:
    """The learned edges above ``threshold`` named by the truth: ``(perturbation, true latent)``.

    ``assignment`` maps each true latent's name to the learned latent matched to it (None:
    none), as a score's ``assignment`` does; an edge on an unmatched learned latent is named
    ``(perturbation, "unmatched:<latent>")``.  Runs of different seeds on one screen are
    compared through these names (:func:`edge_jaccard`).
    """
    rows = [p for p in true_graph.index if p in learned_graph.index]
    learned = learned_graph.loc[rows]
    names = {str(col): str(true) for true, col in assignment.items() if col is not None}
    values = learned.to_numpy(dtype=float) > threshold
    return {
        (str(rows[i]), names.get(str(learned.columns[j]), f"unmatched:{learned.columns[j]}"))
        for i, j in zip(*np.nonzero(values))
    }


def edge_jaccard(edge_sets: Sequence[set]) -> np.ndarray:
    """For each edge set, its mean Jaccard index with every other set (NaN for a single set).

    Two empty sets agree (Jaccard 1).  The mean over the returned values is the mean
    pairwise Jaccard: how reproducible a graph is across training seeds.
    """
    n = len(edge_sets)
    out = np.full(n, np.nan)
    if n < 2:
        return out
    for i, a in enumerate(edge_sets):
        values = []
        for j, b in enumerate(edge_sets):
            if i != j:
                union = len(a | b)
                values.append(len(a & b) / union if union else 1.0)
        out[i] = float(np.mean(values))
    return out
