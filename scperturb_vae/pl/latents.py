"""The latents of cells: an embedding coloured by each latent (:func:`latents`) and the mean
latent per perturbation (:func:`latents_by_perturbation`)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

from scperturb_vae.errors import InputError
from scperturb_vae.get.fitted import latent as read_latent
from scperturb_vae.get.fitted import latent_names
from scperturb_vae.pl.base import choose_latents, fitted_key, heatmap, panel_grid, single_panel
from scperturb_vae.pl.base import save as save_figure

__all__ = ["latents", "latents_by_perturbation"]


def latents(
    adata,
    *,
    key: str | None = None,
    basis: str = "umap",
    latents: Sequence[str | int] | None = None,
    ncols: int = 4,
    point_size: float | None = None,
    cmap: str = "RdBu_r",
    ax=None,
    save: str | os.PathLike | None = None,
):
    """An embedding coloured by each latent: one panel per latent.

    Parameters
    ----------
    adata
        A fitted AnnData with the embedding in ``obsm["X_" + basis]`` (e.g. after
        ``sc.pp.neighbors(adata, use_rep="X_svae"); sc.tl.umap(adata)``).
    key
        The fitted key (default: the only one).
    basis
        The embedding: ``"umap"`` reads ``obsm["X_umap"]`` (its first two columns).
    latents
        Latent names or indices (default: all).
    ncols
        Panels per row (without ``ax``).
    point_size
        Marker size (default from the number of cells).
    cmap
        Colour map, centred on 0 (limits: the 99th percentile of each latent's absolute
        values).
    ax
        One Axes per latent.
    save
        Write the figure to this path.

    Returns
    -------
    matplotlib.figure.Figure
        Per latent one panel (title: the latent's name; axis labels ``UMAP1``, ``UMAP2``)
        and its colour bar; unused grid cells are removed.
    """

    k = fitted_key(adata, key)
    obsm_key = basis if basis in adata.obsm else "X_" + basis
    if obsm_key not in adata.obsm:
        raise InputError(f"adata.obsm has no {'X_' + basis!r}; compute it first (sc.pp.neighbors(adata, "
                         f"use_rep='X_{k}'); sc.tl.{basis}(adata)) or pass another basis=")
    coords = np.asarray(adata.obsm[obsm_key], dtype=float)
    if coords.ndim != 2 or coords.shape[1] < 2:
        raise InputError(f"adata.obsm[{obsm_key!r}] needs at least two columns")
    names = latent_names(adata.uns[k])
    chosen = choose_latents(names, latents)
    values = read_latent(adata, k)
    if isinstance(ncols, bool) or not isinstance(ncols, (int, np.integer)) or ncols < 1:
        raise InputError(f"ncols must be a positive integer, not {ncols!r}")
    label = basis.removeprefix("X_")
    label = label.upper() if label.lower() in ("umap", "tsne", "pca") else label
    size = point_size if point_size is not None else float(np.clip(12000.0 / max(adata.n_obs, 1), 0.5, 20.0))
    fig, axes = panel_grid(ax, len(chosen), int(ncols), (3.3, 3.0), "latents")
    order = np.random.default_rng(0).permutation(adata.n_obs)  # no colour drawn systematically on top
    for panel, name in zip(axes, chosen):
        v = values[:, names.index(name)]
        limit = float(np.nanpercentile(np.abs(v), 99)) if v.size else 1.0
        limit = limit if limit > 0 else 1.0
        points = panel.scatter(coords[order, 0], coords[order, 1], c=v[order], s=size, cmap=cmap, vmin=-limit,
                               vmax=limit, linewidths=0, rasterized=True)
        panel.set_title(name)
        panel.set_xlabel(f"{label}1")
        panel.set_ylabel(f"{label}2")
        panel.set_xticks([])
        panel.set_yticks([])
        fig.colorbar(points, ax=panel, fraction=0.05, pad=0.02)
    save_figure(fig, save)
    return fig


def latents_by_perturbation(
    adata,
    *,
    key: str | None = None,
    perturbations: Sequence[str] | None = None,
    latents: Sequence[str | int] | None = None,
    cmap: str = "RdBu_r",
    ax=None,
    save: str | os.PathLike | None = None,
):
    """Mean of each latent's posterior means per perturbation label (control first).

    Parameters
    ----------
    adata
        A fitted AnnData.
    key
        The fitted key (default: the only one).
    perturbations
        Labels to show, in this order (default: the control, then every other label
        sorted).
    latents
        Latent names or indices (default: all).
    cmap
        Colour map, centred on 0.
    ax
        One Axes.
    save
        Write the figure to this path.

    Returns
    -------
    matplotlib.figure.Figure
        A heatmap (x: latents, y: perturbation labels) with its colour bar.
    """

    k = fitted_key(adata, key)
    entry = adata.uns[k]
    pkey, control = str(entry.get("perturbation_key")), str(entry.get("control_label"))
    if pkey not in adata.obs:
        raise InputError(f"adata.obs has no perturbation column {pkey!r} (recorded in uns[{k!r}])")
    names = latent_names(entry)
    chosen = choose_latents(names, latents)
    labels = adata.obs[pkey].astype(str).to_numpy()
    present = set(labels)
    if perturbations is None:
        rows = ([control] if control in present else []) + sorted(present - {control})
    else:
        rows = [str(p) for p in ([perturbations] if isinstance(perturbations, str) else perturbations)]
        missing = [p for p in rows if p not in present]
        if missing:
            raise InputError(f"perturbation(s) {', '.join(missing[:5])} not in adata.obs[{pkey!r}]")
    z = read_latent(adata, k)[:, [names.index(n) for n in chosen]]
    means = pd.DataFrame(z).groupby(labels).mean().reindex(rows)
    values = means.to_numpy(dtype=float)
    limit = float(np.nanmax(np.abs(values))) if values.size else 1.0
    limit = limit if limit > 0 else 1.0
    size = (float(np.clip(0.35 * len(chosen) + 3.0, 4.0, 20.0)), float(np.clip(0.16 * len(rows) + 1.8, 3.0, 30.0)))
    fig, panel = single_panel(ax, size, "latents_by_perturbation")
    image = heatmap(panel, values, rows, chosen, cmap=cmap, vmin=-limit, vmax=limit,
                    title=f"mean latent per perturbation ({k})", xlabel="latent", ylabel="perturbation")
    fig.colorbar(image, ax=panel, fraction=0.05, pad=0.02, label="mean posterior mean")
    save_figure(fig, save)
    return fig
