"""Latent traversals: decoded log expression of genes as a latent moves around real cells.

:func:`traversal_panels` is the one drawer of traversal curves: :func:`traversal`
(notebooks) and ``scvae interpret``'s ``traversals.png`` draw with it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from scperturb_vae.errors import InputError
from scperturb_vae.get.fitted import GENE_EFFECTS_SUFFIX, fitted_keys
from scperturb_vae.get.fitted import gene_effects as read_gene_effects
from scperturb_vae.get.fitted import graph as read_graph
from scperturb_vae.get.fitted import latent as read_latent
from scperturb_vae.pl.base import choose_latents, new_figure, panel_grid
from scperturb_vae.pl.base import save as save_figure

__all__ = ["draw_traversal", "traversal", "traversal_panels"]


def draw_traversal(panel, name: str, frame: pd.DataFrame, effects: pd.DataFrame | None = None) -> None:
    """One latent's traversal on ``panel``: each gene's change from the cells' own latents.

    ``frame``: shifts x genes (:func:`scperturb_vae.model.interpretability.latent_traversal`).
    Solid lines for genes the latent raises, dashed for genes it lowers (the sign of
    ``effects.loc[name, gene]`` when known, else of the change along the traversal).
    """
    x = frame.index.to_numpy(dtype=float)
    centre = int(np.argmin(np.abs(x)))
    for g in frame.columns:
        curve = frame[g].to_numpy(dtype=float) - frame[g].to_numpy(dtype=float)[centre]
        rising = (effects.loc[name, g] if effects is not None and g in effects.columns
                  else curve[np.argmax(x)] - curve[np.argmin(x)]) >= 0
        panel.plot(x, curve, marker="o", markersize=2.5, linewidth=1.2, linestyle="-" if rising else "--",
                   label=str(g))
    panel.axhline(0.0, color="0.7", linewidth=0.6)
    panel.axvline(0.0, color="0.7", linewidth=0.6)
    panel.set_xlabel(f"{name} shift (sd units; sd = {frame.attrs.get('latent_sd', float('nan')):.2f})")
    panel.set_ylabel("change in decoded log expression")
    panel.set_title(name)
    panel.legend(fontsize=7, frameon=False, ncol=2)


def traversal_panels(frames: Mapping[str, pd.DataFrame], effects: pd.DataFrame | None = None, *, ncols: int = 2,
                     ax=None):
    """One panel per latent of ``frames`` (latent -> traversal), ``ncols`` per row; returns the figure.

    Without any latent, one empty panel says so.
    """
    if not frames and ax is None:
        fig, grid = new_figure(1, 1, (5.0, 3.5))
        grid[0, 0].text(0.5, 0.5, "no latent to traverse", ha="center", va="center")
        return fig
    fig, axes = panel_grid(ax, len(frames), ncols, (5.0, 3.5), "traversal")
    for panel, (name, frame) in zip(axes, frames.items()):
        draw_traversal(panel, name, frame, effects)
    return fig


def _traversal_key(adata, trained, key: str | None) -> str | None:
    """The fitted key of ``trained`` in ``adata`` (the given one, checked, or the only one of its class)."""
    if key is None:
        keys = [x for x in fitted_keys(adata) if str(adata.uns[x].get("model_class")) == type(trained).__name__]
        return keys[0] if len(keys) == 1 else None
    if key not in adata.uns:
        raise InputError(f"no fitted model under key {key!r} in adata.uns")
    return key


def _traversal_latents(adata, k: str | None, names: list[str], latents) -> list[str]:
    """The latents given, or the default ones (:func:`scperturb_vae.tl.targets.default_traversal_latents`)."""
    from scperturb_vae.tl.targets import default_traversal_latents, perturbation_targets

    if latents is not None:
        return choose_latents(names, latents)
    if k is None:
        raise InputError("give latents= (or fit the model with tl.fit so that the graph picks them)")
    z = read_latent(adata, k)
    sd = {n: float(s) for n, s in zip(names, z.std(axis=0))}
    return default_traversal_latents(perturbation_targets(read_graph(adata, k)), names, sd)


def _stored_effects(adata, k: str | None, chosen: Sequence[str]) -> pd.DataFrame | None:
    """The stored gene effects (latents x genes) when they cover ``chosen``, else None."""
    if k is None or (k + GENE_EFFECTS_SUFFIX) not in adata.varm:
        return None
    effects = read_gene_effects(adata, k)
    return effects if set(chosen) <= set(effects.index) else None


def traversal(
    adata,
    model,
    latents: Sequence[str | int] | str | int | None = None,
    *,
    key: str | None = None,
    genes: Sequence[str] | None = None,
    n_genes: int = 6,
    values: Sequence[float] | None = None,
    n_cells: int = 500,
    seed: int = 0,
    ncols: int = 2,
    ax=None,
    save: str | os.PathLike | None = None,
):
    """Decoded log expression of genes as latents move around real cells.

    :func:`scperturb_vae.model.interpretability.latent_traversal` per latent, drawn as the change from
    the cells' own latents (shift 0); solid lines for genes the latent raises, dashed for
    genes it lowers.

    Parameters
    ----------
    adata
        The cells (with the model's genes).
    model
        A trained model or a run folder.
    latents
        Latent names or indices.  Default: the 4 latents with the most targeting
        perturbations in ``uns[key]``'s graph (ties by larger spread), as ``scvae
        interpret`` chooses them.
    key
        The fitted key, for the default latents and the gene effects (default: the only
        one, when there is one).
    genes
        Genes drawn in every panel.  Default: the latent's ``n_genes`` strongest genes, half
        up and half down, from ``adata.varm[key + "_gene_effects"]`` when present, else the
        ``n_genes`` genes that change most along the latent.
    values
        Shifts in standard deviations of the latent (default -2 ... 2 in 9 steps).
    n_cells, seed
        Cells averaged over and the seed of their sample.
    ncols
        Panels per row (without ``ax``).
    ax
        One Axes per latent.
    save
        Write the figure to this path.

    Returns
    -------
    matplotlib.figure.Figure
        One panel per latent: title the latent's name, x "LATENT shift (sd units...)",
        y "change in decoded log expression", a legend of the genes.
    """
    from scperturb_vae.model.interpretability import DEFAULT_TRAVERSAL_VALUES, latent_traversal
    from scperturb_vae.tl.store import as_model
    from scperturb_vae.tl.targets import top_genes

    trained, _ = as_model(model)
    names = [str(x) for x in trained.latent_names]
    k = _traversal_key(adata, trained, key)
    chosen = _traversal_latents(adata, k, names, latents)
    effects = _stored_effects(adata, k, chosen) if genes is None else None
    if isinstance(n_genes, bool) or not isinstance(n_genes, (int, np.integer)) or n_genes < 1:
        raise InputError(f"n_genes must be a positive integer, not {n_genes!r}")
    shifts = DEFAULT_TRAVERSAL_VALUES if values is None else values
    frames = {}
    for name in chosen:
        panel_genes = list(genes) if genes is not None else (
            top_genes(effects, name, n_each=max(1, n_genes // 2)) if effects is not None else None)
        frames[name] = latent_traversal(trained, name, values=shifts, n_cells=n_cells, genes=panel_genes, seed=seed,
                                        adata=adata, n_top_genes=n_genes)
    cols = int(ncols) if isinstance(ncols, (int, np.integer)) and ncols > 0 else 2
    fig = traversal_panels(frames, effects, ncols=cols, ax=ax)
    save_figure(fig, save)
    return fig
