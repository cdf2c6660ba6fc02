"""Heatmaps of intervention graphs (perturbations x latents, values in [0, 1]).

:func:`graph_heatmaps` is the one drawer of graph heatmaps: :func:`graph` (notebooks),
``scvae interpret``'s ``graph_heatmap.png`` and ``scvae benchmark``'s learned-vs-true
panels all draw with it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

from scperturb_vae.errors import InputError
from scperturb_vae.get.fitted import edge_shifts as read_shifts
from scperturb_vae.get.fitted import graph as read_graph
from scperturb_vae.get.fitted import latent as read_latent
from scperturb_vae.pl.base import cluster_order, fitted_key, given_axes, heatmap, is_adata, new_figure
from scperturb_vae.pl.base import save as save_figure

__all__ = ["GRAPH_LABEL", "clustered", "graph", "graph_heatmaps", "graph_size"]

#: The colour-bar label of a graph heatmap.
GRAPH_LABEL = "P(perturbation moves latent)"


def graph_size(n_rows: int, n_cols: int, n_panels: int = 1, max_width: float = 24.0) -> tuple[float, float]:
    """Figure size of ``n_panels`` graph heatmaps of ``n_rows`` rows and ``n_cols`` columns in all."""
    height = float(np.clip(0.16 * n_rows + 1.8, 3.0, 30.0))
    width = float(np.clip(0.35 * n_cols + 3.0 * n_panels, 4.0, max_width))
    return width, height


def graph_heatmaps(panels: Sequence[tuple[pd.DataFrame, str]], figsize: tuple[float, float], *, ax=None,
                   what: str = "graph", colorbar_label: str = GRAPH_LABEL, shared_colorbar: bool = False,
                   suptitle: str | None = None, signed: bool = False):
    """Draw graphs side by side: one viridis heatmap in [0, 1] per ``(frame, title)``
    (``signed``: a diverging one in [-1, 1], probabilities signed by the shift's direction).

    x: latents, y: perturbations (labelled on the first panel only).  Each panel has its
    colour bar (the label on the last one), or with ``shared_colorbar`` one bar serves all.
    Draws into ``ax`` (one Axes per panel) when given; returns the figure.
    """
    if ax is None:
        fig, grid = new_figure(1, len(panels), figsize)
        axes = list(grid.ravel())
    else:
        axes = given_axes(ax, len(panels), what)
        fig = axes[0].figure
    image = None
    for i, (frame, title) in enumerate(panels):
        image = heatmap(axes[i], frame.to_numpy(dtype=float), list(frame.index), list(frame.columns),
                        cmap="RdBu_r" if signed else "viridis", vmin=-1.0 if signed else 0.0, vmax=1.0, title=title,
                        xlabel="latent", ylabel="perturbation", row_labels=(i == 0))
        if not shared_colorbar:
            fig.colorbar(image, ax=axes[i], fraction=0.05, pad=0.02,
                         label=colorbar_label if i == len(panels) - 1 else None)
    if shared_colorbar and image is not None:
        fig.colorbar(image, ax=axes, shrink=0.6, label=colorbar_label)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    return fig


def clustered(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with rows and columns in the order of their hierarchical clustering."""
    values = frame.to_numpy(dtype=float)
    return frame.iloc[cluster_order(values), cluster_order(values.T)]


def _matched_columns(adata, key: str, truth: pd.DataFrame, learned: pd.DataFrame) -> list:
    """Learned latent matched to each true latent (Hungarian MCC on the latents), or None."""
    from scperturb_vae.tl.metrics import mean_correlation_coefficient

    if "z_true" not in adata.obsm:
        return [None] * truth.shape[1]
    result = mean_correlation_coefficient(np.asarray(adata.obsm["z_true"], dtype=float), read_latent(adata, key))
    return [learned.columns[c] if c >= 0 else None for c in np.asarray(result.assignment)]


#: the colour bar of a signed graph
SIGNED_LABEL = "P(edge), signed by the shift (red: raises, blue: lowers)"


def _learned_graph(data, key: str | None, signed: bool = False):
    """``(graph, default title, fitted key or None)`` of an AnnData or a DataFrame; with
    ``signed`` (and the shifts stored), the probabilities carry the sign of each shift."""
    if is_adata(data):
        k = fitted_key(data, key)
        table = read_graph(data, k)
        shifts = read_shifts(data, k) if signed else None
        if shifts is not None:
            table = table * np.sign(shifts.loc[table.index, table.columns].to_numpy())
        return table, f"intervention graph ({k})", k
    if isinstance(data, pd.DataFrame):
        return data.astype(float), "intervention graph", None
    raise InputError(f"graph takes an AnnData or a DataFrame, not {type(data).__name__}")


def _true_graph(data, truth) -> pd.DataFrame | None:
    if truth is True:
        if not is_adata(data):
            raise InputError("truth=True needs the simulated AnnData; pass the true graph as a DataFrame instead")
        from scperturb_vae.data.simulate import graph_from_adata

        return graph_from_adata(data).astype(float)
    if isinstance(truth, pd.DataFrame):
        return truth.astype(float)
    if truth not in (None, False):
        raise InputError("truth must be True (the simulation's graph), a DataFrame, or None")
    return None


def _graph_panels(data, key, truth, cluster: bool, title: str | None,
                  signed: bool = False) -> list[tuple[pd.DataFrame, str]]:
    """The panels of :func:`graph`: the learned graph, and beside it the true one."""
    learned, default_title, k = _learned_graph(data, key, signed)
    if learned.empty:
        raise InputError("the intervention graph is empty")
    true = _true_graph(data, truth)
    if true is None:
        return [(clustered(learned) if cluster else learned, title or default_title)]
    common = [p for p in true.index.astype(str) if p in set(learned.index.astype(str))]
    if not common:
        raise InputError("the learned and the true graph share no perturbation")
    true = true.loc[common]
    learned = learned.loc[common]
    matched = _matched_columns(data, k, true, learned) if k is not None else [None] * true.shape[1]
    order = [c for c in matched if c is not None]
    order += [c for c in learned.columns if c not in order]  # unmatched learned latents last
    rows = cluster_order(true.to_numpy(dtype=float)) if cluster else np.arange(len(common))
    return [
        (learned.iloc[rows][order], title or default_title + (" matched to the truth" if k is not None else "")),
        (true.iloc[rows], "true graph"),
    ]


def graph(
    data,
    *,
    key: str | None = None,
    truth=None,
    cluster: bool = True,
    title: str | None = None,
    signed: bool = True,
    ax=None,
    save: str | os.PathLike | None = None,
):
    """Heatmap of an intervention graph: P(perturbation moves latent), in [0, 1].

    Parameters
    ----------
    data
        An AnnData fitted by :func:`scperturb_vae.tl.fit` (its ``uns[key]["intervention_graph"]``)
        or a perturbations x latents DataFrame.
    key
        The fitted key (default: the only one).
    truth
        ``True`` (the simulation's true graph, ``adata.uns["simulation"]``) or a 0/1
        DataFrame: drawn in a second panel.  The learned latents are then put in the order
        of the true latents they match (the Hungarian assignment of
        :func:`scperturb_vae.tl.metrics.mean_correlation_coefficient` between
        ``obsm["z_true"]`` and the model's latents), so a recovered graph looks like the
        truth; rows are the true graph's perturbations.
    cluster
        Order rows and columns by hierarchical clustering (without ``truth``), or the rows
        by the true graph's clustering (with ``truth``).
    title
        Title of the (learned) panel.
    signed
        Colour each probability by the direction of the perturbation's shift (a diverging
        map in [-1, 1]: red raises the latent, blue lowers it), where the AnnData holds the
        shifts (``uns[key]["edge_shift_sd"]``) and no ``truth`` is drawn.
    ax
        One Axes (two with ``truth``).
    save
        Write the figure to this path.

    Returns
    -------
    matplotlib.figure.Figure
        One heatmap panel per graph, each with a colour bar; x: latents, y: perturbations
        (labelled when at most 150).
    """
    signed = bool(signed and (truth is None or truth is False) and is_adata(data)
                  and read_shifts(data, fitted_key(data, key)) is not None)
    panels = _graph_panels(data, key, truth, cluster, title, signed)
    size = graph_size(panels[0][0].shape[0], sum(p[0].shape[1] for p in panels), len(panels))
    fig = graph_heatmaps(panels, size, ax=ax, what="graph" + (" with truth" if len(panels) > 1 else ""),
                         signed=signed, colorbar_label=SIGNED_LABEL if signed else GRAPH_LABEL)
    save_figure(fig, save)
    return fig
