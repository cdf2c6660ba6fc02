"""Clusters of perturbations computed from a screen, for holding out a whole group of
related perturbations.

A held-out-perturbation evaluation is most telling when the held-out perturbations
are unlike every training perturbation: "all mediator-complex knockouts" rather than
one knockout whose complex partners were seen in training.
:func:`compute_perturbation_clusters` gives such groups, named ``cluster0``, ``cluster1``,
..., by clustering the perturbations of a screen by their pseudobulk expression profiles
(:func:`perturbation_profiles`; deterministic: no random numbers).

The result is a *long table*: one row per (perturbation, cluster) pair, with columns
``perturbation`` and ``cluster`` (and ``n_cells``); computed clusters are a partition.
Reading a user's cluster table, and the members and summary of a long table, are in
:mod:`scperturb_vae.data.cluster_tables`; writing one is
:func:`scperturb_vae.pipelines.clusters.write_cluster_table`.

Only numpy, scipy and pandas are imported (anndata objects are passed in), so this
module loads quickly.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from scperturb_vae.data.cluster_tables import CLUSTER_PREFIX, natural_key
from scperturb_vae.data.counts import counts_matrix
from scperturb_vae.data.labels import COMBINATION_SEP, preview, split_combination
from scperturb_vae.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import anndata

__all__ = [
    "TARGET_SUM",
    "compute_perturbation_clusters",
    "perturbation_profiles",
]

logger = logging.getLogger("scperturb_vae")

#: Counts per cell after normalisation, before ``log1p`` (as ``scanpy.pp.normalize_total``
#: with ``target_sum=1e4``).
TARGET_SUM = 1e4

_CHUNK_ROWS = 10_000


def _check_positive_int(name: str, value: Any) -> int:
    """Return ``value`` as an int, raising :class:`InputError` unless it is an integer >= 1."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


# --------------------------------------------------------------------------- profiles


def _single_perturbation_groups(
    adata: anndata.AnnData, perturbation_key: str, control_label: str, min_cells: int
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Assign every cell to a group: 0 for controls, 1.. for single perturbations, -1 otherwise.

    Returns the per-cell group codes, the group names (control first, then the kept
    perturbations sorted) and the number of cells of each group.
    """
    if perturbation_key not in adata.obs.columns:
        raise InputError(
            f"perturbation key {perturbation_key!r} is not an obs column; available columns: "
            f"{preview(map(str, adata.obs.columns)) or '(none)'}"
        )
    labels = adata.obs[perturbation_key].astype(str).to_numpy()
    distinct, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    if control_label not in set(distinct):
        raise InputError(
            f"control label {control_label!r} not found in column {perturbation_key!r}"
        )
    singles: list[str] = []
    n_combinations = 0
    small: list[str] = []
    for label, n in zip(distinct, counts):
        if label == control_label:
            continue
        if len(split_combination(label)) > 1:
            n_combinations += 1
        elif n < min_cells:
            small.append(str(label))
        else:
            singles.append(str(label))
    if n_combinations:
        logger.info("clusters: %d combination label(s) (A%sB) skipped", n_combinations, COMBINATION_SEP)
    if small:
        logger.info(
            "clusters: %d perturbation(s) with fewer than %d cells skipped: %s",
            len(small), min_cells, preview(small),
        )
    if not singles:
        raise InputError(
            f"no single perturbation with at least {min_cells} cells in column "
            f"{perturbation_key!r} (besides the control {control_label!r})"
        )
    names = [control_label] + sorted(singles)
    code_of = {name: i for i, name in enumerate(names)}
    label_codes = np.array([code_of.get(str(label), -1) for label in distinct], dtype=np.int64)
    codes = label_codes[inverse.ravel()]
    n_cells = np.array([counts[np.searchsorted(distinct, name)] for name in names], dtype=np.int64)
    return codes, names, n_cells


def _log_normalised(block: Any) -> Any:
    """``log1p(counts / total * TARGET_SUM)`` of a row block, in float64, staying sparse if sparse.

    Cells without counts stay all-zero.
    """
    if sp.issparse(block):
        block = sp.csr_matrix(block, dtype=np.float64, copy=True)
        totals = np.asarray(block.sum(axis=1)).ravel()
        scale = np.divide(TARGET_SUM, totals, out=np.zeros_like(totals), where=totals > 0)
        block.data *= np.repeat(scale, np.diff(block.indptr))
        np.log1p(block.data, out=block.data)
        return block
    block = np.array(block, dtype=np.float64)  # a copy
    totals = block.sum(axis=1)
    scale = np.divide(TARGET_SUM, totals, out=np.zeros_like(totals), where=totals > 0)
    block *= scale[:, None]
    np.log1p(block, out=block)
    return block


def perturbation_profiles(
    adata: anndata.AnnData,
    perturbation_key: str,
    control_label: str,
    *,
    layer: str | None = None,
    min_cells: int = 1,
) -> tuple[pd.DataFrame, pd.Series]:
    """Pseudobulk profile of every single perturbation, relative to the controls.

    The profile of perturbation ``p`` is, for every gene, the mean over the cells of
    ``p`` of ``log1p(counts / cell_total * 1e4)``, minus the same mean over the
    control cells.  The means are computed by multiplying a sparse group-indicator
    matrix (entries ``1 / n_cells``) with the log-normalised matrix, one block of
    10,000 rows at a time: a sparse count matrix is never densified whole (only a
    sparse float64 copy of one row block exists at a time); a dense one works too.

    Parameters
    ----------
    adata
        AnnData with raw counts in ``X`` or ``layers[layer]`` (an in-memory or backed
        AnnData; it is not modified).
    perturbation_key
        ``obs`` column with the labels.
    control_label
        Label of the control cells (excluded from the profiles; their mean is the
        reference).
    layer
        Layer holding the counts, or ``None`` for ``X``.
    min_cells
        Perturbations with fewer cells are left out (and logged).

    Returns
    -------
    profiles : pandas.DataFrame
        Perturbations (sorted) x genes, float64.  Combination labels (``"A+B"``) and
        the control are left out.
    n_cells : pandas.Series
        Cells of each perturbation (same index), int64.

    Raises
    ------
    InputError
        When the column, the control label or the layer is missing, or when no single
        perturbation has ``min_cells`` cells.
    """
    min_cells = _check_positive_int("min_cells", min_cells)
    X, _ = counts_matrix(adata, layer)
    codes, names, n_cells = _single_perturbation_groups(
        adata, perturbation_key, control_label, min_cells
    )
    n_groups, n_genes = len(names), X.shape[1]
    sums = np.zeros((n_groups, n_genes), dtype=np.float64)
    for start in range(0, X.shape[0], _CHUNK_ROWS):
        stop = min(start + _CHUNK_ROWS, X.shape[0])
        block_codes = codes[start:stop]
        rows = np.flatnonzero(block_codes >= 0)
        if rows.size == 0:
            continue
        block = X[start:stop]
        if rows.size < stop - start:
            block = block[rows]
        normalised = _log_normalised(block)
        indicator = sp.csr_matrix(
            (np.ones(rows.size), (block_codes[rows], np.arange(rows.size))),
            shape=(n_groups, rows.size),
        )
        product = indicator @ normalised
        sums += product.toarray() if sp.issparse(product) else np.asarray(product)
    means = sums / n_cells[:, None]
    profiles = means[1:] - means[0]
    index = pd.Index(names[1:], dtype=object, name="perturbation")
    frame = pd.DataFrame(profiles, index=index, columns=pd.Index(adata.var_names.astype(str)))
    return frame, pd.Series(n_cells[1:], index=index, dtype=np.int64, name="n_cells")


# --------------------------------------------------------------------------- clustering


def _informative_genes(profiles: np.ndarray, n_genes: int) -> np.ndarray:
    """Columns of the ``n_genes`` largest variances across perturbations (ties: first gene).

    Genes whose profile does not vary are never selected.
    """
    variance = profiles.var(axis=0)
    order = np.argsort(-variance, kind="stable")
    order = order[variance[order] > 0]
    return np.sort(order[:n_genes])


def _ward_on_correlation(features: np.ndarray, n_clusters: int) -> list[list[int]]:
    """Ward clustering of rows whose squared Euclidean distances are ``2 * (1 - r)``.

    Each row is centred and scaled to unit length, so the Euclidean distance between
    two rows is ``sqrt(2 * (1 - r))`` with ``r`` their Pearson correlation (a
    monotone function of the correlation distance ``1 - r`` that is a true Euclidean
    distance, as Ward's criterion needs).  A constant row (undefined correlation)
    stays the zero vector, at distance 1 from every other row.
    """
    from scipy.cluster.hierarchy import cut_tree, linkage

    n_items = features.shape[0]
    if n_clusters >= n_items:
        return [[i] for i in range(n_items)]
    if n_clusters == 1:
        return [list(range(n_items))]
    centred = features - features.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(centred, axis=1, keepdims=True)
    unit = np.divide(centred, norms, out=np.zeros_like(centred), where=norms > 1e-12)
    tree = linkage(unit, method="ward", metric="euclidean")
    # The partition left after the first n_items - n_clusters merges: exactly n_clusters
    # groups.  cut_tree applies the merges in the order of their heights, so the heights
    # are replaced by the merge ranks: where heights tie, the linkage's own order decides
    # (plain cut_tree would break such ties in its own order; fcluster(..., "maxclust")
    # may give fewer clusters).
    ranked = tree.copy()
    ranked[:, 2] = np.arange(1, n_items)
    labels = cut_tree(ranked, n_clusters=n_clusters).ravel()
    return [np.flatnonzero(labels == label).tolist() for label in np.unique(labels)]


def _name_clusters(groups: list[list[str]]) -> dict[str, str]:
    """Map each member to its cluster name: largest first, ties by the first member."""
    ordered = sorted((sorted(g) for g in groups), key=lambda g: (-len(g), g[0]))
    return {member: f"{CLUSTER_PREFIX}{i}" for i, g in enumerate(ordered) for member in g}


def compute_perturbation_clusters(
    adata: anndata.AnnData,
    perturbation_key: str,
    control_label: str,
    *,
    n_clusters: int = 8,
    n_genes: int = 500,
    layer: str | None = None,
    min_cells: int = 1,
) -> pd.DataFrame:
    """Cluster the single perturbations of a screen by their expression profiles.

    Steps (no random numbers, so the result is the same at every call):

    1. Profiles: :func:`perturbation_profiles` (mean log-normalised expression of the
       perturbation's cells minus that of the control cells).  Combination labels
       (``"A+B"``), the control and perturbations with fewer than ``min_cells`` cells
       are left out.
    2. Informative genes: the ``n_genes`` genes whose profile varies most across the
       perturbations (largest population variance; ties go to the earlier gene;
       genes that do not vary at all are never used).  Genes moved by no
       perturbation carry only noise and would dilute the correlations.
    3. Standardisation: each selected gene is centred and scaled to unit variance
       across the perturbations, so that strongly responding genes do not dominate.
    4. Clustering: Ward hierarchical clustering (:func:`scipy.cluster.hierarchy.linkage`)
       on correlation distance, cut into exactly ``min(n_clusters, n_perturbations)``
       clusters.  Correlation distance groups perturbations that move the same genes
       in the same direction whatever their strength (a weak and a strong knockdown
       of one complex).  Ward is used rather than average linkage because it gives
       compact clusters of comparable size, whereas average linkage tends to split
       off single outlying perturbations and leave one big cluster, which makes poor
       held-out sets.  Ward needs Euclidean distances, so it is run on the profiles
       centred and scaled to unit length per perturbation, whose Euclidean distance
       ``sqrt(2 (1 - r))`` is a monotone function of the correlation distance
       ``1 - r``.

    Cluster names are stable: ``cluster0`` is the largest cluster, then by decreasing
    size; clusters of equal size are ordered by their alphabetically first member.

    Parameters
    ----------
    adata
        AnnData with raw counts (sparse CSR or dense; not modified).
    perturbation_key
        ``obs`` column with the labels.
    control_label
        Label of the control cells.
    n_clusters
        Clusters wanted; fewer when there are fewer perturbations.
    n_genes
        Informative genes used (fewer when fewer genes vary).
    layer
        Layer holding the counts, or ``None`` for ``X``.
    min_cells
        Perturbations with fewer cells are not clustered.

    Returns
    -------
    pandas.DataFrame
        Columns ``perturbation``, ``cluster`` (``"cluster0"``, ...) and ``n_cells``
        (cells labelled with the perturbation alone), one row per perturbation,
        sorted by cluster number, then perturbation.

    Raises
    ------
    InputError
        On a missing column, control label or layer; when no perturbation is left;
        when fewer than 2 genes vary across the perturbations; on bad arguments.
    """
    n_clusters = _check_positive_int("n_clusters", n_clusters)
    n_genes = _check_positive_int("n_genes", n_genes)
    profiles, n_cells = perturbation_profiles(
        adata, perturbation_key, control_label, layer=layer, min_cells=min_cells
    )
    names = list(profiles.index)
    k = min(n_clusters, len(names))
    if len(names) == 1 or k == 1:
        groups = [names]
        logger.info("clusters: %d perturbation(s) in one cluster", len(names))
    else:
        values = profiles.to_numpy()
        genes = _informative_genes(values, n_genes)
        if genes.size < 2:
            raise InputError(
                f"only {genes.size} gene(s) vary across the {len(names)} perturbation profiles; "
                "cannot cluster them by correlation"
            )
        selected = values[:, genes]
        z = (selected - selected.mean(axis=0)) / selected.std(axis=0)
        groups = [[names[i] for i in g] for g in _ward_on_correlation(z, k)]
        logger.info(
            "clusters: %d perturbations into %d clusters (Ward, correlation distance, %d genes)",
            len(names), k, genes.size,
        )
    cluster_of = _name_clusters(groups)
    table = pd.DataFrame(
        {
            "perturbation": pd.Series(names, dtype=object),
            "cluster": pd.Series([cluster_of[n] for n in names], dtype=object),
            "n_cells": pd.Series(n_cells.to_numpy(), dtype=np.int64),
        }
    )
    return _sorted_table(table)


def _sorted_table(table: pd.DataFrame) -> pd.DataFrame:
    """Sort a long table by cluster (natural order), then perturbation; fresh index."""
    keys = [(natural_key(c), str(p)) for c, p in zip(table["cluster"], table["perturbation"])]
    order = sorted(range(len(keys)), key=keys.__getitem__)
    return table.iloc[order].reset_index(drop=True)
