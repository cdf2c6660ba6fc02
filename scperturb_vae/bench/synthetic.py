"""Synthetic perturbation screens: random CSR counts drawn block by block, and their ``.h5ad`` writer.

The screen depends only on its sizes and seed (not on how many cells are written at a
time); :func:`write_synthetic_screen` writes it to anndata's on-disk format a chunk of cells
at a time, so the matrix is never held whole.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import numpy as np
import pandas as pd

from scperturb_vae.errors import InputError
from scperturb_vae.io import atomic_path

__all__ = [
    "BLOCK_CELLS",
    "CONTROL_FRACTION",
    "CONTROL_LABEL",
    "check_screen_sizes",
    "synthetic_blocks",
    "synthetic_screen_adata",
    "write_synthetic_screen",
]

#: the label of the control cells of a synthetic screen ...
CONTROL_LABEL = "control"
#: ... and their share of the cells
CONTROL_FRACTION = 0.1
#: cells drawn from one random stream: the screen does not depend on ``chunk_cells``
BLOCK_CELLS = 2048
#: h5py chunk of the CSR ``data`` / ``indices`` datasets (elements)
_H5_CHUNK = 1 << 20


def check_screen_sizes(n_cells: int, n_genes: int, density: float, n_perturbations: int,
                       control_fraction: float, chunk_cells: int = 1) -> int:
    """Check the sizes of a synthetic screen; return its number of control cells."""
    if n_genes < 2:
        raise InputError(f"--n-genes must be at least 2, not {n_genes}")
    if not (0.0 < density <= 1.0) or not math.isfinite(density):
        raise InputError(f"--density must be in (0, 1], not {density}")
    if n_perturbations < 1:
        raise InputError(f"--n-perturbations must be at least 1, not {n_perturbations}")
    if not 0.0 < control_fraction < 1.0:
        raise InputError(f"the control fraction must be in (0, 1), not {control_fraction}")
    if chunk_cells < 1:
        raise InputError(f"chunk_cells must be at least 1, not {chunk_cells}")
    if n_cells < 10:
        raise InputError(f"--n-cells must be at least 10 (scvi-tools keeps 10% of the cells for validation), not {n_cells}")
    if n_cells < n_genes:
        raise InputError(
            f"--n-cells ({n_cells}) must be at least --n-genes ({n_genes}), so that every gene has counts"
        )
    n_control = max(1, round(control_fraction * n_cells))
    if n_cells - n_control < n_perturbations:
        raise InputError(
            f"--n-cells ({n_cells}) leaves {n_cells - n_control} perturbed cells for "
            f"{n_perturbations} perturbations; give at least one cell each"
        )
    return n_control


def _names(prefix: str, start: int, stop: int, width: int) -> np.ndarray:
    return np.array([f"{prefix}{i:0{width}d}" for i in range(start, stop)], dtype=object)


def _perturbation_names(n_perturbations: int) -> list[str]:
    return [CONTROL_LABEL, *(_names("PERT", 1, n_perturbations + 1, len(str(n_perturbations))))]


def _screen_parameters(n_cells: int, n_genes: int, n_perturbations: int, n_control: int, seed: int):
    """Gene means, per-perturbation log fold changes and every cell's label code (0 = control).

    Each perturbation changes about 2% of the genes (log fold change ~ N(0, 1)); labels are
    balanced (``n_control`` controls, the rest spread evenly) and shuffled.
    """
    rng = np.random.default_rng([seed, 0])
    gene_mean = rng.lognormal(0.0, 1.0, n_genes).astype(np.float32)
    lfc = np.zeros((n_perturbations + 1, n_genes), dtype=np.float32)
    targets = rng.random((n_perturbations, n_genes), dtype=np.float32) < 0.02
    lfc[1:][targets] = rng.standard_normal(int(targets.sum()), dtype=np.float32)
    code_dtype = np.int8 if n_perturbations < 127 else (np.int16 if n_perturbations < 32767 else np.int32)
    codes = np.empty(n_cells, dtype=code_dtype)
    codes[:n_control] = 0
    codes[n_control:] = 1 + np.arange(n_cells - n_control) % n_perturbations
    codes = codes[np.random.default_rng([seed, 1]).permutation(n_cells)]
    return gene_mean, lfc, codes


def _block(start: int, stop: int, n_genes: int, density: float, gene_mean: np.ndarray, lfc: np.ndarray,
           codes: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One block of cells as CSR pieces ``(data float32, indices int32, row counts int64)``.

    Cell ``i`` always has counts in gene ``i mod n_genes`` (no empty cell; no empty gene once
    there are as many cells as genes); each other gene has counts with probability
    ``density``, drawn as geometric gaps between detected genes (vectorised, exact).  A
    detected gene holds ``1 + Geometric`` counts of mean about ``mean_g * exp(lfc[a, g])``
    (an overdispersed count: a negative binomial of dispersion 1, shifted by one).
    """
    rng = np.random.default_rng([seed, 2, start // BLOCK_CELLS])
    m, others = stop - start, n_genes - 1
    forced = np.arange(start, stop, dtype=np.int32) % np.int32(n_genes)
    expected = others * density
    width = int(min(others, math.ceil(expected + 8.0 * math.sqrt(expected * (1.0 - density)) + 8.0)))
    # Geometric(density) gaps as 1 + floor(E / -log(1 - density)), E ~ Exp(1)
    scale = np.float32(1.0 / -math.log1p(-density)) if density < 1.0 else np.float32(0.0)

    def gaps(rows: int) -> np.ndarray:
        return (rng.standard_exponential((rows, width), dtype=np.float32) * scale).astype(np.int32) + 1

    pos = np.cumsum(gaps(m), axis=1, dtype=np.int32) - 1
    while True:  # rows whose gaps ended before the last gene (about 1e-15 of them) draw more
        short = pos[:, -1] < others - 1
        if not short.any():
            break
        more = np.full((m, width), others, dtype=np.int32)
        more[short] = pos[short, -1:] + np.cumsum(gaps(int(short.sum())), axis=1, dtype=np.int32)
        pos = np.concatenate([pos, more], axis=1)
    # positions among the other genes -> gene indices (skipping the forced gene); insert it
    pos += pos >= forced[:, None]
    valid = pos < n_genes
    n_valid = valid.sum(axis=1)
    before = (pos < forced[:, None]).sum(axis=1)
    row_start = np.cumsum(n_valid) - n_valid
    indices = np.insert(pos[valid], row_start + before, forced)
    counts = (n_valid + 1).astype(np.int64)
    rows = np.repeat(codes[start:stop].astype(np.intp), counts)
    rate = gene_mean[indices] * np.exp(lfc[rows, indices])
    extra = np.floor(rng.standard_exponential(indices.size, dtype=np.float32) * rate)
    return (extra + 1).astype(np.float32), indices.astype(np.int32, copy=False), counts


def synthetic_blocks(n_cells: int, n_genes: int, density: float, n_perturbations: int, seed: int,
                     control_fraction: float = CONTROL_FRACTION):
    """The labels and a generator of CSR blocks of a synthetic screen.

    Returns ``(codes, labels, blocks)``: each cell's label code, the label names (code 0 is
    :data:`CONTROL_LABEL`) and an iterator of ``(start, stop, data, indices, row_counts)``
    blocks of :data:`BLOCK_CELLS` cells.  The screen depends only on the sizes and the seed.
    """
    n_control = check_screen_sizes(n_cells, n_genes, density, n_perturbations, control_fraction)
    gene_mean, lfc, codes = _screen_parameters(n_cells, n_genes, n_perturbations, n_control, seed)

    def blocks():
        for start in range(0, n_cells, BLOCK_CELLS):
            stop = min(n_cells, start + BLOCK_CELLS)
            yield (start, stop, *_block(start, stop, n_genes, density, gene_mean, lfc, codes, seed))

    return codes, _perturbation_names(n_perturbations), blocks()


def synthetic_screen_adata(n_cells: int, n_genes: int, density: float, n_perturbations: int, seed: int,
                           control_fraction: float = CONTROL_FRACTION):
    """The screen of :func:`write_synthetic_screen` built in memory (for small sizes and tests)."""
    import anndata as ad
    import scipy.sparse as sp

    codes, labels, blocks = synthetic_blocks(n_cells, n_genes, density, n_perturbations, seed, control_fraction)
    parts = [sp.csr_matrix((d, i, np.concatenate([[0], np.cumsum(c)])), shape=(b - a, n_genes))
             for a, b, d, i, c in blocks]
    obs = pd.DataFrame(
        {"perturbation": pd.Categorical.from_codes(codes.astype(np.int64), categories=labels)},
        index=pd.Index(_names("cell", 0, n_cells, len(str(n_cells - 1))), dtype=object),
    )
    var = pd.DataFrame(index=pd.Index(_names("GENE", 0, n_genes, len(str(n_genes - 1))), dtype=object))
    return ad.AnnData(X=sp.vstack(parts, format="csr").astype(np.float32), obs=obs, var=var)


def _string_dataset(group, name: str, n: int, chunk: int | None = None):
    import h5py

    ds = group.create_dataset(name, shape=(n,), dtype=h5py.string_dtype("utf-8"),
                              chunks=(max(1, min(n, chunk)),) if chunk else None)
    ds.attrs["encoding-type"] = "string-array"
    ds.attrs["encoding-version"] = "0.2.0"
    return ds


def write_synthetic_screen(
    path: str | os.PathLike,
    *,
    n_cells: int,
    n_genes: int,
    density: float,
    n_perturbations: int,
    seed: int,
    chunk_cells: int = 50_000,
    control_fraction: float = CONTROL_FRACTION,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write a random perturbation screen of raw counts to an ``.h5ad``, chunk by chunk.

    The file is anndata's on-disk format written with h5py: ``X`` a CSR group (``data``
    float32, ``indices`` int32, ``indptr``; resizable datasets grown one chunk of
    ``chunk_cells`` cells at a time, so memory stays near one chunk's whatever ``n_cells``),
    ``obs`` with the categorical column ``perturbation`` (:data:`CONTROL_LABEL` for a
    ``control_fraction`` of the cells, ``PERT1``... evenly for the rest) and cell names, ``var``
    with gene names.  Each gene is detected in a cell with probability ``density`` (plus one
    gene per cell in turn, so no cell or gene is empty); see :func:`synthetic_blocks`.  It
    opens with ``anndata.read_h5ad`` (also ``backed="r"``) and passes
    :func:`~scperturb_vae.data.validate.validate_perturbation_adata`.  The file appears complete or
    not at all.

    Returns the sizes, ``nnz``, the CSR bytes (as read into memory), the file's bytes and
    the seconds taken.
    """
    import h5py
    from anndata.io import write_elem

    from scperturb_vae.data.ondisk import create_csr_x

    start_time = time.perf_counter()
    codes, labels, blocks = synthetic_blocks(n_cells, n_genes, density, n_perturbations, seed, control_fraction)
    check_screen_sizes(n_cells, n_genes, density, n_perturbations, control_fraction, chunk_cells)
    # int32 index pointers whenever the largest possible nnz fits (as anndata writes them)
    ptr_dtype = np.int32 if n_cells * n_genes < np.iinfo(np.int32).max else np.int64
    width = len(str(n_cells - 1))
    nnz = 0
    with atomic_path(path, overwrite=overwrite) as tmp:
        with h5py.File(tmp, "w") as f:
            chunk = int(max(1, min(_H5_CHUNK, n_cells * (1 + density * n_genes))))
            data, indices, indptr = create_csr_x(f, n_cells, n_genes, chunk=chunk, ptr_dtype=ptr_dtype)

            obs = f.create_group("obs")
            obs.attrs.update({"_index": "_index", "column-order": np.array(["perturbation"], dtype=object),
                              "encoding-type": "dataframe", "encoding-version": "0.2.0"})
            names = _string_dataset(obs, "_index", n_cells, chunk=1 << 16)
            pert = obs.create_group("perturbation")
            pert.attrs.update({"encoding-type": "categorical", "encoding-version": "0.2.0", "ordered": False})
            _string_dataset(pert, "categories", len(labels))[:] = np.array(labels, dtype=object)
            codes_ds = pert.create_dataset("codes", data=codes)
            codes_ds.attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})

            pending: list[tuple] = []

            def flush():
                nonlocal nnz
                if not pending:
                    return
                a, b = pending[0][0], pending[-1][1]
                counts = np.concatenate([p[4] for p in pending])
                total = int(counts.sum())
                data.resize((nnz + total,))
                indices.resize((nnz + total,))
                offset = nnz
                for _, _, d, i, _ in pending:  # block by block: no concatenated copy of the chunk
                    data[offset:offset + d.size] = d
                    indices[offset:offset + d.size] = i
                    offset += d.size
                indptr[a + 1:b + 1] = (nnz + np.cumsum(counts)).astype(ptr_dtype)
                names[a:b] = _names("cell", a, b, width)
                nnz += total
                pending.clear()

            for block in blocks:
                pending.append(block)
                if block[1] - pending[0][0] >= chunk_cells:
                    flush()
            flush()

            write_elem(f, "var", pd.DataFrame(index=pd.Index(_names("GENE", 0, n_genes, len(str(n_genes - 1))),
                                                             dtype=object)))
            write_elem(f, "uns", {"synthetic_screen": {
                "n_cells": n_cells, "n_genes": n_genes, "density": float(density),
                "n_perturbations": n_perturbations, "seed": seed, "control_fraction": float(control_fraction),
            }})
            for key in ("layers", "obsm", "obsp", "varm", "varp"):
                write_elem(f, key, {})
        file_bytes = tmp.stat().st_size
    itemsize = np.dtype(ptr_dtype).itemsize
    return {
        "path": str(path),
        "n_cells": n_cells,
        "n_genes": n_genes,
        "density": float(density),
        "n_perturbations": n_perturbations,
        "seed": seed,
        "nnz": int(nnz),
        "observed_density": nnz / (n_cells * n_genes),
        "csr_bytes": int(nnz * (4 + 4) + (n_cells + 1) * itemsize),
        "file_bytes": int(file_bytes),
        "chunk_cells": chunk_cells,
        "seconds": time.perf_counter() - start_time,
    }
