"""``scvae clusters`` as a library function: :func:`cluster_screen` opens a screen, computes
its perturbation clusters (:func:`scperturb_vae.tl.clusters.compute_perturbation_clusters`)
or reads a user's cluster table (:func:`scperturb_vae.data.cluster_tables.read_cluster_table`),
and writes the long table as CSV (:func:`write_cluster_table`, atomically).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from scperturb_vae.data.cluster_tables import (
    check_long_table,
    cluster_summary,
    read_cluster_table,
    restrict_to_perturbations,
)
from scperturb_vae.data.validate import open_perturbation_adata
from scperturb_vae.errors import InputError
from scperturb_vae.io import atomic_path, check_output
from scperturb_vae.tl.clusters import compute_perturbation_clusters

__all__ = ["CLUSTER_TABLE_COLUMNS", "ClusteredScreen", "cluster_screen", "write_cluster_table"]

logger = logging.getLogger("scperturb_vae")

#: Columns of the CSV written by ``scvae clusters``.
CLUSTER_TABLE_COLUMNS = ["perturbation", "cluster", "n_cells", "description"]


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
    check_long_table(table)
    with atomic_path(path, overwrite=overwrite) as tmp:
        table.to_csv(tmp, index=False)
    return Path(path)


@dataclass(frozen=True, eq=False)
class ClusteredScreen:
    """What :func:`cluster_screen` wrote.

    Attributes
    ----------
    out
        The CSV written.
    table
        The long table written (columns :data:`CLUSTER_TABLE_COLUMNS`).
    summary
        One row per cluster (:func:`~scperturb_vae.data.cluster_tables.cluster_summary`).
    source
        ``"computed"`` or ``"read from <table file>"``.
    seconds
        Time taken from opening the screen to writing the table.
    """

    out: Path
    table: pd.DataFrame = field(repr=False)
    summary: pd.DataFrame = field(repr=False)
    source: str
    seconds: float


def cluster_screen(
    adata: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    perturbation_key: str | None = None,
    control_label: str | None = None,
    layer: str | None = None,
    n_clusters: int = 8,
    n_genes: int = 500,
    clusters_file: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> ClusteredScreen:
    """Cluster the perturbations of a screen, or read a cluster table, and write the table.

    Parameters
    ----------
    adata
        The screen's ``.h5ad`` (read only).
    out
        The CSV to write: columns ``perturbation``, ``cluster``, ``n_cells`` (cells
        labelled with the perturbation alone), ``description``.
    perturbation_key, control_label, layer
        As in :func:`~scperturb_vae.data.validate.open_perturbation_adata`.
    n_clusters, n_genes
        As in :func:`~scperturb_vae.tl.clusters.compute_perturbation_clusters`.
    clusters_file
        Read the clusters from this table instead of computing them; only the
        perturbations present in the data are kept.
    overwrite
        Replace an existing ``out`` (only once the new file is complete).

    Returns
    -------
    ClusteredScreen

    Raises
    ------
    InputError
        On bad arguments, an unreadable screen or cluster table, or clusters without
        a member in the data.
    OutputError
        When ``out`` exists (without ``overwrite``) or cannot be written.
    """
    check_output(out, overwrite)
    if n_clusters < 1:
        raise InputError(f"--n-clusters must be at least 1, got {n_clusters}")
    if n_genes < 1:
        raise InputError(f"--n-genes must be at least 1, got {n_genes}")
    user_table = None
    if clusters_file is not None:  # read the table before the (slower) h5ad
        user_table = read_cluster_table(clusters_file)
    start = time.perf_counter()
    data = open_perturbation_adata(
        adata, perturbation_key=perturbation_key, control_label=control_label, layer=layer
    )
    logger.info(data.summary())
    n_cells = data.n_cells
    if user_table is None:
        table = compute_perturbation_clusters(
            data.adata, data.perturbation_key, data.control_label,
            n_clusters=n_clusters, n_genes=n_genes, layer=data.layer,
        )
        table["description"] = ""
        source = "computed"
    else:
        table = restrict_to_perturbations(user_table, data.perturbations, source=Path(clusters_file).name)
        table.insert(
            2, "n_cells",
            pd.Series([int(n_cells.get(p, 0)) for p in table["perturbation"]], dtype="int64"),
        )
        source = f"read from {clusters_file}"
    table = table[CLUSTER_TABLE_COLUMNS]
    write_cluster_table(table, out, overwrite=overwrite)
    summary = cluster_summary(table)
    return ClusteredScreen(
        out=Path(out), table=table, summary=summary, source=source, seconds=time.perf_counter() - start
    )
