"""The graph against the data (:func:`scperturb_vae.tl.graph_data.graph_vs_data`) as one figure.

Each perturbation is a point: x its number of DE genes against control (measured from the
counts alone), y its strongest edge probability in the learned graph; the colour says whether
graph and data agree.  Points in the lower right (a clear effect, no edge) and the upper left
(an edge, no measurable effect) are the disagreements a user should look at; they are named.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from scperturb_vae.errors import InputError
from scperturb_vae.pl.base import save as save_figure
from scperturb_vae.pl.base import single_panel

__all__ = ["graph_vs_data"]

_COLOURS = {
    "agree": "#4c72b0",
    "effect without edge": "#dd8452",
    "edge without effect": "#c44e52",
    "not in graph": "#999999",
}


def _table(data, key: str | None) -> pd.DataFrame:
    if isinstance(data, pd.DataFrame):
        return data
    from scperturb_vae.get.fitted import resolve_key

    key = resolve_key(data, key)
    table = data.uns[key].get("graph_vs_data")
    if not isinstance(table, pd.DataFrame):
        raise InputError(f"adata.uns[{key!r}] has no graph_vs_data table; run sv.tl.graph_vs_data first")
    return table


def graph_vs_data(data, *, key: str | None = None, threshold: float = 0.5, max_labels: int = 25,
                  title: str | None = None, ax=None, save: str | os.PathLike | None = None):
    """DE genes (x, log scale) against the strongest edge probability (y), per perturbation.

    ``data`` is the table of :func:`scperturb_vae.tl.graph_data.graph_vs_data` or an AnnData
    on which :func:`scperturb_vae.tl.graph_vs_data` ran (``key``: which model).  Disagreeing
    perturbations are labelled (at most ``max_labels``, the largest effects first).
    """
    table = _table(data, key)
    fig, panel = single_panel(ax, (6.4, 4.6), "graph_vs_data")
    x = np.log10(1 + table["n_de"].to_numpy(dtype=float))
    y = table["max_probability"].to_numpy(dtype=float)
    y = np.where(np.isfinite(y), y, -0.05)
    for verdict, colour in _COLOURS.items():
        rows = (table["verdict"] == verdict).to_numpy()
        if rows.any():
            panel.scatter(x[rows], y[rows], s=28, c=colour, label=f"{verdict} ({int(rows.sum())})",
                          edgecolors="white", linewidths=0.5)
    panel.axhline(threshold, color="0.4", lw=0.8, ls="--")
    odd = table[table["verdict"].isin(["effect without edge", "edge without effect"])]
    for i in odd.sort_values("n_de", ascending=False).index[:max_labels]:
        panel.annotate(str(table.at[i, "perturbation"]), (x[i], y[i]), fontsize=7, xytext=(3, 3),
                       textcoords="offset points")
    ticks = [0, 1, 3, 10, 30, 100, 300, 1000]
    top = float(table["n_de"].max()) if len(table) else 0.0
    ticks = [t for t in ticks if t <= max(top, 1) * 1.5]
    panel.set_xticks(np.log10(1 + np.array(ticks)), [str(t) for t in ticks])
    panel.set_ylim(-0.1, 1.05)
    panel.set_xlabel(f"DE genes against control (FDR {table.attrs.get('fdr', 0.05):g})")
    panel.set_ylabel("strongest edge probability")
    panel.set_title(title or "Graph against the data")
    panel.legend(fontsize=7, loc="center right", frameon=False)
    save_figure(fig, save)
    return fig
