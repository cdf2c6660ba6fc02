"""Out-of-core helpers: a subset of a backed screen written to a new file, block by block.

Training on a held-out split of a backed (on-disk) screen needs an AnnData of the training
cells only.  ``adata[rows].copy()`` would read the subset into memory; :func:`write_rows`
instead streams ``X`` in blocks of rows into anndata's on-disk CSR layout (resizable HDF5
datasets), and writes ``obs``/``var``/``obsm`` of the subset, so memory stays at one block
whatever the number of cells.  The result is opened backed again and trained from disk by
scvi-tools' own data loader (which reads minibatches from backed AnnData).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

__all__ = ["write_rows", "create_csr_x", "BLOCK_ROWS"]

#: rows read from the source per block
BLOCK_ROWS = 20_000
#: HDF5 chunk (elements) of the ``data`` / ``indices`` datasets
_H5_CHUNK = 1 << 18


def create_csr_x(f, n_rows: int, n_cols: int, *, chunk: int = _H5_CHUNK, ptr_dtype=np.int64):
    """Start an anndata h5ad in the open h5py file ``f`` with a growable CSR ``X``.

    Returns the ``data`` (float32) and ``indices`` (int32) datasets, empty and resizable,
    and ``indptr`` (``n_rows + 1``, first entry 0), for the caller to fill block by block.
    """
    f.attrs["encoding-type"] = "anndata"
    f.attrs["encoding-version"] = "0.1.0"
    group = f.create_group("X")
    group.attrs["encoding-type"] = "csr_matrix"
    group.attrs["encoding-version"] = "0.1.0"
    group.attrs["shape"] = np.array([n_rows, n_cols], dtype=np.int64)
    data = group.create_dataset("data", shape=(0,), maxshape=(None,), dtype=np.float32, chunks=(chunk,))
    indices = group.create_dataset("indices", shape=(0,), maxshape=(None,), dtype=np.int32, chunks=(chunk,))
    indptr = group.create_dataset("indptr", shape=(n_rows + 1,), dtype=ptr_dtype)
    indptr[0] = 0
    return data, indices, indptr


def write_rows(adata, rows: np.ndarray, path: str | os.PathLike, *, block_rows: int = BLOCK_ROWS) -> Path:
    """Write the cells ``rows`` (sorted positions) of ``adata`` (backed or not) to ``path``.

    ``X`` is written as CSR (float32 values, int32 indices, int64 index pointers), read from
    the source ``block_rows`` rows at a time; ``obs``, ``var`` and ``obsm`` of the subset
    and ``uns`` are copied.  Layers and pairwise matrices are not.
    """
    import h5py
    from anndata.io import write_elem

    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) and np.any(np.diff(rows) <= 0):
        raise ValueError("rows must be sorted and unique")
    path = Path(path)
    n_genes = adata.n_vars
    X_source = adata.X
    with h5py.File(path, "w") as f:
        data, indices, indptr = create_csr_x(f, len(rows), n_genes)
        nnz = 0
        for start in range(0, len(rows), block_rows):
            chosen = rows[start : start + block_rows]
            block = X_source[chosen]
            block = sp.csr_matrix(block) if not sp.issparse(block) else block.tocsr()
            block.sort_indices()
            n = block.nnz
            data.resize((nnz + n,))
            indices.resize((nnz + n,))
            data[nnz : nnz + n] = block.data.astype(np.float32, copy=False)
            indices[nnz : nnz + n] = block.indices.astype(np.int32, copy=False)
            indptr[start + 1 : start + 1 + len(chosen)] = nnz + block.indptr[1:].astype(np.int64)
            nnz += n
        obs = adata.obs.iloc[rows].copy()
        for name in obs.columns:  # as an in-memory subset: no categories without cells
            if isinstance(obs[name].dtype, pd.CategoricalDtype):
                obs[name] = obs[name].cat.remove_unused_categories()
        write_elem(f, "obs", obs)
        write_elem(f, "var", adata.var)
        write_elem(f, "obsm", {k: np.asarray(v)[rows] for k, v in adata.obsm.items() if hasattr(v, "shape")})
        try:
            write_elem(f, "uns", dict(adata.uns))
        except Exception:  # noqa: BLE001 - uns entries anndata cannot write are not needed for training
            if "uns" in f:
                del f["uns"]
            write_elem(f, "uns", {})
        for key in ("layers", "obsp", "varm", "varp"):
            write_elem(f, key, {})
    return path
