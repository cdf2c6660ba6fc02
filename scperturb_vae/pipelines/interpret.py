"""Name the latents of a trained run: the genes each one moves, the perturbations that move it.

An identifiable latent becomes useful once a biologist can name it.  Two views do:

- the perturbations that move it, read from the learned intervention graph
  (:func:`perturbation_targets`: "latent07 is shifted by knockouts of MED12, MED13,
  CCNC"), and tested for enrichment of perturbation groups (clusters, complexes);
- the genes it moves, its decoder effects (:func:`gene_effects`), tested for enrichment
  of gene sets (:func:`scperturb_vae.tl.enrichment.enrich_latents`: "Mediator complex",
  "interferon-gamma response").

:func:`interpret_run` does both for a run folder (``scvae train``'s output) and writes
one output folder (built under a temporary name, renamed when complete):

``gene_effects.csv``
    Latents (named as in ``latent.h5ad``) x genes: :func:`gene_effects`.
``enrichment.csv``
    Gene-set enrichment, sorted by latent then FDR (columns: see
    :data:`scperturb_vae.tl.enrichment.ENRICHMENT_COLUMNS`).
``perturbation_targets.csv``
    :func:`perturbation_targets` of the run's intervention graph.
``perturbation_enrichment.csv``
    With ``groups``: enrichment of perturbation groups among each latent's targets.
``traversals.csv``
    :func:`latent_traversal` of the plotted latents (long table).
``summary.md``
    One line per latent: its top targeting perturbations, top genes up and down, top
    gene sets.
``interpret.json``
    Settings, gene-set counts and universe sizes per source, the latents' spreads,
    timings.
``graph_heatmap.png``, ``gene_effects_heatmap.png``, ``enrichment_dotplot.png``, ``traversals.png``
    The plots (matplotlib, Agg backend).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scperturb_vae.errors import InputError
from scperturb_vae.data.genesets import load_gene_sets, read_groups, restrict_gene_sets
from scperturb_vae.io import atomic_dir, check_output, write_json

logger = logging.getLogger("scperturb_vae")

__all__ = [
    "ACTIVE_VARIANCE",
    "DENSE_TOP",
    "OUTPUT_FILES",
    "gene_effects",
    "interpret_run",
    "latent_traversal",
    "perturbation_targets",
    "program_match",
    "summary_lines",
]

#: A latent whose posterior means vary less than this across cells is called inactive
#: (as :func:`scperturb_vae.tl.metrics.active_units`).
ACTIVE_VARIANCE = 0.01

#: Targets kept per latent whose graph column is dense (see :func:`perturbation_targets`).
DENSE_TOP = 10

#: Files every interpretation folder holds (``perturbation_enrichment.csv`` only with groups).
OUTPUT_FILES = (
    "gene_effects.csv", "enrichment.csv", "perturbation_targets.csv", "traversals.csv",
    "summary.md", "interpret.json", "graph_heatmap.png", "gene_effects_heatmap.png",
    "enrichment_dotplot.png", "traversals.png",
)

DEFAULT_TRAVERSAL_VALUES = tuple(float(v) for v in np.linspace(-2.0, 2.0, 9))

#: Floor of the decoded proportions before the log (float32 softmax can underflow to 0).
_TINY = 1e-30


# --------------------------------------------------------------------------- decoding
def _sample_cells(n_obs: int, n_cells: int, seed: int) -> np.ndarray:
    """A seeded sample of at most ``n_cells`` cell indices, sorted."""
    if n_cells < 1:
        raise InputError(f"n_cells must be at least 1, not {n_cells}")
    rng = np.random.default_rng(seed)
    if n_cells >= n_obs:
        return np.arange(n_obs)
    return np.sort(rng.choice(n_obs, size=n_cells, replace=False))


class _Decoder:
    """Posterior means of a sample of cells, and the decoder run at shifted latents.

    Holds the module in eval mode; every computation runs under ``torch.inference_mode``.
    """

    def __init__(self, model, adata, n_cells: int, seed: int, batch_size: int):
        import torch

        if batch_size < 1:
            raise InputError(f"batch_size must be at least 1, not {batch_size}")
        self.torch = torch
        self.model = model
        self.module = model.module
        adata = model._validate_anndata(adata)
        self.indices = _sample_cells(adata.n_obs, n_cells, seed)
        self.batch_size = int(batch_size)
        self.device = next(self.module.parameters()).device
        self.was_training = self.module.training
        self.module.eval()
        means, batches = [], []
        with torch.inference_mode():
            loader = model._make_data_loader(adata=adata, indices=self.indices, batch_size=self.batch_size)
            for tensors in loader:
                inference = self.module.inference(**self.module._get_inference_input(tensors))
                means.append(inference["qz"].loc.detach().to("cpu", torch.float64))
                batch = self.module._batch(tensors)
                batches.append(None if batch is None else batch.detach().to("cpu"))
        self.z = torch.cat(means).numpy()  # cells x latents
        self.batch = None if any(b is None for b in batches) else torch.cat(batches)
        self.sd = self.z.std(axis=0)  # population sd (ddof=0) of the posterior means

    def restore(self) -> None:
        """Put the module back in training mode when it was."""
        if self.was_training:
            self.module.train()

    def chunks(self):
        """Yield ``(start, stop)`` of the cell chunks."""
        n = self.z.shape[0]
        for start in range(0, n, self.batch_size):
            yield start, min(start + self.batch_size, n)

    def log_scale(self, z: np.ndarray, start: int, stop: int):
        """``log rho`` (a torch tensor, cells x genes) at latents ``z`` for cells ``start:stop``."""
        torch = self.torch
        zt = torch.as_tensor(z, dtype=torch.float32, device=self.device)
        library = torch.zeros(zt.shape[0], 1, device=self.device)
        batch = None if self.batch is None else self.batch[start:stop].to(self.device)
        px = self.module.generative(z=zt, library=library, batch_index=batch)["px"]
        return torch.log(px.scale.clamp_min(_TINY)).to(torch.float64)


def gene_effects(model, adata=None, *, n_cells: int = 2000, seed: int = 0, batch_size: int = 256) -> pd.DataFrame:
    r"""The change of each gene's decoded log expression per unit of each latent.

    Definition: let ``z_c`` (``c = 1..C``) be the posterior means ``E[z | x_c]`` of a
    seeded random sample of ``C = min(n_cells, n_obs)`` cells (the sorted
    ``np.random.default_rng(seed).choice(n_obs, C, replace=False)``; every cell when
    ``n_cells >= n_obs``), ``s_i`` the standard
    deviation (``ddof=0``) of latent ``i``'s posterior means over those cells, ``e_i`` the
    ``i``-th unit vector, and ``rho_g(z)`` the decoded proportion of gene ``g``
    (``px.scale``: the decoder's softmax output, independent of the library size; each
    cell is decoded with its own batch).  Then

    ``effect[i, g] = mean_c [ log rho_g(z_c + s_i e_i) - log rho_g(z_c - s_i e_i) ] / 2``

    i.e. the central-difference change of the decoded natural-log mean expression of
    ``g`` when latent ``i`` moves by one standard deviation of its aggregate posterior,
    averaged over real cells.  A latent with ``s_i = 0`` (collapsed) has effect 0 on
    every gene.  Proportions are floored at 1e-30 before the log.

    The module is run in eval mode under ``torch.inference_mode``, in chunks of
    ``batch_size`` cells (two decoder passes of ``batch_size x n_genes`` at a time).

    Parameters
    ----------
    model
        A trained model of :mod:`scperturb_vae.model.models`.
    adata
        Cells to average over (set up for the model); default: the model's own.
    n_cells
        Cells sampled (at most).
    seed
        Seed of the cell sample.
    batch_size
        Cells decoded at once.

    Returns
    -------
    pandas.DataFrame
        Rows: ``model.latent_names``; columns: genes (``adata.var_names``).
        ``attrs["latent_sd"]`` holds ``s_i`` per latent, ``attrs["n_cells"]`` ``C``.
    """
    dec = _Decoder(model, adata, n_cells, seed, batch_size)
    torch = dec.torch
    try:
        n_latent = dec.z.shape[1]
        total = None
        with torch.inference_mode():
            for start, stop in dec.chunks():
                z = dec.z[start:stop]
                for i in range(n_latent):
                    if dec.sd[i] == 0:
                        continue
                    shift = np.zeros(n_latent)
                    shift[i] = dec.sd[i]
                    diff = (dec.log_scale(z + shift, start, stop) - dec.log_scale(z - shift, start, stop)).sum(0)
                    if total is None:
                        total = np.zeros((n_latent, diff.shape[0]))
                    total[i] += diff.cpu().numpy()
    finally:
        dec.restore()
    genes = model._validate_anndata(adata).var_names.astype(str)
    if total is None:
        total = np.zeros((dec.z.shape[1], len(genes)))
    effects = pd.DataFrame(
        total / (2.0 * dec.z.shape[0]),
        index=pd.Index(list(model.latent_names), name="latent"),
        columns=pd.Index(genes, name="gene"),
    )
    effects.attrs["latent_sd"] = {name: float(s) for name, s in zip(model.latent_names, dec.sd)}
    effects.attrs["n_cells"] = int(dec.z.shape[0])
    return effects


def _latent_index(model, latent) -> int:
    names = list(model.latent_names)
    if isinstance(latent, (int, np.integer)) and not isinstance(latent, bool):
        if not 0 <= int(latent) < len(names):
            raise InputError(f"latent index {latent} is out of range (the model has {len(names)} latents)")
        return int(latent)
    if str(latent) not in names:
        raise InputError(f"unknown latent {str(latent)!r}; the model's latents are {names[0]} ... {names[-1]}")
    return names.index(str(latent))


def latent_traversal(
    model,
    latent: str | int,
    *,
    values: Sequence[float] = DEFAULT_TRAVERSAL_VALUES,
    n_cells: int = 500,
    genes: Sequence[str] | None = None,
    seed: int = 0,
    adata=None,
    batch_size: int = 256,
    n_top_genes: int = 10,
) -> pd.DataFrame:
    """Decoded log mean expression of genes as one latent moves around real cells.

    For each ``v`` in ``values``: ``mean_c log rho_g(z_c + v s_i e_i)``, with ``z_c``,
    ``s_i`` and ``rho`` as in :func:`gene_effects` (so ``v`` is in units of the latent's
    aggregate-posterior standard deviation, and ``v = 0`` decodes the cells' own
    posterior means).

    Parameters
    ----------
    model
        A trained model.
    latent
        Latent name (``"latent03"``) or index.
    values
        Shifts, in standard deviations of the latent.
    n_cells, seed, adata, batch_size
        As in :func:`gene_effects`.
    genes
        Genes to report (case-insensitive).  Default: the ``n_top_genes`` genes whose
        value changes most between the smallest and the largest shift.

    Returns
    -------
    pandas.DataFrame
        Rows: the shifts (index ``value``); columns: the genes; natural-log proportions.
        ``attrs`` hold ``latent`` and ``latent_sd``.

    Raises
    ------
    InputError
        For an unknown latent or gene, or no values.
    """
    i = _latent_index(model, latent)
    values = np.asarray(list(values), dtype=np.float64)
    if values.size == 0:
        raise InputError("latent_traversal needs at least one value")
    all_genes = model._validate_anndata(adata).var_names.astype(str)
    selected = None
    if genes is not None:
        lookup = {g.upper(): j for j, g in reversed(list(enumerate(all_genes)))}
        missing = [g for g in genes if str(g).upper() not in lookup]
        if missing:
            raise InputError(f"gene(s) not in the model: {', '.join(map(str, missing[:5]))}")
        selected = np.array([lookup[str(g).upper()] for g in genes])
    dec = _Decoder(model, adata, n_cells, seed, batch_size)
    torch = dec.torch
    try:
        total = np.zeros((values.size, len(all_genes)))
        with torch.inference_mode():
            for start, stop in dec.chunks():
                z = dec.z[start:stop]
                for k, v in enumerate(values):
                    shifted = z.copy()
                    shifted[:, i] += v * dec.sd[i]
                    total[k] += dec.log_scale(shifted, start, stop).sum(0).cpu().numpy()
    finally:
        dec.restore()
    mean = total / dec.z.shape[0]
    if selected is None:
        change = np.abs(mean[np.argmax(values)] - mean[np.argmin(values)])
        selected = np.argsort(-change, kind="mergesort")[: min(n_top_genes, len(all_genes))]
    frame = pd.DataFrame(
        mean[:, selected],
        index=pd.Index(values, name="value"),
        columns=pd.Index(all_genes[selected], name="gene"),
    )
    frame.attrs["latent"] = model.latent_names[i]
    frame.attrs["latent_sd"] = float(dec.sd[i])
    return frame


# --------------------------------------------------------------------------- targets
def perturbation_targets(graph: pd.DataFrame, *, threshold: float = 0.5, top: int | None = None) -> pd.DataFrame:
    """The perturbations that move each latent, read from an intervention graph.

    A perturbation targets a latent when its graph probability is above ``threshold``.
    Targets are ranked within each latent by probability (1 = highest; ties by name);
    ``top`` keeps the first ``top`` of each latent.

    Dense columns: when more than half of the perturbations are above the threshold for a
    latent (a graph that is not sparse there, e.g. an iVAE's or a VAE's score, or a
    latent every perturbation shifts), the probability alone no longer singles out
    targets; such a latent keeps only its :data:`DENSE_TOP` most probable targets
    (``top`` when smaller) and its rows are flagged ``dense=True``.

    Parameters
    ----------
    graph
        Perturbations x latents, values in [0, 1] (``intervention_graph.csv``).
    threshold
        Probability above which a perturbation counts as a target.
    top
        Targets kept per latent (all when ``None``).

    Returns
    -------
    pandas.DataFrame
        Columns ``latent``, ``perturbation``, ``probability``, ``rank``, ``dense``, sorted
        by latent (graph column order) then rank.
    """
    if top is not None and top < 1:
        raise InputError(f"top must be at least 1, not {top}")
    if not 0.0 <= threshold < 1.0:
        raise InputError(f"threshold must be in [0, 1), not {threshold}")
    records = []
    n_pert = graph.shape[0]
    for latent in graph.columns:
        column = graph[latent].astype(float)
        above = column[column > threshold]
        dense = bool(n_pert > 0 and len(above) > n_pert / 2)
        frame = pd.DataFrame({"perturbation": above.index.astype(str), "probability": above.to_numpy()})
        frame = frame.sort_values(["probability", "perturbation"], ascending=[False, True], kind="mergesort")
        keep = len(frame)
        if dense:
            keep = min(keep, DENSE_TOP)
        if top is not None:
            keep = min(keep, top)
        for rank, (pert, prob) in enumerate(zip(frame["perturbation"][:keep], frame["probability"][:keep]), start=1):
            records.append({"latent": str(latent), "perturbation": pert, "probability": float(prob),
                            "rank": rank, "dense": dense})
    return pd.DataFrame.from_records(records, columns=["latent", "perturbation", "probability", "rank", "dense"])


# --------------------------------------------------------------------------- summary
def _fmt_p(value: float) -> str:
    if value is None or not np.isfinite(value):
        return "nan"
    return f"{value:.2g}" if value >= 1e-3 else f"{value:.1e}"


def summary_lines(
    effects: pd.DataFrame,
    enrichment: pd.DataFrame,
    targets: pd.DataFrame,
    *,
    latent_sd: dict[str, float] | None = None,
    n_targets_shown: int = 5,
    n_genes: int = 5,
    n_sets: int = 3,
) -> list[str]:
    """One line per latent: targets (with probabilities), top genes up and down, top sets.

    A latent whose posterior-mean variance is at most :data:`ACTIVE_VARIANCE` is marked
    ``inactive``.
    """
    lines = []
    for latent in effects.index.astype(str):
        row = effects.loc[latent].astype(float)
        parts = []
        sd = None if latent_sd is None else latent_sd.get(latent)
        head = latent
        if sd is not None:
            head += f" (sd {sd:.2f}{', inactive' if sd ** 2 <= ACTIVE_VARIANCE else ''})"
        t = targets[targets["latent"] == latent]
        if len(t):
            shown = ", ".join(f"{p} ({q:.2f})" for p, q in zip(t["perturbation"][:n_targets_shown], t["probability"]))
            more = f" +{len(t) - n_targets_shown} more" if len(t) > n_targets_shown else ""
            dense = " [dense column]" if bool(t["dense"].iloc[0]) else ""
            parts.append(f"targeted by {shown}{more}{dense}")
        else:
            parts.append("no targeting perturbation")
        up = row[row > 0].sort_values(ascending=False, kind="mergesort").index[:n_genes]
        down = row[row < 0].sort_values(ascending=True, kind="mergesort").index[:n_genes]
        parts.append("up: " + (", ".join(f"{g} ({row[g]:+.2f})" for g in up) or "-"))
        parts.append("down: " + (", ".join(f"{g} ({row[g]:+.2f})" for g in down) or "-"))
        e = enrichment[(enrichment["latent"] == latent) & enrichment["fdr"].notna()]
        e = e.drop_duplicates(subset=["source", "gene_set"])[:n_sets]
        if len(e):
            parts.append("sets: " + "; ".join(
                f"{s} [{src}, {d} {t_}, FDR {_fmt_p(f)}]"
                for s, src, d, t_, f in zip(e["gene_set"], e["source"], e["direction"], e["test"], e["fdr"])
            ))
        else:
            parts.append("sets: -")
        lines.append(f"{head}: " + " | ".join(parts))
    return lines


# --------------------------------------------------------------------------- plots
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _cluster_order(values: np.ndarray) -> np.ndarray:
    """Leaf order of an average-linkage clustering of the rows (Euclidean)."""
    if values.shape[0] < 3:
        return np.arange(values.shape[0])
    from scipy.cluster.hierarchy import leaves_list, linkage

    return leaves_list(linkage(values, method="average", metric="euclidean"))


def _label_size(n: int) -> float:
    return float(np.clip(260.0 / max(n, 1), 3.0, 9.0))


def plot_graph_heatmap(graph: pd.DataFrame, path: Path, title: str = "") -> None:
    """Perturbations x latents heatmap, rows and columns ordered by hierarchical clustering."""
    plt = _pyplot()
    values = graph.to_numpy(dtype=float)
    rows = _cluster_order(values)
    cols = _cluster_order(values.T)
    data = values[np.ix_(rows, cols)]
    n_rows, n_cols = data.shape
    height = float(np.clip(0.16 * n_rows + 1.8, 3.0, 30.0))
    width = float(np.clip(0.35 * n_cols + 3.0, 4.0, 20.0))
    fig, ax = plt.subplots(figsize=(width, height))
    image = ax.imshow(data, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks(range(n_cols))
    ax.set_xticklabels(graph.columns[cols].astype(str), rotation=90, fontsize=_label_size(n_cols))
    if n_rows <= 150:
        ax.set_yticks(range(n_rows))
        ax.set_yticklabels(graph.index[rows].astype(str), fontsize=_label_size(n_rows))
    else:
        ax.set_yticks([])
        ax.set_ylabel(f"{n_rows} perturbations")
    ax.set_xlabel("latent")
    fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02, label="P(perturbation moves latent)")
    top = float(np.nanmax(values)) if values.size else float("nan")
    ax.set_title(f"{title or 'intervention graph'} (clustered; max {top:.2g})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_gene_effects_heatmap(effects: pd.DataFrame, path: Path, per_latent: int | None = None) -> None:
    """Latents x (their top genes by absolute effect) heatmap, diverging colours around 0."""
    plt = _pyplot()
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
    fig, ax = plt.subplots(figsize=(width, height))
    image = ax.imshow(data, aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
    ax.set_xticks(range(len(chosen)))
    ax.set_xticklabels(chosen, rotation=90, fontsize=_label_size(len(chosen)))
    ax.set_yticks(range(n_lat))
    ax.set_yticklabels(effects.index.astype(str), fontsize=_label_size(n_lat))
    fig.colorbar(image, ax=ax, fraction=0.03, pad=0.01, label="effect (log expression per latent sd)")
    ax.set_title(f"top {per_latent} genes per latent by |effect|")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_enrichment_dotplot(enrichment: pd.DataFrame, latents: Sequence[str], path: Path, per_latent: int = 3,
                            max_sets: int = 40) -> None:
    """Latents x top gene sets: dot size -log10 FDR, colour the statistic, marker the direction.

    Drawn by :func:`scperturb_vae.pl.enrichment` (``ora`` when present, else ``rank``;
    each latent's ``per_latent`` best sets, at most ``max_sets``) and written to ``path``.
    """
    from scperturb_vae.pl.api import enrichment as draw

    draw(enrichment, latents=list(latents), per_latent=per_latent, max_sets=max_sets, save=path)


def plot_traversals(traversals: dict[str, pd.DataFrame], effects: pd.DataFrame, path: Path, n_genes: int = 3) -> None:
    """One panel per latent: change of decoded log expression of its top genes along the latent."""
    plt = _pyplot()
    latents = list(traversals)
    n = max(len(latents), 1)
    cols = min(n, 2)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.6 * rows), squeeze=False)
    for ax in axes.ravel()[len(latents):]:
        ax.set_axis_off()
    if not latents:
        axes[0, 0].text(0.5, 0.5, "no latent to traverse", ha="center", va="center")
    for ax, latent in zip(axes.ravel(), latents):
        frame = traversals[latent]
        values = frame.index.to_numpy(dtype=float)
        centre = int(np.argmin(np.abs(values)))
        for g in frame.columns:
            curve = frame[g].to_numpy(dtype=float)
            sign = effects.loc[latent, g] if g in effects.columns else 0.0
            ax.plot(values, curve - curve[centre], marker="o", markersize=2.5, linewidth=1.2,
                    linestyle="-" if sign >= 0 else "--", label=g)
        ax.axhline(0.0, color="0.7", linewidth=0.6)
        ax.axvline(0.0, color="0.7", linewidth=0.6)
        ax.set_xlabel(f"{latent} shift (sd units; sd = {frame.attrs.get('latent_sd', float('nan')):.2f})")
        ax.set_ylabel("change in decoded log expression")
        ax.set_title(latent)
        ax.legend(fontsize=7, frameon=False, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- the command
def _parse_latents(latents, names: Sequence[str]) -> list[str] | None:
    if latents is None:
        return None
    if isinstance(latents, str):
        latents = [part.strip() for part in latents.split(",")]
    latents = [str(x).strip() for x in latents if str(x).strip()]
    if not latents:
        raise InputError("--latents is empty; give latent names such as latent03,latent07")
    unknown = [x for x in latents if x not in names]
    if unknown:
        raise InputError(
            f"unknown latent(s) {', '.join(unknown)}; the run's latents are {names[0]} to {names[-1]}"
        )
    return list(dict.fromkeys(latents))


def _default_traversal_latents(targets: pd.DataFrame, names: Sequence[str], sd: dict[str, float], n: int = 4) -> list[str]:
    """The ``n`` latents with the most targets; ties (and latents without one) by larger spread."""
    counts = targets.groupby("latent").size() if len(targets) else pd.Series(dtype=int)
    ranked = sorted(names, key=lambda x: (-int(counts.get(x, 0)), -sd.get(x, 0.0), names.index(x)))
    return ranked[: min(n, len(ranked))]


def _top_genes(effects: pd.DataFrame, latent: str, n_each: int = 3) -> list[str]:
    row = effects.loc[latent].astype(float)
    up = row[row > 0].sort_values(ascending=False, kind="mergesort").index[:n_each].tolist()
    down = row[row < 0].sort_values(ascending=True, kind="mergesort").index[:n_each].tolist()
    return up + down or row.abs().sort_values(ascending=False).index[: 2 * n_each].tolist()


def interpret_run(
    run_dir: str | os.PathLike,
    gene_set_paths: str | os.PathLike | Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    groups: str | os.PathLike | None = None,
    adata: str | os.PathLike | None = None,
    top_n: int = 50,
    n_cells: int = 2000,
    latents: Sequence[str] | str | None = None,
    overwrite: bool = False,
    seed: int = 0,
    min_size: int = 5,
    max_size: int = 500,
    threshold: float = 0.5,
    organism: str | None = "Human",
) -> dict[str, Any]:
    """Interpret a run folder: gene effects, gene-set enrichment, targets, plots.

    Writes the folder ``out`` described in the module docstring, atomically (it appears
    complete or not at all; an existing one is replaced only with ``overwrite``, once the
    new one is complete).

    Parameters
    ----------
    run_dir
        A run folder made by ``scvae train`` (:func:`scperturb_vae.pipelines.train.train_run`).
    gene_set_paths
        One or more GMT files or CORUM tables (:func:`scperturb_vae.tl.enrichment.read_gene_sets`).
    out
        The folder to write.
    groups
        Perturbation groups for the perturbation side (:func:`read_groups`: a cluster
        table, a CORUM table, or a GMT file).
    adata
        The input .h5ad when it moved since training (default: the path in run.json).
    top_n
        Genes per latent and direction for the over-representation test.
    n_cells
        Cells averaged over for the gene effects (traversals use at most 500 of them).
    latents
        Latents to traverse (names, or one comma-separated string); default: the 4 with
        the most targeting perturbations.
    overwrite
        Replace an existing ``out``.
    seed
        Seed of the cell samples.
    min_size, max_size
        Gene-set size filter (within each source's universe).
    threshold
        Graph probability above which a perturbation targets a latent.
    organism
        Organism kept from CORUM tables.

    Returns
    -------
    dict
        ``out`` (Path), ``summary_lines``, ``files``, and the content of
        ``interpret.json`` (``settings``, ``gene_sets``, ``latent_sd``, ``timing``, ...).

    Raises
    ------
    InputError
        Missing or incomplete run folder, unreadable or empty gene-set or groups file, a
        gene-set file without a gene of the model, an unknown latent, bad settings.
    OutputError
        ``out`` exists (without ``overwrite``) or cannot be written.
    """
    from scperturb_vae.tl.enrichment import enrich_latents, perturbation_set_enrichment
    from scperturb_vae.model.runs import load_run, read_run_summary

    start = time.perf_counter()
    timing: dict[str, float] = {}
    if top_n < 1:
        raise InputError(f"--top-n must be at least 1, not {top_n}")
    if n_cells < 1:
        raise InputError(f"the number of cells must be at least 1, not {n_cells}")
    if min_size < 1 or max_size < min_size:
        raise InputError(f"gene-set sizes need 1 <= --min-size <= --max-size, got {min_size} and {max_size}")
    if not 0.0 <= threshold < 1.0:
        raise InputError(f"--threshold must be in [0, 1), not {threshold}")
    out = check_output(out, overwrite)
    read_run_summary(run_dir)
    gene_sets = load_gene_sets(gene_set_paths, organism=organism)
    group_sets = descriptions = None
    group_kind = None
    if groups is not None:
        group_sets, descriptions, group_kind = read_groups(groups, organism=organism)
        logger.info(f"read {len(group_sets)} perturbation groups ({group_kind}) from {groups}")
    timing["read_inputs_s"] = time.perf_counter() - start

    t = time.perf_counter()
    run = load_run(run_dir, adata=adata)
    model = run.model
    names = [str(x) for x in run.latent.var_names]
    if names != [str(x) for x in model.latent_names]:
        raise InputError(f"{run_dir}: latent.h5ad's latents differ from the model's; is the run folder intact?")
    chosen = _parse_latents(latents, names)
    genes = run.adata.var_names.astype(str)
    for source, sets in gene_sets.items():
        restrict_gene_sets(sets, genes, source=f"gene-set file {source!r}")
    timing["load_run_s"] = time.perf_counter() - t

    if group_sets is not None:  # no group among the screen's perturbations: fail before the long part
        perturbation_set_enrichment({}, group_sets, [str(p) for p in run.graph.index])
    t = time.perf_counter()
    logger.info(f"gene effects of {len(names)} latents on {len(genes)} genes over {min(n_cells, run.adata.n_obs)} cells")
    effects = gene_effects(model, run.adata, n_cells=n_cells, seed=seed)
    effects.index = pd.Index(names, name="latent")
    latent_sd = effects.attrs["latent_sd"]
    timing["gene_effects_s"] = time.perf_counter() - t

    t = time.perf_counter()
    enrichment = enrich_latents(effects, gene_sets, top_n=top_n, min_size=min_size, max_size=max_size)
    timing["enrichment_s"] = time.perf_counter() - t

    graph = run.graph
    targets = perturbation_targets(graph, threshold=threshold)
    pert_enrichment = None
    if group_sets is not None:
        target_lists = {lat: targets.loc[targets["latent"] == lat, "perturbation"].tolist() for lat in names}
        pert_enrichment = perturbation_set_enrichment(
            target_lists, group_sets, [str(p) for p in graph.index], descriptions=descriptions
        )

    t = time.perf_counter()
    if chosen is None:
        chosen = _default_traversal_latents(targets, names, latent_sd)
    traversals = {}
    for latent in chosen:
        traversals[latent] = latent_traversal(
            model, latent, genes=_top_genes(effects, latent), n_cells=min(500, n_cells), seed=seed, adata=run.adata
        )
    timing["traversals_s"] = time.perf_counter() - t

    lines = summary_lines(effects, enrichment, targets, latent_sd=latent_sd)
    record = {
        "settings": {
            "run": str(Path(run_dir).resolve()), "gene_sets": [str(Path(p).resolve()) for p in _as_list(gene_set_paths)],
            "groups": None if groups is None else str(Path(groups).resolve()), "groups_kind": group_kind,
            "adata": None if adata is None else str(Path(adata).resolve()), "top_n": top_n, "n_cells": n_cells,
            "traversal_latents": chosen, "seed": seed, "min_size": min_size, "max_size": max_size,
            "threshold": threshold, "organism": organism,
        },
        "model": run.summary.get("model_class"),
        "n_cells_used": effects.attrs["n_cells"],
        "n_genes": len(genes),
        "latent_sd": latent_sd,
        "active_latents": [x for x in names if latent_sd[x] ** 2 > ACTIVE_VARIANCE],
        "gene_sets": {
            source: {"n_sets_read": len(sets), "n_sets_tested": int(enrichment.attrs["n_sets"].get(source, 0)),
                     "universe": int(enrichment.attrs["universe"].get(source, 0))}
            for source, sets in gene_sets.items()
        },
        "n_targets": {x: int((targets["latent"] == x).sum()) for x in names},
        "n_groups": None if group_sets is None else len(group_sets),
    }

    t = time.perf_counter()
    with atomic_dir(out, overwrite=overwrite) as tmp:
        effects.to_csv(tmp / "gene_effects.csv")
        enrichment.to_csv(tmp / "enrichment.csv", index=False)
        targets.to_csv(tmp / "perturbation_targets.csv", index=False)
        if pert_enrichment is not None:
            pert_enrichment.to_csv(tmp / "perturbation_enrichment.csv", index=False)
        long = [
            frame.rename_axis(index="value").reset_index().melt(id_vars="value", var_name="gene",
                                                                  value_name="log_expression").assign(latent=latent)
            for latent, frame in traversals.items()
        ]
        columns = ["latent", "value", "gene", "log_expression"]
        (pd.concat(long, ignore_index=True)[columns] if long else pd.DataFrame(columns=columns)).to_csv(
            tmp / "traversals.csv", index=False)
        title = f"Interpretation of run {Path(run_dir).name}"
        sources = ", ".join(f"{s} ({v['n_sets_tested']} sets, universe {v['universe']})"
                            for s, v in record["gene_sets"].items())
        md = [
            f"# {title}",
            "",
            (f"{run.summary.get('model_class', 'model')} with {len(names)} latents, {len(graph)} perturbations, "
             f"{len(genes)} genes; gene effects over {effects.attrs['n_cells']} cells; gene sets: {sources}"),
            "",
            ("Effects are changes of the decoded log expression per standard deviation of the latent; "
             f"targets are perturbations with graph probability > {threshold:g}."),
            "",
        ]
        md += [f"- {line}" for line in lines]
        if pert_enrichment is not None and len(pert_enrichment):
            best = pert_enrichment.drop_duplicates("latent")
            md += ["", "## Perturbation groups (best per latent)", ""]
            md += [f"- {r.latent}: {r.group}{' (' + r.description + ')' if r.description else ''}: "
                   f"{r.overlap} of {r.n_targets} targets ({r.perturbations}), FDR {_fmt_p(r.fdr)}"
                   for r in best.itertuples(index=False)]
        (tmp / "summary.md").write_text("\n".join(md) + "\n", encoding="utf-8")
        plot_graph_heatmap(graph, tmp / "graph_heatmap.png", f"intervention graph of {Path(run_dir).name}")
        plot_gene_effects_heatmap(effects, tmp / "gene_effects_heatmap.png")
        plot_enrichment_dotplot(enrichment, names, tmp / "enrichment_dotplot.png")
        plot_traversals(traversals, effects, tmp / "traversals.png")
        timing["write_s"] = time.perf_counter() - t
        timing["total_s"] = time.perf_counter() - start
        record["timing"] = {k: round(v, 3) for k, v in timing.items()}
        write_json(record, tmp / "interpret.json")
        files = sorted(p.name for p in tmp.iterdir())
    logger.info(f"interpretation written in {timing['total_s']:.1f} s")
    return {"out": out, "summary_lines": lines, "files": files, **record}


def _as_list(paths) -> list:
    if isinstance(paths, (str, os.PathLike)):
        return [paths]
    return list(paths)


def program_match(enrichment: pd.DataFrame, truth, latent: np.ndarray, latent_names: Sequence[str],
                  *, active_variance: float = 0.01) -> dict[str, Any]:
    """How many active learned latents have their true gene program as top enriched set.

    For a ``programs`` simulation (``truth``: its AnnData, with ``obsm["z_true"]``): learned
    latents are matched to true latents by the Hungarian MCC assignment; a matched learned
    latent is *active* when the variance of its posterior means exceeds ``active_variance``;
    its top set is the first row of ``enrichment`` (sorted by FDR) for it, and it is correct
    when that set is the true latent's program (``z{j:02d}_program``, as written by
    :func:`scperturb_vae.data.simulate.programs_to_gene_sets`).
    """
    from scperturb_vae.tl.metrics import mean_correlation_coefficient

    latent = np.asarray(latent, dtype=float)
    names = [str(n) for n in latent_names]
    mcc = mean_correlation_coefficient(np.asarray(truth.obsm["z_true"]), latent)
    variance = latent.var(axis=0)
    per_latent, correct, active = [], 0, 0
    for j, column in enumerate(mcc.assignment):
        if column < 0 or variance[column] <= active_variance:
            continue
        active += 1
        rows = enrichment[enrichment["latent"].astype(str) == names[column]]
        top = str(rows.iloc[0]["gene_set"]) if len(rows) else None
        hit = top == f"z{j:02d}_program"
        correct += int(hit)
        per_latent.append({"learned": names[column], "true_program": f"z{j:02d}_program", "top_set": top, "correct": hit})
    return {"n_active": active, "n_correct": correct, "fraction": correct / active if active else 0.0,
            "mcc": mcc.mcc, "latents": per_latent}
