"""Raw counts: the count matrix of an AnnData (``X`` or a layer) and the checks that it
holds raw counts (finite, non-negative, integer-valued; a valid sparse structure; no cell
and no gene without counts).

Sparse matrices are checked through their stored values and are never densified; dense
and backed matrices are read in row blocks.  Problems are raised as
:class:`~scperturb_vae.errors.InputError`, one line each.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from scperturb_vae.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import anndata

__all__ = [
    "check_counts",
    "check_matrix_form",
    "check_no_empty_cells_or_genes",
    "counts_matrix",
]

_VALUE_BLOCK = 1 << 22  # elements of a sparse ``.data`` checked at once


def counts_matrix(adata: anndata.AnnData, layer: str | None) -> tuple[Any, str]:
    """Return the count matrix (``X`` or ``layers[layer]``, possibly backed) and its name
    for messages (``"X"`` or ``"layer 'counts'"``).

    Raises
    ------
    InputError
        When the AnnData has no ``X`` (and no layer is given), or the layer is missing.
    """
    if layer is None:
        if adata.X is None:
            raise InputError("the AnnData has no X; pass --layer with the raw counts layer")
        return adata.X, "X"
    if layer not in adata.layers:
        available = ", ".join(map(str, adata.layers.keys())) or "(none)"
        hint = ""
        if layer == "raw" and adata.raw is not None:
            hint = " (the counts in adata.raw: adata.layers['raw'] = adata.raw[:, adata.var_names].X, or scvae --layer raw)"
        raise InputError(f"layer {layer!r} not found; available layers: {available}{hint}")
    return adata.layers[layer], f"layer {layer!r}"


def _row_chunks(X: Any, chunk_rows: int) -> Iterator[Any]:
    """Yield ``X[i:j]`` for consecutive blocks of ``chunk_rows`` rows."""
    n_rows = X.shape[0]
    for start in range(0, n_rows, chunk_rows):
        yield X[start : min(start + chunk_rows, n_rows)]


def _value_blocks(X: Any, chunk_rows: int) -> Iterator[np.ndarray]:
    """Yield the stored values of ``X`` in blocks, never densifying sparse data.

    In-memory sparse matrices give their ``.data`` in 1-D blocks; dense arrays and
    backed datasets (h5py datasets, anndata backed sparse datasets) are read in row
    blocks of ``chunk_rows`` rows.
    """
    if sp.issparse(X):
        data = np.asarray(X.data)
        for start in range(0, data.size, _VALUE_BLOCK):
            yield data[start : start + _VALUE_BLOCK]
        return
    for block in _row_chunks(X, chunk_rows):
        if sp.issparse(block):
            yield np.asarray(block.data)
        else:
            yield np.asarray(block)


class _ValueStats:
    """Running summary of the values of a matrix, filled block by block."""

    def __init__(self) -> None:
        self.n_nan = 0
        self.n_inf = 0
        self.n_negative = 0
        self.minimum: float | None = None
        self.non_integer: float | None = None

    def update(self, block: np.ndarray) -> None:
        """Add one block of values to the summary."""
        block = np.ravel(block)
        if block.size == 0:
            return
        if block.dtype.kind in "iub":
            values = block
        else:
            finite = np.isfinite(block)
            if not finite.all():
                n_nan = int(np.isnan(block).sum())
                self.n_nan += n_nan
                self.n_inf += int((~finite).sum()) - n_nan
                values = block[finite]
            else:
                values = block
            if values.size and self.non_integer is None:
                fractional = values != np.rint(values)
                if fractional.any():
                    self.non_integer = float(values[np.argmax(fractional)])
        if values.size == 0:
            return
        low = values.min()
        if low < 0:
            self.n_negative += int((values < 0).sum())
        self.minimum = float(low) if self.minimum is None else min(self.minimum, float(low))


def check_matrix_form(X: Any, what: str) -> tuple[int, int, np.dtype]:
    """Check that ``X`` is a non-empty 2-D numeric matrix; return its shape and dtype.

    Raises
    ------
    InputError
        When ``X`` is not 2-D, is empty, or is not numeric.
    """
    shape = tuple(getattr(X, "shape", ()))
    if len(shape) != 2:
        raise InputError(f"{what} is not a 2-D matrix (shape {shape})")
    if shape[0] == 0 or shape[1] == 0:
        raise InputError(f"{what} is empty ({shape[0]} cells x {shape[1]} genes)")
    dtype = np.dtype(getattr(X, "dtype", np.float64))
    if dtype.kind not in "iufb":
        raise InputError(f"{what} has dtype {dtype}; expected numeric raw counts")
    return int(shape[0]), int(shape[1]), dtype


def check_counts(X: Any, *, what: str = "X", chunk_rows: int = 10_000) -> None:
    """Check that a matrix holds raw counts.

    Parameters
    ----------
    X
        A scipy sparse matrix or array (CSR, CSC, COO, ...), a dense numpy array, or
        a backed dataset (h5py dataset, anndata backed sparse dataset).
    what
        How to name the matrix in messages (``"X"``, ``"layer 'counts'"``).
    chunk_rows
        Rows read at once for dense or backed matrices. Sparse matrices are checked
        through their stored values only and are never densified.

    Raises
    ------
    InputError
        When the matrix is empty, is not numeric, or holds NaN, infinite, negative
        or non-integer values.
    """
    check_matrix_form(X, what)
    if chunk_rows < 1:
        raise InputError(f"chunk_rows must be at least 1, got {chunk_rows}")
    _check_sparse_structure(X, what)
    stats = _ValueStats()
    for block in _value_blocks(X, chunk_rows):
        stats.update(block)
    _raise_for_stats(stats, what)


def _check_sparse_structure(X: Any, what: str) -> None:
    """Raise when an in-memory sparse matrix has an impossible structure.

    anndata builds CSR/CSC matrices from a file's ``data``, ``indices`` and ``indptr``
    without checking that the indices lie within the shape; summing such a matrix
    (a corrupted file) makes scipy write outside its arrays and crash the process.
    The checks only read the arrays (nothing is converted or sorted).
    """
    if not sp.issparse(X):
        return
    fmt = X.format
    problem = None
    if fmt in ("csr", "csc"):
        n_major, n_minor = X.shape if fmt == "csr" else X.shape[::-1]
        indptr, indices, data = np.asarray(X.indptr), np.asarray(X.indices), np.asarray(X.data)
        if indptr.ndim != 1 or len(indptr) != n_major + 1:
            problem = f"index pointer of length {len(indptr)} for {n_major} {'rows' if fmt == 'csr' else 'columns'}"
        elif indices.ndim != 1 or data.ndim != 1 or len(indices) != len(data):
            problem = f"{len(indices)} indices for {len(data)} values"
        elif indptr[0] != 0 or indptr[-1] > len(indices):
            problem = f"index pointer runs from {indptr[0]} to {indptr[-1]} for {len(indices)} values"
        elif np.any(np.diff(indptr) < 0):
            problem = "decreasing index pointer"
        elif len(indices) and (indices.min() < 0 or indices.max() >= n_minor):
            problem = f"indices outside 0..{n_minor - 1}"
    elif fmt == "coo":
        row, col = np.asarray(X.row), np.asarray(X.col)
        if len(row) and (row.min() < 0 or row.max() >= X.shape[0] or col.min() < 0 or col.max() >= X.shape[1]):
            problem = "coordinates outside the shape"
    if problem is not None:
        raise InputError(f"{what} is not a valid {fmt.upper()} sparse matrix ({problem}); is the file corrupted?")


def _raise_for_stats(stats: _ValueStats, what: str) -> None:
    """Raise the first problem found in ``stats``, worst first."""
    if stats.n_nan or stats.n_inf:
        found = [f"{n} {kind}" for n, kind in ((stats.n_nan, "NaN"), (stats.n_inf, "infinite"))
                 if n]
        raise InputError(
            f"{what} holds {' and '.join(found)} values: expected finite raw counts"
        )
    if stats.n_negative:
        raise InputError(
            f"{what} holds negative values (min {stats.minimum:g}): expected raw "
            "counts; pass --layer with the raw counts layer"
        )
    if stats.non_integer is not None:
        raise InputError(
            f"{what} holds non-integer values (e.g. {stats.non_integer:.6g}): expected "
            "raw counts, not normalised/log data; pass --layer with the raw counts layer"
        )


def _cell_and_gene_totals(X: Any, chunk_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Sum a matrix over genes (per cell) and over cells (per gene), in float64.

    Sparse matrices are summed directly; dense and backed ones in row blocks.
    """
    if sp.issparse(X):
        per_cell = np.asarray(X.sum(axis=1, dtype=np.float64)).ravel()
        per_gene = np.asarray(X.sum(axis=0, dtype=np.float64)).ravel()
        return per_cell, per_gene
    per_cell_blocks = []
    per_gene = np.zeros(X.shape[1], dtype=np.float64)
    for block in _row_chunks(X, chunk_rows):
        if sp.issparse(block):
            per_cell_blocks.append(np.asarray(block.sum(axis=1, dtype=np.float64)).ravel())
            per_gene += np.asarray(block.sum(axis=0, dtype=np.float64)).ravel()
        else:
            block = np.asarray(block)
            per_cell_blocks.append(block.sum(axis=1, dtype=np.float64))
            per_gene += block.sum(axis=0, dtype=np.float64)
    return np.concatenate(per_cell_blocks), per_gene


def check_no_empty_cells_or_genes(
    X: Any, obs_names: pd.Index, var_names: pd.Index, what: str, chunk_rows: int,
    allow_empty_genes: bool = False,
) -> None:
    """Raise when a cell or a gene has no counts at all."""
    per_cell, per_gene = _cell_and_gene_totals(X, chunk_rows)
    empty_cells = np.flatnonzero(per_cell == 0)
    if empty_cells.size:
        raise InputError(
            f"{empty_cells.size} cells have no counts in {what} (e.g. "
            f"{str(obs_names[empty_cells[0]])!r}); remove them first "
            "(e.g. sc.pp.filter_cells(adata, min_counts=1))"
        )
    empty_genes = np.flatnonzero(per_gene == 0)
    if empty_genes.size and not allow_empty_genes:
        raise InputError(
            f"{empty_genes.size} genes have no counts in {what} (e.g. "
            f"{str(var_names[empty_genes[0]])!r}); remove them first "
            "(e.g. sc.pp.filter_genes(adata, min_counts=1))"
        )
