"""Plots in scanpy's style for the results of :mod:`scperturb_vae.tl`.

Every function returns the :class:`matplotlib.figure.Figure` it drew, draws into the axes
given as ``ax=`` (one :class:`~matplotlib.axes.Axes`, or a sequence of them for the
functions that draw several panels), and with ``save="path.png"`` also writes the figure
(the format from the suffix; written atomically, replacing an existing file).

Without ``ax``, the figure is a :class:`matplotlib.figure.Figure` made without pyplot: it
is not registered with the pyplot state machine, so scripts open no window and keep no
figure alive, and a notebook shows it once, as the value of the cell (or with
``display(fig)``).

- :func:`graph`: the intervention graph (perturbations x latents), beside the
  simulation's true graph with ``truth=True``;
- :func:`latents`: an embedding (e.g. UMAP) coloured by each latent, one panel per latent;
- :func:`latents_by_perturbation`: the mean of each latent per perturbation;
- :func:`traversal`: decoded expression of top genes as a latent moves;
- :func:`enrichment`: gene-set enrichment dot plot;
- :func:`heldout_nll` and :func:`fewshot`: the held-out likelihood of
  :func:`scperturb_vae.tl.heldout_nll`.

:mod:`scperturb_vae.pipelines.interpret` writes the same kinds of plots to files for ``scvae
interpret``; the drawing here targets given axes instead.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from scperturb_vae.errors import InputError
from scperturb_vae.get.fitted import GENE_EFFECTS_SUFFIX, fitted_keys, latent_names, resolve_key
from scperturb_vae.get.fitted import graph as read_graph
from scperturb_vae.get.fitted import latent as read_latent

__all__ = [
    "enrichment",
    "fewshot",
    "graph",
    "heldout_nll",
    "latents",
    "latents_by_perturbation",
    "traversal",
]

#: More rows than this and the row labels of a heatmap are left out.
MAX_ROW_LABELS = 150


# --------------------------------------------------------------------------- helpers
def _new_figure(nrows: int, ncols: int, figsize: tuple[float, float], **kwargs):
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kwargs)
    return fig, axes


def _given_axes(ax, n: int, what: str) -> list:
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


def _save(fig, save) -> None:
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


def _label_size(n: int) -> float:
    return float(np.clip(260.0 / max(n, 1), 3.0, 9.0))


def _key(adata, key: str | None) -> str:

    return resolve_key(adata, key, "this plot")


def _is_adata(obj) -> bool:
    import anndata as ad

    return isinstance(obj, ad.AnnData)


def _heatmap(ax, values: np.ndarray, rows: Sequence[str], cols: Sequence[str], *, cmap: str, vmin: float,
             vmax: float, title: str, xlabel: str, ylabel: str, row_labels: bool = True):
    image = ax.imshow(values, aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_xticks(range(len(cols)))
    ax.set_xticklabels([str(c) for c in cols], rotation=90, fontsize=_label_size(len(cols)))
    if row_labels and len(rows) <= MAX_ROW_LABELS:
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels([str(r) for r in rows], fontsize=_label_size(len(rows)))
        ax.set_ylabel(ylabel)
    else:
        ax.set_yticks([])
        ax.set_ylabel(f"{len(rows)} {ylabel}s" if row_labels else "")
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    return image


# --------------------------------------------------------------------------- graph
def _matched_columns(adata, key: str, truth: pd.DataFrame, learned: pd.DataFrame) -> list:
    """Learned latent matched to each true latent (Hungarian MCC on the latents), or None."""
    from scperturb_vae.tl.metrics import mean_correlation_coefficient

    if "z_true" not in adata.obsm:
        return [None] * truth.shape[1]
    result = mean_correlation_coefficient(np.asarray(adata.obsm["z_true"], dtype=float), read_latent(adata, key))
    return [learned.columns[c] if c >= 0 else None for c in np.asarray(result.assignment)]


def graph(
    data,
    *,
    key: str | None = None,
    truth=None,
    cluster: bool = True,
    title: str | None = None,
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
    from scperturb_vae.pipelines.interpret import _cluster_order

    if _is_adata(data):

        k = _key(data, key)
        learned = read_graph(data, k)
        default_title = f"intervention graph ({k})"
    elif isinstance(data, pd.DataFrame):
        learned = data.astype(float)
        default_title = "intervention graph"
        k = None
    else:
        raise InputError(f"graph takes an AnnData or a DataFrame, not {type(data).__name__}")
    if learned.empty:
        raise InputError("the intervention graph is empty")
    true = None
    if truth is True:
        if not _is_adata(data):
            raise InputError("truth=True needs the simulated AnnData; pass the true graph as a DataFrame instead")
        from scperturb_vae.data.simulate import graph_from_adata

        true = graph_from_adata(data).astype(float)
    elif isinstance(truth, pd.DataFrame):
        true = truth.astype(float)
    elif truth not in (None, False):
        raise InputError("truth must be True (the simulation's graph), a DataFrame, or None")

    if true is None:
        values = learned.to_numpy(dtype=float)
        rows = _cluster_order(values) if cluster else np.arange(values.shape[0])
        cols = _cluster_order(values.T) if cluster else np.arange(values.shape[1])
        panels = [(learned.iloc[rows, cols], title or default_title, "viridis")]
    else:
        common = [p for p in true.index.astype(str) if p in set(learned.index.astype(str))]
        if not common:
            raise InputError("the learned and the true graph share no perturbation")
        true = true.loc[common]
        learned = learned.loc[common]
        if k is not None:
            matched = _matched_columns(data, k, true, learned)
        else:
            matched = [None] * true.shape[1]
        order = [c for c in matched if c is not None]
        order += [c for c in learned.columns if c not in order]  # unmatched learned latents last
        rows = _cluster_order(true.to_numpy(dtype=float)) if cluster else np.arange(len(common))
        panels = [
            (learned.iloc[rows][order], title or default_title + (" matched to the truth" if k is not None else ""),
             "viridis"),
            (true.iloc[rows], "true graph", "viridis"),
        ]

    n_rows = panels[0][0].shape[0]
    n_cols_total = sum(p[0].shape[1] for p in panels)
    if ax is None:
        height = float(np.clip(0.16 * n_rows + 1.8, 3.0, 30.0))
        width = float(np.clip(0.35 * n_cols_total + 3.0 * len(panels), 4.0, 24.0))
        fig, axes = _new_figure(1, len(panels), (width, height))
        axes = list(axes.ravel())
    else:
        axes = _given_axes(ax, len(panels), "graph" + (" with truth" if true is not None else ""))
        fig = axes[0].figure
    for i, (frame, panel_title, cmap) in enumerate(panels):
        image = _heatmap(axes[i], frame.to_numpy(dtype=float), list(frame.index), list(frame.columns), cmap=cmap,
                         vmin=0.0, vmax=1.0, title=panel_title, xlabel="latent", ylabel="perturbation",
                         row_labels=(i == 0))
        fig.colorbar(image, ax=axes[i], fraction=0.05, pad=0.02,
                     label="P(perturbation moves latent)" if i == len(panels) - 1 else None)
    _save(fig, save)
    return fig


# --------------------------------------------------------------------------- latents
def _choose_latents(names: list[str], latents) -> list[str]:
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

    k = _key(adata, key)
    obsm_key = basis if basis in adata.obsm else "X_" + basis
    if obsm_key not in adata.obsm:
        raise InputError(f"adata.obsm has no {'X_' + basis!r}; compute it first (sc.pp.neighbors(adata, "
                         f"use_rep='X_{k}'); sc.tl.{basis}(adata)) or pass another basis=")
    coords = np.asarray(adata.obsm[obsm_key], dtype=float)
    if coords.ndim != 2 or coords.shape[1] < 2:
        raise InputError(f"adata.obsm[{obsm_key!r}] needs at least two columns")
    names = latent_names(adata.uns[k])
    chosen = _choose_latents(names, latents)
    values = read_latent(adata, k)
    if isinstance(ncols, bool) or not isinstance(ncols, (int, np.integer)) or ncols < 1:
        raise InputError(f"ncols must be a positive integer, not {ncols!r}")
    label = basis.removeprefix("X_")
    label = label.upper() if label.lower() in ("umap", "tsne", "pca") else label
    size = point_size if point_size is not None else float(np.clip(12000.0 / max(adata.n_obs, 1), 0.5, 20.0))
    if ax is None:
        cols = min(int(ncols), len(chosen))
        rows = math.ceil(len(chosen) / cols)
        fig, grid = _new_figure(rows, cols, (3.3 * cols, 3.0 * rows))
        axes = list(grid.ravel())
        for extra in axes[len(chosen):]:
            fig.delaxes(extra)
        axes = axes[: len(chosen)]
    else:
        axes = _given_axes(ax, len(chosen), "latents")
        fig = axes[0].figure
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
    _save(fig, save)
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

    k = _key(adata, key)
    entry = adata.uns[k]
    pkey, control = str(entry.get("perturbation_key")), str(entry.get("control_label"))
    if pkey not in adata.obs:
        raise InputError(f"adata.obs has no perturbation column {pkey!r} (recorded in uns[{k!r}])")
    names = latent_names(entry)
    chosen = _choose_latents(names, latents)
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
    if ax is None:
        height = float(np.clip(0.16 * len(rows) + 1.8, 3.0, 30.0))
        fig, grid = _new_figure(1, 1, (float(np.clip(0.35 * len(chosen) + 3.0, 4.0, 20.0)), height))
        panel = grid[0, 0]
    else:
        panel = _given_axes(ax, 1, "latents_by_perturbation")[0]
        fig = panel.figure
    image = _heatmap(panel, values, rows, chosen, cmap=cmap, vmin=-limit, vmax=limit,
                     title=f"mean latent per perturbation ({k})", xlabel="latent", ylabel="perturbation")
    fig.colorbar(image, ax=panel, fraction=0.05, pad=0.02, label="mean posterior mean")
    _save(fig, save)
    return fig


# --------------------------------------------------------------------------- traversal
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

    :func:`scperturb_vae.pipelines.interpret.latent_traversal` per latent, drawn as the change from
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
    from scperturb_vae.pipelines.interpret import (
        DEFAULT_TRAVERSAL_VALUES,
        _default_traversal_latents,
        _top_genes,
        latent_traversal,
        perturbation_targets,
    )
    from scperturb_vae.tl.api import as_model

    trained, _ = as_model(model)
    names = [str(x) for x in trained.latent_names]
    k = key
    if k is None:
        keys = [x for x in fitted_keys(adata) if str(adata.uns[x].get("model_class")) == type(trained).__name__]
        k = keys[0] if len(keys) == 1 else None
    elif k not in adata.uns:
        raise InputError(f"no fitted model under key {k!r} in adata.uns")
    if latents is None:
        if k is None:
            raise InputError("give latents= (or fit the model with tl.fit so that the graph picks them)")
        z = read_latent(adata, k)
        sd = {n: float(s) for n, s in zip(names, z.std(axis=0))}
        chosen = _default_traversal_latents(perturbation_targets(read_graph(adata, k)), names, sd)
    else:
        chosen = _choose_latents(names, latents)
    effects = None
    if genes is None and k is not None and (k + GENE_EFFECTS_SUFFIX) in adata.varm:
        stored = adata.varm[k + GENE_EFFECTS_SUFFIX]
        if isinstance(stored, pd.DataFrame) and set(chosen) <= set(stored.columns.astype(str)):
            effects = stored.T
            effects.index = effects.index.astype(str)
    if isinstance(n_genes, bool) or not isinstance(n_genes, (int, np.integer)) or n_genes < 1:
        raise InputError(f"n_genes must be a positive integer, not {n_genes!r}")
    shifts = DEFAULT_TRAVERSAL_VALUES if values is None else values
    frames = {}
    for name in chosen:
        panel_genes = list(genes) if genes is not None else (
            _top_genes(effects, name, n_each=max(1, n_genes // 2)) if effects is not None else None)
        frames[name] = latent_traversal(trained, name, values=shifts, n_cells=n_cells, genes=panel_genes, seed=seed,
                                        adata=adata, n_top_genes=n_genes)
    if ax is None:
        cols = min(int(ncols), len(chosen)) if isinstance(ncols, (int, np.integer)) and ncols > 0 else 2
        rows = math.ceil(len(chosen) / cols)
        fig, grid = _new_figure(rows, cols, (5.0 * cols, 3.5 * rows))
        axes = list(grid.ravel())
        for extra in axes[len(chosen):]:
            fig.delaxes(extra)
        axes = axes[: len(chosen)]
    else:
        axes = _given_axes(ax, len(chosen), "traversal")
        fig = axes[0].figure
    for panel, name in zip(axes, chosen):
        frame = frames[name]
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
    _save(fig, save)
    return fig


# --------------------------------------------------------------------------- enrichment
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
    from scperturb_vae.tl.enrichment import ENRICHMENT_COLUMNS

    if _is_adata(data):
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
    if test is None:
        test = "ora" if (table["test"] == "ora").any() else "rank"
    if test not in ("ora", "rank"):
        raise InputError(f"test must be 'ora' or 'rank', not {test!r}")
    all_latents = list(dict.fromkeys(table["latent"]))
    cols = all_latents if latents is None else _choose_latents(all_latents, latents)
    sub = table[(table["test"] == test) & table["fdr"].notna()]
    sub = sub.sort_values(["fdr", "pvalue"], kind="mergesort")
    best = sub.drop_duplicates(subset=["latent", "source", "gene_set"])
    chosen: list[tuple[str, str]] = []
    for latent in cols:
        rows = best[best["latent"] == latent][["source", "gene_set"]].head(per_latent)
        for src, name in rows.itertuples(index=False):
            if (src, name) not in chosen and len(chosen) < max_sets:
                chosen.append((src, name))
    if ax is None:
        fig, grid = _new_figure(1, 1, (float(np.clip(0.45 * len(cols) + 6.5, 7.0, 22.0)),
                                       float(np.clip(0.28 * len(chosen) + 2.4, 3.2, 16.0))))
        panel = grid[0, 0]
    else:
        panel = _given_axes(ax, 1, "enrichment")[0]
        fig = panel.figure
    panel.set_title(f"gene-set enrichment ({test}): best {per_latent} per latent")
    panel.set_xlabel("latent")
    panel.set_ylabel("gene set")
    if not chosen:
        panel.text(0.5, 0.5, f"no gene set tested with {test}", ha="center", va="center", transform=panel.transAxes)
        panel.set_xticks([])
        panel.set_yticks([])
        _save(fig, save)
        return fig
    position = {pair: y for y, pair in enumerate(chosen)}
    column = {latent: x for x, latent in enumerate(cols)}
    shown = best[[(s, g) in position and lat in column
                  for lat, s, g in zip(best["latent"], best["source"], best["gene_set"])]]
    stat = shown["statistic"].to_numpy(dtype=float)
    if test == "ora":
        stat = np.log2(np.where(stat > 0, stat, np.nan))
    low, high = (np.nanmin(stat), np.nanmax(stat)) if np.isfinite(stat).any() else (0.0, 1.0)
    high = high if high > low else low + 1.0
    markers = {"up": "^", "down": "v", "any": "o"}
    scatter = None
    for direction, marker in markers.items():
        rows = (shown["direction"] == direction).to_numpy()
        if not rows.any():
            continue
        part = shown[rows]
        size = np.minimum(-np.log10(np.maximum(part["fdr"].to_numpy(dtype=float), 1e-300)), 10.0)
        scatter = panel.scatter([column[x] for x in part["latent"]],
                                [position[(s, g)] for s, g in zip(part["source"], part["gene_set"])],
                                s=14 + 30 * size, c=stat[rows], cmap="viridis", vmin=low, vmax=high, marker=marker,
                                edgecolors="0.25", linewidths=0.4)
    panel.set_xticks(range(len(cols)))
    panel.set_xticklabels(cols, rotation=90, fontsize=_label_size(len(cols)))
    panel.set_yticks(range(len(chosen)))
    panel.set_yticklabels([f"{name[:55]} [{src}]" for src, name in chosen], fontsize=_label_size(len(chosen)))
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
    for direction, marker in markers.items():
        panel.scatter([], [], s=40, c="white", edgecolors="0.25", marker=marker, label=direction)
    panel.legend(loc="lower center", bbox_to_anchor=(0.5, 1.06), ncol=6, frameon=False, fontsize=7,
                 columnspacing=1.6, handletextpad=0.6)
    _save(fig, save)
    return fig


# --------------------------------------------------------------------------- held-out likelihood
def _frame(result, attr: str, columns: Sequence[str], what: str) -> pd.DataFrame:
    from scperturb_vae.tl.api import HeldoutResult

    if isinstance(result, HeldoutResult):
        frame = getattr(result, attr)
    elif isinstance(result, pd.DataFrame):
        frame = result
    else:
        raise InputError(f"{what} takes the result of tl.heldout_nll or its {attr} table, not {type(result).__name__}")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise InputError(f"the {attr} table lacks column(s) {', '.join(missing)}")
    if frame.empty:
        raise InputError(f"the {attr} table is empty")
    return frame


def heldout_nll(result, *, title: str | None = None, ax=None, save: str | os.PathLike | None = None):
    """Bars of the held-out NLL per model and setting, with Monte Carlo standard errors.

    Parameters
    ----------
    result
        What :func:`scperturb_vae.tl.heldout_nll` returns, or its ``table`` (columns
        ``model``, ``setting``, ``nll``, ``stderr``; ``scvae evaluate``'s ``nll.csv``).
    title
        The title (default ``"held-out perturbations: NAME"``).
    ax
        One Axes.
    save
        Write the figure to this path.

    Returns
    -------
    matplotlib.figure.Figure
        x: the models (tick labels), one bar per setting (``heldout adapted``, ``heldout
        zeroshot``, ``heldin``: the legend), y: ``NLL per cell (nats, lower is better)``.
    """
    from scperturb_vae.pipelines.evaluate import SETTINGS_ORDER

    table = _frame(result, "table", ("model", "setting", "nll", "stderr"), "pl.heldout_nll")
    holdout = result.holdout if not isinstance(result, pd.DataFrame) else {}
    models = list(dict.fromkeys(table["model"].astype(str)))
    settings = [s for s in SETTINGS_ORDER if s in set(table["setting"])]
    settings += [s for s in dict.fromkeys(table["setting"]) if s not in settings]
    if ax is None:
        fig, grid = _new_figure(1, 1, (1.8 + 1.6 * len(models), 3.8))
        panel = grid[0, 0]
    else:
        panel = _given_axes(ax, 1, "heldout_nll")[0]
        fig = panel.figure
    width = 0.8 / max(len(settings), 1)
    for j, s in enumerate(settings):
        sub = table[table["setting"] == s].assign(model=lambda d: d["model"].astype(str)).set_index("model")
        sub = sub.reindex(models)
        x = np.arange(len(models)) + (j - (len(settings) - 1) / 2) * width
        panel.bar(x, sub["nll"], width, yerr=sub["stderr"], label=s.replace("_", " "), capsize=3)
    panel.set_xticks(np.arange(len(models)))
    panel.set_xticklabels(models)
    finite = table["nll"][np.isfinite(table["nll"].astype(float))]
    if len(finite):
        span = float(finite.max() - finite.min()) or 1.0
        panel.set_ylim(float(finite.min()) - 0.5 * span, float(finite.max()) + 0.3 * span)
    panel.set_xlabel("model")
    panel.set_ylabel("NLL per cell (nats, lower is better)")
    name = holdout.get("name") if isinstance(holdout, Mapping) else None
    panel.set_title(title or (f"held-out perturbations: {name}" if name else "held-out NLL"))
    panel.legend(frameon=False, fontsize=8)
    _save(fig, save)
    return fig


def fewshot(result, *, title: str | None = None, ax=None, save: str | os.PathLike | None = None):
    """The few-shot curve: held-out NLL against the number of adaptation cells, per model.

    Parameters
    ----------
    result
        What :func:`scperturb_vae.tl.heldout_nll` returns, or its ``fewshot`` table
        (columns ``model``, ``adaptation_cells_per_perturbation``, ``n_adaptation_cells``,
        ``nll``, ``stderr``).
    title
        The title (default ``"few-shot adaptation"``).
    ax
        One Axes.
    save
        Write the figure to this path.

    Returns
    -------
    matplotlib.figure.Figure
        x: ``adaptation cells (all held-out perturbations)``, y: ``held-out NLL per cell
        (nats)``, one line with error bars per model (the legend); each point is annotated
        with its cells per perturbation (``0``, ``10``, ``all``...).
    """
    curve = _frame(result, "fewshot", ("model", "adaptation_cells_per_perturbation", "n_adaptation_cells", "nll",
                                       "stderr"), "pl.fewshot")
    if ax is None:
        fig, grid = _new_figure(1, 1, (5.2, 3.8))
        panel = grid[0, 0]
    else:
        panel = _given_axes(ax, 1, "fewshot")[0]
        fig = panel.figure
    for model, g in curve.groupby("model", sort=False):
        x = g["n_adaptation_cells"].to_numpy(dtype=float)
        y = g["nll"].to_numpy(dtype=float)
        panel.errorbar(x, y, yerr=g["stderr"].to_numpy(dtype=float), marker="o", label=str(model), capsize=3)
        for xi, yi, n in zip(x, y, g["adaptation_cells_per_perturbation"]):
            panel.annotate(str(n), (xi, yi), textcoords="offset points", xytext=(3, 4), fontsize=7, color="0.35")
    panel.set_xlabel("adaptation cells (all held-out perturbations)")
    panel.set_ylabel("held-out NLL per cell (nats)")
    panel.set_title(title or "few-shot adaptation")
    panel.legend(frameon=False, fontsize=8)
    _save(fig, save)
    return fig
