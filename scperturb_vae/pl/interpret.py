"""The plots of ``scvae interpret``: the intervention graph, the gene effects, the enrichment
dot plot and the latent traversals of one run (:func:`interpret_figures`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from scperturb_vae.pl.base import label_size, new_figure
from scperturb_vae.pl.enrichment import enrichment as enrichment_dotplot
from scperturb_vae.pl.graph import GRAPH_LABEL, clustered, graph_heatmaps, graph_size
from scperturb_vae.pl.traversal import traversal_panels

__all__ = ["gene_effects_heatmap", "graph_heatmap", "interpret_figures"]


def graph_heatmap(graph: pd.DataFrame, title: str = ""):
    """Perturbations x latents heatmap, rows and columns ordered by hierarchical clustering."""
    values = graph.to_numpy(dtype=float)
    top = float(np.nanmax(values)) if values.size else float("nan")
    panel = (clustered(graph), f"{title or 'intervention graph'}\n(clustered; max {top:.2g})")
    return graph_heatmaps([panel], graph_size(*graph.shape, max_width=20.0), colorbar_label=GRAPH_LABEL)


def gene_effects_heatmap(effects: pd.DataFrame, per_latent: int | None = None):
    """Latents x (their top genes by absolute effect) heatmap, diverging colours around 0."""
    n_lat = effects.shape[0]
    if per_latent is None:
        per_latent = int(np.clip(60 // max(n_lat, 1), 2, 5))
    chosen: list[str] = []
    for latent in effects.index:
        row = effects.loc[latent].astype(float)
        for g in row.abs().sort_values(ascending=False, kind="mergesort").index[:per_latent]:
            if g not in chosen:
                chosen.append(g)
    data = effects[chosen].to_numpy(dtype=float)
    limit = float(np.nanpercentile(np.abs(data), 99)) if data.size else 1.0
    limit = limit if limit > 0 else 1.0
    width = float(np.clip(0.22 * len(chosen) + 3.0, 5.0, 30.0))
    height = float(np.clip(0.3 * n_lat + 2.2, 3.0, 16.0))
    fig, grid = new_figure(1, 1, (width, height), layout=None)
    ax = grid[0, 0]
    image = ax.imshow(data, aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
    ax.set_xticks(range(len(chosen)))
    ax.set_xticklabels(chosen, rotation=90, fontsize=label_size(len(chosen)))
    ax.set_yticks(range(n_lat))
    ax.set_yticklabels(effects.index.astype(str), fontsize=label_size(n_lat))
    fig.colorbar(image, ax=ax, fraction=0.03, pad=0.01, label="effect (log expression per latent sd)")
    ax.set_title(f"top {per_latent} genes per latent by |effect|")
    fig.tight_layout()
    return fig


def interpret_figures(graph: pd.DataFrame, effects: pd.DataFrame, enrichment: pd.DataFrame,
                      latents: Sequence[str], traversals: Mapping[str, pd.DataFrame], run_name: str) -> dict:
    """File name -> figure of the four plots of an interpretation folder.

    ``graph_heatmap.png`` (the run's intervention graph, clustered), ``gene_effects_heatmap.png``
    (:func:`gene_effects_heatmap`), ``enrichment_dotplot.png`` (:func:`scperturb_vae.pl.enrichment`
    of ``latents``: each latent's 3 best sets, at most 40) and ``traversals.png`` (one panel per
    traversed latent, two per row).
    """
    return {
        "graph_heatmap.png": graph_heatmap(graph, f"intervention graph of {run_name}"),
        "gene_effects_heatmap.png": gene_effects_heatmap(effects),
        "enrichment_dotplot.png": enrichment_dotplot(enrichment, latents=list(latents), per_latent=3, max_sets=40),
        "traversals.png": traversal_panels(traversals, effects, ncols=2),
    }
