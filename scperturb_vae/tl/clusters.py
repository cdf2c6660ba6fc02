"""Clusters of perturbations, for holding out a whole group of related perturbations.

A held-out-perturbation evaluation is most telling when the held-out perturbations
are unlike every training perturbation: "all mediator-complex knockouts" rather than
one knockout whose complex partners were seen in training.  This module gives such
groups, named ``cluster0``, ``cluster1``, ..., in one of two ways:

- :func:`compute_perturbation_clusters` clusters the perturbations of a screen by
  their pseudobulk expression profiles (deterministic: no random numbers);
- :func:`read_cluster_table` reads a table the user already has: a long table
  (one row per perturbation and cluster) or the "members" layout of the Replogle
  et al. 2022 cluster table (one row per cluster, comma-separated members).

Both return a *long table*: one row per (perturbation, cluster) pair, with
columns ``perturbation`` and ``cluster`` (and more; see each function).  A
perturbation may sit in several clusters of a user's table; computed clusters are
a partition.  :func:`cluster_members`, :func:`cluster_summary` and
:func:`write_cluster_table` work on such a table.

Only numpy, scipy and pandas are imported (anndata objects are passed in), so this
module loads quickly.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from scperturb_vae.data.validate import COMBINATION_SEP, _preview, split_combination
from scperturb_vae.errors import InputError
from scperturb_vae.io import atomic_path

if TYPE_CHECKING:  # pragma: no cover
    import anndata

__all__ = [
    "CLUSTER_PREFIX",
    "PERTURBATION_COLUMN_CANDIDATES",
    "TARGET_SUM",
    "cluster_members",
    "cluster_summary",
    "compute_perturbation_clusters",
    "perturbation_profiles",
    "read_cluster_table",
    "restrict_to_perturbations",
    "write_cluster_table",
]

logger = logging.getLogger("scperturb_vae")

#: Prefix of cluster names: ``cluster0``, ``cluster1``, ...
CLUSTER_PREFIX = "cluster"

#: Counts per cell after normalisation, before ``log1p`` (as ``scanpy.pp.normalize_total``
#: with ``target_sum=1e4``).
TARGET_SUM = 1e4

#: Columns of a user's long table that may hold the perturbation (compared
#: case-insensitively, tried in this order).
PERTURBATION_COLUMN_CANDIDATES: tuple[str, ...] = (
    "perturbation",
    "perturbations",
    "perturbation_name",
    "gene",
    "genes",
    "target",
    "target_gene",
    "target_genes",
    "gene_symbol",
    "gene_name",
    "symbol",
    "member",
)

#: Columns of a user's table that may hold the cluster (compared case-insensitively).
_CLUSTER_COLUMN_CANDIDATES: tuple[str, ...] = ("cluster", "cluster_id", "cluster_name")

#: Columns that may describe a cluster, in order of preference.
_DESCRIPTION_COLUMN_CANDIDATES: tuple[str, ...] = (
    "description",
    "manual_annotation",
    "best_description",
    "annotation",
)

_CHUNK_ROWS = 10_000
_SNIFF_BYTES = 64 * 1024


# --------------------------------------------------------------------------- helpers


def _natural_key(name: str) -> tuple:
    """Sort key that orders ``cluster2`` before ``cluster10`` (digits compared as numbers)."""
    parts = re.split(r"(\d+)", str(name))
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts if p != "")


def _is_int_like(value: str) -> bool:
    """Tell whether a table value spells a whole number (``"3"``, ``"3.0"``)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return False
    return np.isfinite(number) and float(number).is_integer()


def _cluster_name(value: Any) -> str:
    """Name a cluster given in a table: whole numbers ``n`` become ``cluster{n}``."""
    text = str(value).strip()
    if _is_int_like(text):
        return f"{CLUSTER_PREFIX}{int(float(text))}"
    return text


def _check_positive_int(name: str, value: Any) -> int:
    """Return ``value`` as an int, raising :class:`InputError` unless it is an integer >= 1."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


# --------------------------------------------------------------------------- profiles


def _counts_matrix(adata: anndata.AnnData, layer: str | None) -> Any:
    """The count matrix (``X`` or ``layers[layer]``), with one-line errors."""
    if layer is None:
        if adata.X is None:
            raise InputError("the AnnData has no X; pass --layer with the raw counts layer")
        return adata.X
    if layer not in adata.layers:
        available = ", ".join(map(str, adata.layers.keys())) or "(none)"
        raise InputError(f"layer {layer!r} not found; available layers: {available}")
    return adata.layers[layer]


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
            f"{_preview(map(str, adata.obs.columns)) or '(none)'}"
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
            len(small), min_cells, _preview(small),
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
    X = _counts_matrix(adata, layer)
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


def _cut_into(linkage_matrix: np.ndarray, n_items: int, n_clusters: int) -> list[list[int]]:
    """The partition left after the first ``n_items - n_clusters`` merges of a linkage.

    This yields exactly ``n_clusters`` groups (``fcluster(..., "maxclust")`` may give
    fewer when merge heights tie).
    """
    groups: dict[int, list[int]] = {i: [i] for i in range(n_items)}
    for step in range(n_items - n_clusters):
        left, right = int(linkage_matrix[step, 0]), int(linkage_matrix[step, 1])
        groups[n_items + step] = groups.pop(left) + groups.pop(right)
    return list(groups.values())


def _ward_on_correlation(features: np.ndarray, n_clusters: int) -> list[list[int]]:
    """Ward clustering of rows whose squared Euclidean distances are ``2 * (1 - r)``.

    Each row is centred and scaled to unit length, so the Euclidean distance between
    two rows is ``sqrt(2 * (1 - r))`` with ``r`` their Pearson correlation (a
    monotone function of the correlation distance ``1 - r`` that is a true Euclidean
    distance, as Ward's criterion needs).  A constant row (undefined correlation)
    stays the zero vector, at distance 1 from every other row.
    """
    from scipy.cluster.hierarchy import linkage

    n_items = features.shape[0]
    if n_clusters >= n_items:
        return [[i] for i in range(n_items)]
    if n_clusters == 1:
        return [list(range(n_items))]
    centred = features - features.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(centred, axis=1, keepdims=True)
    unit = np.divide(centred, norms, out=np.zeros_like(centred), where=norms > 1e-12)
    tree = linkage(unit, method="ward", metric="euclidean")
    return _cut_into(tree, n_items, n_clusters)


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
    keys = [(_natural_key(c), str(p)) for c, p in zip(table["cluster"], table["perturbation"])]
    order = sorted(range(len(keys)), key=keys.__getitem__)
    return table.iloc[order].reset_index(drop=True)


# --------------------------------------------------------------------------- reading


def _check_table_file(path: Path) -> None:
    """Raise :class:`InputError` unless ``path`` is an existing, readable, non-empty file."""
    if not path.exists():
        raise InputError(f"{path} does not exist")
    if path.is_dir():
        raise InputError(f"{path} is a directory, not a cluster table")
    if not os.access(path, os.R_OK):
        raise InputError(f"cannot read {path}: permission denied")
    if path.stat().st_size == 0:
        raise InputError(f"{path} is empty")


def _sniff_delimiter(path: Path) -> str:
    """Guess the delimiter of a CSV/TSV file among tab, comma and semicolon."""
    try:
        with path.open("r", encoding="utf-8-sig", newline="") as handle:
            sample = handle.read(_SNIFF_BYTES)
    except UnicodeDecodeError:
        raise InputError(f"{path} is not a text (UTF-8) table") from None
    except OSError as err:
        raise InputError(f"cannot read {path}: {err.strerror or err}") from None
    if "\x00" in sample:
        raise InputError(f"{path} is not a text table (it holds binary data)")
    lines = [line for line in sample.splitlines() if line.strip()]
    if not lines:
        raise InputError(f"{path} is empty")
    header = lines[0]
    try:
        return csv.Sniffer().sniff("\n".join(lines[:50]), delimiters="\t,;").delimiter
    except csv.Error:
        pass
    for delimiter in ("\t", ",", ";"):
        if delimiter in header:
            return delimiter
    return ","


def _read_text_table(path: Path) -> pd.DataFrame:
    """Read a CSV/TSV as strings (empty cells as NaN), with one-line errors."""
    delimiter = _sniff_delimiter(path)
    try:
        frame = pd.read_csv(
            path, sep=delimiter, dtype=str, keep_default_na=False, na_values=[""],
            encoding="utf-8-sig", skip_blank_lines=True,
        )
    except pd.errors.EmptyDataError:
        raise InputError(f"{path} is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"cannot read {path} as a table: {reason}") from None
    if frame.empty:
        raise InputError(f"{path} has a header but no rows")
    return frame


def _find_column(columns: list[str], candidates: Iterable[str]) -> str | None:
    """The first column whose stripped, lower-cased name is among ``candidates``."""
    lowered = {str(c).strip().lower(): c for c in reversed(columns)}
    for candidate in candidates:
        if candidate in lowered:
            return lowered[candidate]
    return None


def _is_unnamed(column: str) -> bool:
    """Tell whether pandas invented the name of a column (an empty header cell)."""
    text = str(column).strip()
    return text == "" or bool(re.fullmatch(r"Unnamed: \d+", text))


def _clean(series: pd.Series) -> pd.Series:
    """Strings stripped, with missing and blank values as ``""``."""
    return series.fillna("").astype(str).str.strip()


def _members_layout(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Long table from the members layout: one row per cluster, comma-separated members."""
    columns = list(frame.columns)
    members_column = _find_column(columns, ("members",))
    id_column = _find_column(columns, _CLUSTER_COLUMN_CANDIDATES)
    if id_column is None:
        if not _is_unnamed(columns[0]) or columns[0] == members_column:
            raise InputError(
                f"{path}: the members layout needs the cluster id in an unnamed first column "
                "or in a 'cluster' column"
            )
        id_column = columns[0]
    descriptions = [c for c in (_find_column(columns, (d,)) for d in _DESCRIPTION_COLUMN_CANDIDATES)
                     if c is not None]
    rows = []
    for _, row in frame.iterrows():
        cluster_id = str(row[id_column]).strip() if pd.notna(row[id_column]) else ""
        if not cluster_id:
            continue
        description = next((str(row[c]).strip() for c in descriptions
                            if pd.notna(row[c]) and str(row[c]).strip()), "")
        members = [m.strip() for m in re.split(r"[,;]", str(row[members_column]))
                   if pd.notna(row[members_column]) and m.strip()]
        name = _cluster_name(cluster_id)
        rows.extend((member, name, description) for member in members)
    return pd.DataFrame(rows, columns=["perturbation", "cluster", "description"], dtype=object)


def _long_layout(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Long table from a table with one (perturbation, cluster) pair per row."""
    columns = list(frame.columns)
    cluster_column = _find_column(columns, _CLUSTER_COLUMN_CANDIDATES)
    if cluster_column is None:
        raise InputError(
            f"{path} has no cluster column (expected 'cluster', or a 'members' column); "
            f"columns: {_preview(columns)}"
        )
    perturbation_column = _find_column(columns, PERTURBATION_COLUMN_CANDIDATES)
    if perturbation_column is None:
        raise InputError(
            f"{path} has no perturbation column (expected one of "
            f"{', '.join(PERTURBATION_COLUMN_CANDIDATES[:7])}, ...); columns: {_preview(columns)}"
        )
    description_column = _find_column(columns, _DESCRIPTION_COLUMN_CANDIDATES)
    table = pd.DataFrame(
        {
            "perturbation": _clean(frame[perturbation_column]),
            "cluster": _clean(frame[cluster_column]),
            "description": (_clean(frame[description_column]) if description_column is not None
                            else pd.Series([""] * len(frame), dtype=object)),
        }
    )
    complete = (table["perturbation"] != "") & (table["cluster"] != "")
    if (~complete).any():
        logger.info("clusters: %d row(s) of %s without perturbation or cluster skipped",
                    int((~complete).sum()), path)
    table = table[complete].copy()
    table["cluster"] = [_cluster_name(c) for c in table["cluster"]]
    # one description per cluster: the first non-empty one
    first = table[table["description"] != ""].groupby("cluster", sort=False)["description"].first()
    table["description"] = table["cluster"].map(first).fillna("")
    return table.astype(object)


def read_cluster_table(
    path: str | os.PathLike[str], perturbations: Iterable[str] | None = None
) -> pd.DataFrame:
    """Read a user's perturbation -> cluster table.

    Two layouts are recognised (CSV or TSV; the delimiter is sniffed among tab, comma
    and semicolon; column names are compared case-insensitively):

    - **members layout** (a ``members`` column; e.g. the Replogle et al. 2022 cluster
      table): one row per cluster; ``members`` holds comma-separated perturbed genes;
      the cluster id is in a ``cluster`` column or else in the unnamed first column;
      the description is the first non-empty one of ``description``,
      ``manual_annotation``, ``best_description``, ``annotation``.
    - **long layout**: one row per (perturbation, cluster) pair, with a ``cluster``
      column and a perturbation column (the first of
      :data:`PERTURBATION_COLUMN_CANDIDATES` present: ``perturbation``, ``gene``,
      ``target``, ``target_gene``, ...), and optionally a description column (as
      above; a cluster takes its first non-empty description).  Rows missing the
      perturbation or the cluster are skipped (and logged).

    Cluster ids that are whole numbers ``n`` are named ``cluster{n}``; other cluster
    names are kept as written.  A perturbation may be in several clusters: every row
    is kept (exact duplicate pairs are dropped).

    Parameters
    ----------
    path
        The table file (read only).
    perturbations
        The perturbations present in the data.  When given, only these members are
        kept (exact, case-sensitive match); the number of clusters left without any
        member is logged.

    Returns
    -------
    pandas.DataFrame
        Columns ``perturbation``, ``cluster``, ``description`` (``""`` when none), in
        the file's cluster order, members sorted within a cluster.

    Raises
    ------
    InputError
        When the file is missing, unreadable, not a text table or empty; when it lacks
        the cluster or perturbation column; when no row is left; when ``perturbations``
        is given and no member is among them.
    """
    path = Path(path).expanduser()
    _check_table_file(path)
    frame = _read_text_table(path)
    if _find_column(list(frame.columns), ("members",)) is not None:
        table = _members_layout(frame, path)
    else:
        table = _long_layout(frame, path)
    table = table.drop_duplicates(subset=["perturbation", "cluster"]).reset_index(drop=True)
    if table.empty:
        raise InputError(f"{path} holds no (perturbation, cluster) pair")
    order = {name: i for i, name in enumerate(pd.unique(table["cluster"]))}
    keys = [(order[c], str(p)) for c, p in zip(table["cluster"], table["perturbation"])]
    ranked = sorted(range(len(keys)), key=keys.__getitem__)
    table = table.iloc[ranked].reset_index(drop=True)[["perturbation", "cluster", "description"]]
    if perturbations is not None:
        table = restrict_to_perturbations(table, perturbations, source=path.name)
    return table


def restrict_to_perturbations(
    table: pd.DataFrame, perturbations: Iterable[str], *, source: str = "the cluster table"
) -> pd.DataFrame:
    """Keep the rows of a long table whose perturbation is present in the data.

    Parameters
    ----------
    table
        A long table with columns ``perturbation`` and ``cluster``.
    perturbations
        The perturbations present in the data (exact, case-sensitive match).
    source
        How to name the table in the log line and the error.

    Returns
    -------
    pandas.DataFrame
        The kept rows, in their order, with a fresh index.  How many clusters were
        left without any member is logged.

    Raises
    ------
    InputError
        When no member is among ``perturbations``.
    """
    _check_long_table(table)
    present = {str(p) for p in perturbations}
    n_clusters = table["cluster"].nunique()
    kept = table[table["perturbation"].astype(str).isin(present)]
    if kept.empty:
        raise InputError(
            f"no member of the {n_clusters} clusters in {source} is a perturbation of the data "
            f"(members include {_preview(sorted(table['perturbation'].astype(str).unique()), 4)}; "
            f"the data has {_preview(sorted(present), 4) or 'none'})"
        )
    n_empty = n_clusters - kept["cluster"].nunique()
    logger.info(
        "clusters: %d of %d clusters in %s have members in the data (%d of %d rows kept); "
        "%d cluster(s) have no member in the data",
        n_clusters - n_empty, n_clusters, source, len(kept), len(table), n_empty,
    )
    return kept.reset_index(drop=True)


# --------------------------------------------------------------------------- summaries


def _check_long_table(table: pd.DataFrame) -> None:
    """Raise :class:`InputError` unless ``table`` has ``perturbation`` and ``cluster`` columns."""
    missing = [c for c in ("perturbation", "cluster") if c not in getattr(table, "columns", [])]
    if missing:
        raise InputError(f"cluster table lacks column(s): {', '.join(missing)}")


def cluster_members(table: pd.DataFrame) -> dict[str, list[str]]:
    """Members of every cluster.

    Parameters
    ----------
    table
        A long table with columns ``perturbation`` and ``cluster``.

    Returns
    -------
    dict of str to list of str
        Clusters in their order of first appearance in ``table``; members sorted
        and without duplicates.
    """
    _check_long_table(table)
    members: dict[str, set[str]] = {}
    for perturbation, cluster in zip(table["perturbation"], table["cluster"]):
        members.setdefault(str(cluster), set()).add(str(perturbation))
    return {cluster: sorted(found) for cluster, found in members.items()}


def cluster_summary(table: pd.DataFrame) -> pd.DataFrame:
    """One row per cluster: ``cluster``, ``size``, ``members`` (comma-joined), ``description``.

    Parameters
    ----------
    table
        A long table with columns ``perturbation`` and ``cluster`` (and optionally
        ``description``; a cluster takes its first non-empty one).

    Returns
    -------
    pandas.DataFrame
        Clusters in their order of first appearance in ``table``.
    """
    members = cluster_members(table)
    descriptions: dict[str, str] = {}
    if "description" in table.columns:
        for cluster, text in zip(table["cluster"], table["description"]):
            if pd.notna(text) and str(text).strip():
                descriptions.setdefault(str(cluster), str(text).strip())
    return pd.DataFrame(
        {
            "cluster": pd.Series(list(members), dtype=object),
            "size": pd.Series([len(m) for m in members.values()], dtype=np.int64),
            "members": pd.Series([",".join(m) for m in members.values()], dtype=object),
            "description": pd.Series([descriptions.get(c, "") for c in members], dtype=object),
        }
    )


def write_cluster_table(
    table: pd.DataFrame, path: str | os.PathLike[str], overwrite: bool = False
) -> Path:
    """Write a cluster table as CSV, atomically (see :mod:`scperturb_vae.io`).

    Parameters
    ----------
    table
        A long table (at least ``perturbation`` and ``cluster``); every column is written.
    path
        The CSV to create.
    overwrite
        Replace an existing file (only once the new one is complete).

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    InputError
        When ``table`` lacks the ``perturbation`` or ``cluster`` column.
    OutputError
        When ``path`` exists and ``overwrite`` is false, or cannot be written.
    """
    _check_long_table(table)
    with atomic_path(path, overwrite=overwrite) as tmp:
        table.to_csv(tmp, index=False)
    return Path(path)
