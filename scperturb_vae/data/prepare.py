"""Turn a published screen's AnnData into the AnnData ``scvae train`` expects, in memory
(:func:`prepare_adata`; ``scvae prepare`` reads and writes the files with
:func:`scperturb_vae.pipelines.prepare.prepare_screen`).  In the prepared AnnData

- ``obs["perturbation"]`` holds one label per cell: the control cells are labelled
  ``"control"``, a single perturbation by its gene, a combination by its genes sorted and
  joined with ``"+"`` (``"A+B"``); a part equal to the control label is dropped from a
  combination (``"A_control"`` is the single perturbation ``"A"``);
- cells without a label (NaN, None, empty) are dropped, or labelled ``"unassigned"`` with
  ``keep_unassigned``; cells and genes without any count are dropped;
- ``X`` holds the raw counts as a CSR matrix of integers (``int32``; ``int64`` only when a
  count needs it), checked to be finite, non-negative and integer-valued and converted
  block by block: a dense matrix (the Replogle 2022 files store ``X`` dense) is never read
  whole, and a sparse one is never densified;
- ``var_names`` are unique gene symbols when a symbol column exists (the original names
  are kept in ``var["gene_id"]``);
- ``obs["batch"]`` is the GEM group (``gem_group``) when the file has one;
- ``uns["scvae_prepare"]`` records the source file, its SHA-256, the layout, and every
  mapping, renaming and drop done.

Columns of ``obs`` that ``scvae train`` would also take for the perturbation column
(``gene``, ``target_gene``, ...; see :data:`~scperturb_vae.data.labels.PERTURBATION_KEY_CANDIDATES`)
are renamed with the prefix ``orig_`` (``orig_gene``), and the source ``perturbation``
column becomes ``orig_perturbation``, so that the prepared file has exactly one
perturbation column.  The control is renamed ``"control"`` (the original label is in
``uns["scvae_prepare"]["control_label_in"]`` and in the label mapping) so that every
prepared file trains with the same ``--control control``.

The layouts (Replogle 2022, scPerturb, generic), their detection and the mapping of
their labels are in :mod:`scperturb_vae.data.layouts`.
"""

from __future__ import annotations

import logging
import os
import pathlib
import re
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from scperturb_vae.data.counts import check_counts, check_matrix_form, counts_matrix
from scperturb_vae.data.labels import (
    COMBINATION_SEP,
    PERTURBATION_KEY_CANDIDATES,
    is_numeric_column,
    missing_label_mask,
    preview,
)
from scperturb_vae.data.layouts import (
    PREPARED_CONTROL,
    PREPARED_KEY,
    UNASSIGNED_LABEL,
    layout_label_column,
    prepare_labels,
    resolve_layout,
)
from scperturb_vae.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import anndata

__all__ = [
    "BATCH_KEY",
    "ORIGINAL_PREFIX",
    "SYMBOL_COLUMNS",
    "UNS_KEY",
    "prepare_adata",
]

logger = logging.getLogger("scperturb_vae")

#: The ``obs`` column of the technical batch (GEM group) in a prepared file.
BATCH_KEY = "batch"
#: The ``uns`` key of the preparation record.
UNS_KEY = "scvae_prepare"
#: Prefix of renamed source columns (``gene`` -> ``orig_gene``).
ORIGINAL_PREFIX = "orig_"

#: ``var`` columns holding gene symbols, tried in this order when the ``var`` names are
#: Ensembl IDs and no column is given.
SYMBOL_COLUMNS: tuple[str, ...] = ("gene_name", "gene_symbol", "gene_symbols", "symbol", "feature_name")
_ENSEMBL_ID = re.compile(r"^ENS[A-Z]*G\d{6,}(\.\d+)?$")
#: Matrix elements read at once from a dense matrix (2**25: 128 MiB of float32).
_BLOCK_ELEMENTS = 1 << 25
_INT32_MAX = np.iinfo(np.int32).max


# --------------------------------------------------------------------------- counts


def _integer_csr(block: Any) -> sp.csr_matrix:
    """A checked block of counts as CSR with integer data (int32 when the values fit)."""
    csr = block.tocsr() if sp.issparse(block) else sp.csr_matrix(np.asarray(block))
    csr.eliminate_zeros()
    data = csr.data
    dtype = np.int32 if data.size == 0 or data.max() <= _INT32_MAX else np.int64
    return sp.csr_matrix((data.astype(dtype), csr.indices, csr.indptr), shape=csr.shape)


def _read_counts(X: Any, keep: np.ndarray, what: str) -> tuple[sp.csr_matrix, str]:
    """Read the rows ``keep`` of a count matrix as an integer CSR matrix, block by block.

    Parameters
    ----------
    X
        A numpy array, a scipy sparse matrix, an h5py dataset (backed dense ``X``) or an
        anndata backed sparse dataset.
    keep
        Boolean mask of the rows to keep.
    what
        The matrix's name in messages.

    Returns
    -------
    tuple
        The CSR matrix and the dtype of the source values.

    Raises
    ------
    InputError
        When the values are not finite, non-negative integers (see
        :func:`~scperturb_vae.data.counts.check_counts`).
    """
    n_rows, n_cols, dtype = check_matrix_form(X, what)
    fmt = getattr(X, "format", None)
    if fmt is not None and fmt != "csr":  # CSC/COO/...: one sparse conversion, never dense
        X = X.to_memory() if hasattr(X, "to_memory") else X
        X = sp.csr_matrix(X)
    chunk = max(1, _BLOCK_ELEMENTS // max(n_cols, 1))
    blocks = []
    for start in range(0, n_rows, chunk):
        stop = min(start + chunk, n_rows)
        rows = keep[start:stop]
        if not rows.any():
            continue
        block = X[start:stop]
        block = block.tocsr()[rows] if sp.issparse(block) else np.asarray(block)[rows]
        check_counts(block, what=what)
        blocks.append(_integer_csr(block))
    if not blocks:
        return sp.csr_matrix((0, n_cols), dtype=np.int32), str(dtype)
    counts = blocks[0] if len(blocks) == 1 else sp.vstack(blocks, format="csr")
    counts.sort_indices()
    return counts, str(dtype)


# --------------------------------------------------------------------------- names


def _unique_column_name(name: str, taken: set[str]) -> str:
    """``name``, or ``name_2``, ``name_3``, ... when taken."""
    if name not in taken:
        return name
    i = 2
    while f"{name}_{i}" in taken:
        i += 1
    return f"{name}_{i}"


def _make_unique(names: pd.Index) -> tuple[pd.Index, int]:
    """Names made unique by suffixes ``-1``, ``-2``, ... (as anndata does); number changed."""
    from anndata.utils import make_index_unique

    names = pd.Index([str(n) for n in names], dtype=object)
    if names.is_unique:
        return names, 0
    unique = make_index_unique(names)
    return pd.Index(unique, dtype=object), int((np.asarray(unique) != np.asarray(names)).sum())


def _symbol_column(var: pd.DataFrame, layout: str, gene_names: str | None) -> str | None:
    """The ``var`` column of gene symbols to use as gene names, or ``None``."""
    if gene_names is not None:
        if gene_names not in var.columns:
            available = preview([str(c) for c in var.columns]) or "(none)"
            raise InputError(
                f"gene names column {gene_names!r} is not a var column; available columns: {available}"
            )
        if is_numeric_column(var[gene_names]):
            raise InputError(f"var column {gene_names!r} is numeric; expected gene symbols")
        return gene_names
    if layout == "replogle" and "gene_name" in var.columns:
        return "gene_name"
    names = pd.Series([str(n) for n in var.index], dtype=object)
    if len(names) and names.str.match(_ENSEMBL_ID).mean() > 0.5:
        for column in SYMBOL_COLUMNS:
            if column in var.columns and not is_numeric_column(var[column]):
                return column
        logger.info("the gene names are Ensembl IDs and var has no symbol column "
                    "(%s); keeping the IDs", ", ".join(SYMBOL_COLUMNS))
    return None


def _gene_names(var: pd.DataFrame, column: str | None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """``var`` with unique gene names (symbols from ``column`` when given) and a record."""
    var = var.copy()
    ids = pd.Index([str(n) for n in var.index], dtype=object)
    record: dict[str, Any] = {
        "gene_names_from": column or "var_names",
        "gene_ids_column": "",
        "n_gene_symbols_missing": 0,
        "duplicate_gene_symbols": np.asarray([], dtype=str),
        "n_gene_names_made_unique": 0,
    }
    if column is None:
        names, n_changed = _make_unique(ids)
        record["n_gene_names_made_unique"] = n_changed
    else:
        missing = missing_label_mask(var[column])
        symbols = var[column].astype(object).where(~missing, "").astype(str).str.strip()
        symbols = pd.Series(np.where(missing, np.asarray(ids), symbols.to_numpy()), dtype=object)
        duplicated = symbols.duplicated(keep=False).to_numpy()
        named = np.where(duplicated, symbols.to_numpy() + "_" + np.asarray(ids), symbols.to_numpy())
        names, n_changed = _make_unique(pd.Index(named, dtype=object))
        id_column = _unique_column_name("gene_id", {str(c) for c in var.columns})
        var[id_column] = np.asarray(ids, dtype=object)
        record.update(
            gene_ids_column=id_column,
            n_gene_symbols_missing=int(missing.sum()),
            duplicate_gene_symbols=np.asarray(sorted(set(symbols[duplicated])), dtype=str),
            n_gene_names_made_unique=n_changed + int(duplicated.sum()),
        )
    var.index = names
    var.index.name = None
    return var, record


def _rename_candidate_columns(obs: pd.DataFrame) -> tuple[pd.DataFrame, list[str], list[str]]:
    """Rename the source columns ``scvae train`` would take for the labels (and ``batch``
    when the GEM group replaces it)."""
    renamed_from, renamed_to = [], []
    taken = {str(c) for c in obs.columns}
    mapping = {}
    names = PERTURBATION_KEY_CANDIDATES + ((BATCH_KEY,) if "gem_group" in obs.columns else ())
    for name in names:
        if name in obs.columns:
            new = _unique_column_name(ORIGINAL_PREFIX + name, taken)
            taken.add(new)
            mapping[name] = new
            renamed_from.append(name)
            renamed_to.append(new)
    return obs.rename(columns=mapping), renamed_from, renamed_to


def _dropped_slots(adata: anndata.AnnData, layer: str | None) -> list[str]:
    """The parts of the source AnnData not carried into the prepared file."""
    dropped = []
    if layer is not None and adata.X is not None:
        dropped.append("X")
    for slot in ("layers", "obsm", "varm", "obsp", "varp", "uns"):
        mapping = getattr(adata, slot, None)
        if mapping is None:
            continue
        for name in mapping:
            if not (slot == "layers" and name == layer):
                dropped.append(f"{slot}/{name}")
    if adata.raw is not None:
        dropped.append("raw")
    return dropped


# --------------------------------------------------------------------------- prepare


def prepare_adata(
    adata: anndata.AnnData,
    *,
    layout: str = "auto",
    perturbation_key: str | None = None,
    control_label: str | None = None,
    gene_names: str | None = None,
    layer: str | None = None,
    keep_unassigned: bool = False,
    source: str | os.PathLike[str] | None = None,
    sha256: str | None = None,
) -> anndata.AnnData:
    """Build the prepared AnnData of a screen, without modifying ``adata``.

    Parameters
    ----------
    adata
        The source AnnData, in memory or backed (``anndata.read_h5ad(path, backed="r")``:
        the counts are then read block by block).
    layout
        ``"auto"``, ``"replogle"``, ``"scperturb"`` or ``"generic"`` (see
        :mod:`scperturb_vae.data.layouts`).
    perturbation_key
        The ``obs`` column with the source labels [default: ``gene`` (replogle),
        ``perturbation`` (scperturb), the one candidate column present (generic)].
    control_label
        The source label of the control cells [default: the one label spelled like a
        control, see :func:`~scperturb_vae.data.labels.resolve_control_label`].
    gene_names
        The ``var`` column of gene symbols to use as gene names [default: ``gene_name``
        for replogle; otherwise a symbol column when the names are Ensembl IDs].
    layer
        The layer holding the raw counts [default: ``X``]; they are written to ``X``.
    keep_unassigned
        Keep the cells without a label, labelled ``"unassigned"``, instead of dropping them.
    source, sha256
        The source file and its digest, recorded in ``uns["scvae_prepare"]``.

    Returns
    -------
    anndata.AnnData
        The prepared AnnData (in memory), with the record in ``uns["scvae_prepare"]``.
        It is not validated here: :func:`~scperturb_vae.pipelines.prepare.prepare_screen`
        validates it before writing.

    Raises
    ------
    InputError
        On an unknown or ambiguous layout, a missing or numeric label column, an
        unknown control label, labels that cannot be mapped, counts that are not raw
        counts, or nothing left to train on.
    """
    import anndata

    from scperturb_vae import __version__

    layout, how = resolve_layout(layout, adata.obs)
    if how != "given":
        logger.info("layout: %s (%s)", layout, how)
    key = layout_label_column(adata.obs, layout, perturbation_key)
    labels = prepare_labels(adata.obs, layout, key, control_label, keep_unassigned)
    n_unlabelled = int(labels.unlabelled.sum())
    keep = np.ones(adata.n_obs, dtype=bool) if keep_unassigned else ~labels.unlabelled

    X, what = counts_matrix(adata, layer)
    counts, dtype_in = _read_counts(X, keep, what)
    if counts.shape[0] == 0:
        raise InputError(f"no cells left: all {adata.n_obs} cells of column {key!r} are unlabelled")
    cell_rows = np.flatnonzero(keep)
    per_cell = np.asarray(counts.sum(axis=1, dtype=np.int64)).ravel()
    per_gene = np.asarray(counts.sum(axis=0, dtype=np.int64)).ravel()
    nonempty_cells = per_cell > 0
    nonempty_genes = per_gene > 0
    if not nonempty_genes.any() or not nonempty_cells.any():
        raise InputError(f"{what} holds no counts in the {counts.shape[0]} labelled cells")
    if not nonempty_cells.all():
        counts = counts[nonempty_cells]
    if not nonempty_genes.all():
        counts = counts[:, nonempty_genes].tocsr()
    cell_rows = cell_rows[nonempty_cells]
    prepared = labels.prepared[cell_rows]
    if not (prepared == PREPARED_CONTROL).any():
        raise InputError(
            f"no control cells ({labels.control!r}) with counts are left in column {key!r}"
        )

    # obs: the source columns (candidates renamed), the prepared labels, the batch
    obs = adata.obs.iloc[cell_rows].copy()
    obs, renamed_from, renamed_to = _rename_candidate_columns(obs)
    for name in obs.columns:
        if isinstance(obs[name].dtype, pd.CategoricalDtype):
            obs[name] = obs[name].cat.remove_unused_categories()
    obs[PREPARED_KEY] = pd.Categorical(prepared.astype(str))
    batch_from = ""
    if "gem_group" in obs.columns:
        obs[BATCH_KEY] = pd.Categorical(obs["gem_group"].astype(str))
        batch_from = "gem_group"
    elif BATCH_KEY in obs.columns and not obs[BATCH_KEY].isna().any():
        batch_from = BATCH_KEY  # the source's own batch column, kept as it is
    obs_names, n_cells_renamed = _make_unique(obs.index)
    obs.index = obs_names
    obs.index.name = None

    var = adata.var.iloc[np.flatnonzero(nonempty_genes)]
    var, gene_record = _gene_names(var, _symbol_column(adata.var, layout, gene_names))

    record: dict[str, Any] = {
        "source": str(pathlib.Path(source).resolve()) if source is not None else "in-memory AnnData",
        "source_sha256": sha256 or "",
        "source_n_cells": int(adata.n_obs),
        "source_n_genes": int(adata.n_vars),
        "layout": layout,
        "layout_chosen": how,
        "counts_from": what,
        "counts_dtype_in": dtype_in,
        "counts_dtype": str(counts.dtype),
        "perturbation_key_in": key,
        "perturbation_key": PREPARED_KEY,
        "control_label_in": labels.control,
        "control_label": PREPARED_CONTROL,
        "combination_sep_in": labels.sep,
        "combination_sep": COMBINATION_SEP,
        "label_mapping": {
            "original": np.asarray(labels.original, dtype=str),
            "prepared": np.asarray(labels.mapped, dtype=str),
        },
        "unsplit_labels": np.asarray(labels.unsplit, dtype=str),
        "n_cells_unlabelled": n_unlabelled,
        "unlabelled_cells": (
            f"kept as {UNASSIGNED_LABEL!r}" if keep_unassigned else "dropped"
        ),
        "n_cells_dropped_unlabelled": 0 if keep_unassigned else n_unlabelled,
        "n_cells_dropped_empty": int((~nonempty_cells).sum()),
        "n_genes_dropped_empty": int((~nonempty_genes).sum()),
        "renamed_obs_columns": {
            "original": np.asarray(renamed_from, dtype=str),
            "renamed": np.asarray(renamed_to, dtype=str),
        },
        "batch_key": BATCH_KEY if batch_from else "",
        "batch_from": batch_from,
        "n_cell_names_made_unique": n_cells_renamed,
        "dropped_slots": np.asarray(_dropped_slots(adata, layer), dtype=str),
        "n_cells": int(counts.shape[0]),
        "n_genes": int(counts.shape[1]),
        "scperturb_vae_version": __version__,
        **gene_record,
    }
    return anndata.AnnData(X=counts, obs=obs, var=var, uns={UNS_KEY: record})
