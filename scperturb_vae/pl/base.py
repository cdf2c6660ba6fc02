"""Helpers shared by the plotting modules: figures without pyplot, given axes, saving, heatmaps.

Every figure of the package is a :class:`matplotlib.figure.Figure` made without pyplot
(:func:`new_figure`): it is not registered with the pyplot state machine, so scripts open no
window and keep no figure alive, and no backend is ever switched.  :func:`save` writes a
figure atomically (the pipelines write every PNG of their folders with it).
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from scperturb_vae.errors import InputError
from scperturb_vae.get.fitted import resolve_key
from scperturb_vae.logs import in_notebook

__all__ = [
    "MAX_ROW_LABELS",
    "choose_latents",
    "display_figure",
    "in_notebook",
    "shows_figure",
    "cluster_order",
    "fitted_key",
    "given_axes",
    "heatmap",
    "is_adata",
    "label_size",
    "new_figure",
    "panel_grid",
    "save",
    "single_panel",
]

#: More rows than this and the row labels of a heatmap are left out.
MAX_ROW_LABELS = 150


def new_figure(nrows: int, ncols: int, figsize: tuple[float, float], *, layout: str | None = "constrained",
               **kwargs):
    """A pyplot-free figure and its ``nrows x ncols`` grid of Axes (a 2-d array)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout=layout)
    axes = fig.subplots(nrows, ncols, squeeze=False, **kwargs)
    return fig, axes


def given_axes(ax, n: int, what: str) -> list:
    """``ax`` as a list of ``n`` Axes (from one Axes or a sequence)."""
    from matplotlib.axes import Axes

    if isinstance(ax, Axes):
        items = [ax]
    elif isinstance(ax, (np.ndarray, Sequence)):
        items = list(np.asarray(ax, dtype=object).ravel())
    else:
        raise InputError(f"ax must be a matplotlib Axes or a sequence of them, not {type(ax).__name__}")
    if len(items) != n or not all(isinstance(a, Axes) for a in items):
        raise InputError(f"{what} draws {n} panel(s): pass ax= as {'one Axes' if n == 1 else f'{n} Axes'}, "
                         f"not {len(items)}")
    return items


def single_panel(ax, figsize: tuple[float, float], what: str):
    """``(figure, axes)``: a new one-panel figure, or the one Axes given as ``ax``."""
    if ax is None:
        fig, grid = new_figure(1, 1, figsize)
        return fig, grid[0, 0]
    panel = given_axes(ax, 1, what)[0]
    return panel.figure, panel


def panel_grid(ax, n: int, ncols: int, panel_size: tuple[float, float], what: str):
    """``(figure, axes)``: ``n`` panels on a new grid of ``ncols`` columns (unused cells
    removed), or the ``n`` Axes given as ``ax``."""
    if ax is not None:
        axes = given_axes(ax, n, what)
        return axes[0].figure, axes
    cols = min(int(ncols), n)
    rows = -(-n // cols)
    fig, grid = new_figure(rows, cols, (panel_size[0] * cols, panel_size[1] * rows))
    axes = list(grid.ravel())
    for extra in axes[n:]:
        fig.delaxes(extra)
    return fig, axes[:n]


def display_figure(fig) -> None:
    """Show ``fig`` in the notebook's output (pyplot-free figures are shown by IPython's display)."""
    from IPython.display import display

    display(fig)


def shows_figure(func: Callable) -> Callable:
    """scanpy's ``show=`` convention for a function that returns the figure it drew.

    The wrapped function takes ``show`` (None: show in a notebook unless ``ax`` was given, so
    that each call of a notebook cell shows its figure, as scanpy's do) and ``return_fig``
    (return the figure even when it was shown).  Shown figures return None; otherwise the
    figure is returned, as in scripts.
    """

    @functools.wraps(func)
    def wrapper(*args, show: bool | None = None, return_fig: bool = False, **kwargs):
        fig = func(*args, **kwargs)
        if show is None:
            show = kwargs.get("ax") is None and in_notebook()
        if show:
            display_figure(fig)
            return fig if return_fig else None
        return fig

    signature = inspect.signature(func)
    extra = [inspect.Parameter("show", inspect.Parameter.KEYWORD_ONLY, default=None, annotation="bool | None"),
             inspect.Parameter("return_fig", inspect.Parameter.KEYWORD_ONLY, default=False, annotation="bool")]
    params = list(signature.parameters.values())
    tail = [p for p in params if p.kind == inspect.Parameter.VAR_KEYWORD]
    wrapper.__signature__ = signature.replace(parameters=[p for p in params if p not in tail] + extra + tail)
    return wrapper


def save(fig, save: str | os.PathLike | None) -> None:
    """Write ``fig`` to ``save`` (format from the suffix, 110 dpi) atomically; nothing when ``None``."""
    if save is None:
        return
    from scperturb_vae.io import atomic_path

    path = Path(save)
    fmt = path.suffix.lstrip(".").lower() or "png"
    supported = fig.canvas.get_supported_filetypes()
    if fmt not in supported:
        raise InputError(f"cannot save a figure as {fmt!r} ({path}); use one of {', '.join(sorted(supported))}")
    with atomic_path(path, overwrite=True) as tmp:
        fig.savefig(tmp, format=fmt, dpi=110)


def label_size(n: int) -> float:
    """Font size of ``n`` tick labels on one axis."""
    return float(np.clip(260.0 / max(n, 1), 3.0, 9.0))


def fitted_key(adata, key: str | None) -> str:
    """The given fitted key (checked) or the only one."""
    return resolve_key(adata, key, "this plot")


def is_adata(obj) -> bool:
    import anndata as ad

    return isinstance(obj, ad.AnnData)


def cluster_order(values: np.ndarray) -> np.ndarray:
    """Leaf order of an average-linkage clustering of the rows (Euclidean)."""
    if values.shape[0] < 3:
        return np.arange(values.shape[0])
    from scipy.cluster.hierarchy import leaves_list, linkage

    return leaves_list(linkage(values, method="average", metric="euclidean"))


def heatmap(ax, values: np.ndarray, rows: Sequence[str], cols: Sequence[str], *, cmap: str, vmin: float,
            vmax: float, title: str, xlabel: str, ylabel: str, row_labels: bool = True):
    """Draw ``values`` (rows x cols) on ``ax`` with tick labels; returns the image."""
    image = ax.imshow(values, aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_xticks(range(len(cols)))
    ax.set_xticklabels([str(c) for c in cols], rotation=90, fontsize=label_size(len(cols)))
    if row_labels and len(rows) <= MAX_ROW_LABELS:
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels([str(r) for r in rows], fontsize=label_size(len(rows)))
        ax.set_ylabel(ylabel)
    else:
        ax.set_yticks([])
        ax.set_ylabel(f"{len(rows)} {ylabel}s" if row_labels else "")
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    return image


def choose_latents(names: list[str], latents) -> list[str]:
    """The latents named (or indexed) by ``latents`` among ``names``, in order, once each (all when ``None``)."""
    if latents is None:
        return list(names)
    if isinstance(latents, (str, int, np.integer)):
        latents = [latents]
    chosen = []
    for x in latents:
        if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
            if not 0 <= int(x) < len(names):
                raise InputError(f"latent index {x} is out of range (there are {len(names)} latents)")
            chosen.append(names[int(x)])
        elif str(x) in names:
            chosen.append(str(x))
        else:
            raise InputError(f"unknown latent {x!r}; the latents are {names[0]} ... {names[-1]}")
    if not chosen:
        raise InputError("no latent chosen")
    return list(dict.fromkeys(chosen))
