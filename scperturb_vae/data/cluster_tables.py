"""Cluster tables: a user's perturbation -> cluster file read into a *long table* (one
row per (perturbation, cluster) pair, columns ``perturbation``, ``cluster``,
``description``), and what is done with such a table: keeping the perturbations of the
data, the members and a one-row-per-cluster summary, and the names and natural order of
clusters (``cluster0``, ``cluster1``, ..., ``cluster10``).

Two file layouts are read (:func:`read_cluster_table`): a long table, and the "members"
layout of the Replogle et al. 2022 cluster table (one row per cluster, comma-separated
members).  Computed clusters (:func:`scperturb_vae.tl.clusters.compute_perturbation_clusters`)
are long tables too.

Only numpy and pandas are imported, so this module loads quickly.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scperturb_vae.data.labels import preview
from scperturb_vae.errors import InputError

__all__ = [
    "CLUSTER_PREFIX",
    "PERTURBATION_COLUMN_CANDIDATES",
    "check_long_table",
    "cluster_members",
    "cluster_summary",
    "natural_key",
    "read_cluster_table",
    "restrict_to_perturbations",
]

logger = logging.getLogger("scperturb_vae")

#: Prefix of cluster names: ``cluster0``, ``cluster1``, ...
CLUSTER_PREFIX = "cluster"

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

_SNIFF_BYTES = 64 * 1024


# --------------------------------------------------------------------------- helpers


def natural_key(name: str) -> tuple:
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
            f"columns: {preview(columns)}"
        )
    perturbation_column = _find_column(columns, PERTURBATION_COLUMN_CANDIDATES)
    if perturbation_column is None:
        raise InputError(
            f"{path} has no perturbation column (expected one of "
            f"{', '.join(PERTURBATION_COLUMN_CANDIDATES[:7])}, ...); columns: {preview(columns)}"
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
    check_long_table(table)
    present = {str(p) for p in perturbations}
    n_clusters = table["cluster"].nunique()
    kept = table[table["perturbation"].astype(str).isin(present)]
    if kept.empty:
        raise InputError(
            f"no member of the {n_clusters} clusters in {source} is a perturbation of the data "
            f"(members include {preview(sorted(table['perturbation'].astype(str).unique()), 4)}; "
            f"the data has {preview(sorted(present), 4) or 'none'})"
        )
    n_empty = n_clusters - kept["cluster"].nunique()
    logger.info(
        "clusters: %d of %d clusters in %s have members in the data (%d of %d rows kept); "
        "%d cluster(s) have no member in the data",
        n_clusters - n_empty, n_clusters, source, len(kept), len(table), n_empty,
    )
    return kept.reset_index(drop=True)


# --------------------------------------------------------------------------- summaries


def check_long_table(table: pd.DataFrame) -> None:
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
    check_long_table(table)
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
