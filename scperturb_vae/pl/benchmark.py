"""The plots of ``scvae benchmark``: metrics per model over seeds (``metrics.png``) and the
learned graphs beside the simulation's true one (``graph_seed*.png``)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from scperturb_vae.pl.base import new_figure
from scperturb_vae.pl.graph import graph_heatmaps

__all__ = ["learned_vs_true_graphs", "metrics_by_model"]


def _metric_panel(ax, results: pd.DataFrame, models: Sequence[str], metric: str, title: str) -> None:
    """One metric: grey points per seed, red mean +- sd per model (``n/a`` without values)."""
    x = np.arange(len(models))
    ax.set_title(title)
    ax.set_xticks(x)
    ax.set_xticklabels(models, rotation=30)
    values_any = False
    for i, model in enumerate(models):
        part = results[results["model"] == model]
        values = pd.to_numeric(part.get(metric, pd.Series(dtype=float)), errors="coerce").to_numpy(float)
        values = values[np.isfinite(values)]
        if not len(values):
            continue
        values_any = True
        jitter = np.linspace(-0.12, 0.12, len(values)) if len(values) > 1 else np.zeros(1)
        ax.scatter(i + jitter, values, s=14, color="0.55", zorder=2)
        sd = values.std(ddof=1) if len(values) > 1 else 0.0
        ax.errorbar(i + 0.3, values.mean(), yerr=sd, fmt="o", color="C3", capsize=3, zorder=3)
    if not values_any:
        ax.text(0.5, 0.5, "n/a", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlim(-0.6, len(models) - 0.3)


def metrics_by_model(results: pd.DataFrame, models: Sequence[str], metrics: Sequence[str],
                     labels: Mapping[str, str], title: str, ncols: int = 4):
    """One panel per metric (titled ``labels[metric]``): the seeds' values of each model.

    ``results`` holds one row per model and seed (``model`` column, one column per metric).
    Returns the :class:`matplotlib.figure.Figure`.
    """
    nrows = math.ceil(len(metrics) / ncols)
    fig, axes = new_figure(nrows, ncols, (3.3 * ncols, 3.0 * nrows), layout=None)
    for ax, metric in zip(axes.ravel(), metrics):
        _metric_panel(ax, results, models, metric, labels.get(metric, metric))
    for ax in axes.ravel()[len(metrics):]:
        ax.axis("off")
    fig.suptitle(f"{title}: grey points = seeds, red = mean ± sd")
    fig.tight_layout()
    return fig


def learned_vs_true_graphs(true_graph: pd.DataFrame, learned: Mapping[str, pd.DataFrame], title: str):
    """The true graph, then each model's learned graph (aligned to it), one colour bar.

    Returns the :class:`matplotlib.figure.Figure`.
    """
    panels = [(true_graph.astype(float), "truth")] + [(graph, name) for name, graph in learned.items()]
    height = min(14.0, max(3.8, 2.4 + 0.14 * true_graph.shape[0]))
    return graph_heatmaps(panels, (2.2 + 2.0 * len(panels), height), colorbar_label="edge score",
                          shared_colorbar=True, suptitle=f"{title}: learned latents permuted to match the true ones")
