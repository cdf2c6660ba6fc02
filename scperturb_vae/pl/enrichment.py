"""Gene-set enrichment of the latents (:func:`scperturb_vae.tl.enrich`) as a dot plot:
latents x their best gene sets (``scvae interpret``'s ``enrichment_dotplot.png`` too)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from scperturb_vae.errors import InputError
from scperturb_vae.pl.base import choose_latents, is_adata, label_size, single_panel
from scperturb_vae.pl.base import save as save_figure

__all__ = ["MARKERS", "enrichment"]


MARKERS = {"up": "^", "down": "v", "any": "o"}


def _table(data, key: str | None) -> pd.DataFrame:
    """The enrichment table of an AnnData (``uns[key]["enrichment"]``) or the table itself, checked."""
    from scperturb_vae.tl.enrichment import ENRICHMENT_COLUMNS

    if is_adata(data):
        keys = [k for k, v in data.uns.items() if isinstance(v, Mapping) and isinstance(v.get("enrichment"),
                                                                                          pd.DataFrame)]
        if key is None:
            if len(keys) != 1:
                raise InputError("adata holds no enrichment table; run tl.enrich first" if not keys else
                                 f"adata holds enrichment tables of several models ({', '.join(keys)}); pass key=")
            key = keys[0]
        elif key not in keys:
            raise InputError(f"adata.uns[{key!r}] has no enrichment table; run tl.enrich first")
        table = data.uns[key]["enrichment"]
    elif isinstance(data, pd.DataFrame):
        table = data
    else:
        raise InputError(f"enrichment takes an AnnData or an enrichment table, not {type(data).__name__}")
    missing = [c for c in ENRICHMENT_COLUMNS if c not in table.columns]
    if missing:
        raise InputError(f"the enrichment table lacks column(s) {', '.join(missing)}; make it with tl.enrich")
    table = table.copy()
    table["latent"] = table["latent"].astype(str)
    return table


def _best_sets(table: pd.DataFrame, test: str, cols: Sequence[str], per_latent: int, max_sets: int):
    """``(best, chosen)``: each (latent, set)'s best row for ``test``, and the sets shown."""
    sub = table[(table["test"] == test) & table["fdr"].notna()]
    sub = sub.sort_values(["fdr", "pvalue"], kind="mergesort")
    best = sub.drop_duplicates(subset=["latent", "source", "gene_set"])
    chosen: list[tuple[str, str]] = []
    for latent in cols:
        rows = best[best["latent"] == latent][["source", "gene_set"]].head(per_latent)
        for src, name in rows.itertuples(index=False):
            if (src, name) not in chosen and len(chosen) < max_sets:
                chosen.append((src, name))
    return best, chosen


def _dots(panel, best: pd.DataFrame, test: str, cols: Sequence[str], chosen: Sequence[tuple[str, str]]):
    """Scatter the shown (latent, set) pairs; returns the last scatter (for the colour bar) or None."""
    position = {pair: y for y, pair in enumerate(chosen)}
    column = {latent: x for x, latent in enumerate(cols)}
    shown = best[[(s, g) in position and lat in column
                  for lat, s, g in zip(best["latent"], best["source"], best["gene_set"])]]
    stat = shown["statistic"].to_numpy(dtype=float)
    if test == "ora":
        stat = np.log2(np.where(stat > 0, stat, np.nan))
    low, high = (np.nanmin(stat), np.nanmax(stat)) if np.isfinite(stat).any() else (0.0, 1.0)
    high = high if high > low else low + 1.0
    scatter = None
    for direction, marker in MARKERS.items():
        rows = (shown["direction"] == direction).to_numpy()
        if not rows.any():
            continue
        part = shown[rows]
        size = np.minimum(-np.log10(np.maximum(part["fdr"].to_numpy(dtype=float), 1e-300)), 10.0)
        scatter = panel.scatter([column[x] for x in part["latent"]],
                                [position[(s, g)] for s, g in zip(part["source"], part["gene_set"])],
                                s=14 + 30 * size, c=stat[rows], cmap="viridis", vmin=low, vmax=high, marker=marker,
                                edgecolors="0.25", linewidths=0.4)
    return scatter


def _axes_and_legend(fig, panel, scatter, test: str, cols: Sequence[str], chosen: Sequence[tuple[str, str]]) -> None:
    panel.set_xticks(range(len(cols)))
    panel.set_xticklabels(cols, rotation=90, fontsize=label_size(len(cols)))
    panel.set_yticks(range(len(chosen)))
    panel.set_yticklabels([f"{name[:55]} [{src}]" for src, name in chosen], fontsize=label_size(len(chosen)))
    panel.set_xlim(-0.6, len(cols) - 0.4)
    panel.set_ylim(len(chosen) - 0.4, -0.6)
    panel.grid(True, color="0.92", linewidth=0.5)
    panel.set_axisbelow(True)
    if scatter is not None:
        fig.colorbar(scatter, ax=panel, shrink=0.8, pad=0.01,
                     label="log2 fold enrichment" if test == "ora" else "AUC (rank-sum)")
    for value in (1.0, 3.0, 10.0):
        panel.scatter([], [], s=14 + 30 * value, c="0.6", edgecolors="0.25", linewidths=0.4,
                      label=f"FDR {10 ** -value:.2g}" if value < 10 else "FDR <= 1e-10")
    for direction, marker in MARKERS.items():
        panel.scatter([], [], s=40, c="white", edgecolors="0.25", marker=marker, label=direction)
    panel.legend(loc="lower center", bbox_to_anchor=(0.5, 1.06), ncol=6, frameon=False, fontsize=7,
                 columnspacing=1.6, handletextpad=0.6)


def enrichment(
    data,
    *,
    key: str | None = None,
    latents: Sequence[str] | None = None,
    test: str | None = None,
    per_latent: int = 3,
    max_sets: int = 40,
    ax=None,
    save: str | os.PathLike | None = None,
):
    """Dot plot of gene-set enrichment: latents x their best gene sets.

    Dot size: ``-log10 FDR`` (capped at 10); colour: the log2 fold enrichment (``ora``) or
    the AUC (``rank``); marker: the direction with the smallest FDR (triangle up ``up``,
    triangle down ``down``, circle ``any``).  For each latent its ``per_latent`` best sets
    (by FDR) are shown, at most ``max_sets`` sets in all.

    Parameters
    ----------
    data
        An AnnData after :func:`scperturb_vae.tl.enrich` (``uns[key]["enrichment"]``), or
        the table it returns.
    key
        The key (default: the only one holding an enrichment table).
    latents
        Latents (columns), in this order (default: all latents of the table).
    test
        ``"ora"`` or ``"rank"`` (default: ``"ora"`` when present).
    ax
        One Axes.
    save
        Write the figure to this path.

    Returns
    -------
    matplotlib.figure.Figure
        x: latents, y: gene sets (``name [source]``), a colour bar and a legend.
    """
    table = _table(data, key)
    if test is None:
        test = "ora" if (table["test"] == "ora").any() else "rank"
    if test not in ("ora", "rank"):
        raise InputError(f"test must be 'ora' or 'rank', not {test!r}")
    all_latents = list(dict.fromkeys(table["latent"]))
    cols = all_latents if latents is None else choose_latents(all_latents, latents)
    best, chosen = _best_sets(table, test, cols, per_latent, max_sets)
    size = (float(np.clip(0.45 * len(cols) + 6.5, 7.0, 22.0)), float(np.clip(0.28 * len(chosen) + 2.4, 3.2, 16.0)))
    fig, panel = single_panel(ax, size, "enrichment")
    panel.set_title(f"gene-set enrichment ({test}): best {per_latent} per latent")
    panel.set_xlabel("latent")
    panel.set_ylabel("gene set")
    if not chosen:
        panel.text(0.5, 0.5, f"no gene set tested with {test}", ha="center", va="center", transform=panel.transAxes)
        panel.set_xticks([])
        panel.set_yticks([])
    else:
        _axes_and_legend(fig, panel, _dots(panel, best, test, cols, chosen), test, cols, chosen)
    save_figure(fig, save)
    return fig
