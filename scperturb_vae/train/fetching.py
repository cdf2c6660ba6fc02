r"""Minibatches read many at a time: scvi-tools' split, scDataset's loader, in memory and backed alike.

scvi-tools' own loader reads every minibatch of a backed ``.h5ad`` with one call for 128
scattered rows; anndata reads the whole row pointer for each call and HDF5 each row through a
one-chunk cache, so a backed epoch ran 1.8x an in-memory one.  :class:`FetchingSplitter` keeps
scvi-tools' :class:`~scvi.dataloaders.DataSplitter` (the same training and validation cells,
from the same seed) and hands the reading to `scDataset <https://github.com/scDataset/scDataset>`_
(pypi ``scdataset``): each *fetch* reads ``fetch_factor`` minibatches' rows in one sorted call
(:class:`FetchedRows`: the counts stay sparse, the other registered fields come from scvi-tools'
:class:`~scvi.data.AnnTorchDataset`), and is cut into minibatches made dense one at a time.

Training minibatches (:class:`scdataset.strategy.BlockShuffling`): every epoch a new random
order of the training cells in blocks of ``block_size`` consecutive rows, cut into fetches,
each fetch shuffled and cut into minibatches (with ``block_size=1``, the default, a uniformly
random sample of cells, as scvi-tools' sampler draws; the split leaves no last minibatch of one
or two cells, as scvi-tools' does).  Validation and the passes after training: the cells in
row order (:class:`scdataset.strategy.Streaming`), fetched the same way.  Under Lightning's
DDP, training reads with scvi-tools' distributed sampler (scDataset deals whole fetches to the
processes in turn, which can leave them unequal numbers of minibatches, and the one with more
then waits forever in its gradient all-reduce).

It is the loader of every model, in memory and backed alike (``loader="fetch"``), so a
backed run trains on the very minibatches of the in-memory run and gives the same numbers;
``loader="scvi"`` keeps scvi-tools' own sampler (other random minibatches, the same
statistics).  The measurements are in the README (``scvae bench --backed-check``).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from scvi import settings
from scvi.dataloaders import DataSplitter

__all__ = ["DEFAULT_BLOCK_SIZE", "DEFAULT_FETCH_FACTOR", "FETCH_BYTES", "LOADERS", "MAX_FETCH_FACTOR",
           "MIN_FETCH_FACTOR", "FetchedRows", "FetchingSplitter", "fetching_loader", "minibatch_tensors",
           "uses_fetching"]

#: stored counts one fetch may hold (bytes of CSR values and column indices): the fetch size
#: follows from the matrix's counts per cell, between :data:`MIN_FETCH_FACTOR` and
#: :data:`MAX_FETCH_FACTOR` minibatches.  HDF5 reads a backed matrix row by row through a
#: one-chunk cache, so the more sorted rows a fetch holds, the more of them share a chunk: at
#: 1,000,000 x 2,000 cells (200 counts each) 2,048 rows per fetch came at 8,500 rows/s,
#: 16,384 at 37,000 and 32,768 at 49,000 (which 64 MB allows there; 20,000 genes at the same
#: density get 4,096 rows a fetch).
FETCH_BYTES = 64 << 20
MIN_FETCH_FACTOR = 16
MAX_FETCH_FACTOR = 256
#: ``fetch_factor="auto"``: from :data:`FETCH_BYTES`
DEFAULT_FETCH_FACTOR = "auto"
#: consecutive rows sampled together (1: a uniformly random order of the cells)
DEFAULT_BLOCK_SIZE = 1
#: ``fetch`` (scDataset, the default, in memory and backed alike) or ``scvi`` (scvi-tools' own sampler)
LOADERS = ("fetch", "scvi")


class FetchedRows:
    """Rows of a registered AnnData for scDataset's fetches (``len`` and indexing by sorted rows).

    The counts come out as read (CSR from a sparse or backed matrix) and are made dense one
    minibatch at a time (:func:`minibatch_tensors`), so a fetch of many minibatches costs its
    stored counts, not ``rows x genes`` floats; the other registered fields (labels, batch)
    are read by scvi-tools' :class:`~scvi.data.AnnTorchDataset`, as they are in memory.
    """

    def __init__(self, adata_manager):
        from scvi import REGISTRY_KEYS
        from scvi.data import AnnTorchDataset

        self.key = REGISTRY_KEYS.X_KEY
        self.counts = adata_manager.get_from_registry(self.key)
        others = [k for k in adata_manager.data_registry if k != self.key]
        self.fields = AnnTorchDataset(adata_manager, getitem_tensors=others) if others else None
        self.n_obs = int(adata_manager.adata.n_obs)

    def stored_per_row(self) -> float:
        """Counts stored per cell: the CSR's (read from the last row pointer when backed), or the genes."""
        counts = self.counts
        if sp.issparse(counts):
            return counts.nnz / max(1, counts.shape[0])
        group = getattr(counts, "group", None)  # a backed sparse matrix (anndata's dataset)
        if group is not None and "indptr" in group:
            return float(group["indptr"][-1]) / max(1, self.n_obs)
        return float(counts.shape[1])

    def fetch_factor(self, batch_size: int) -> int:
        """Minibatches per fetch for :data:`FETCH_BYTES` of stored counts (8 bytes each)."""
        rows = FETCH_BYTES / (8.0 * max(1.0, self.stored_per_row()))
        return int(np.clip(rows // max(1, batch_size), MIN_FETCH_FACTOR, MAX_FETCH_FACTOR))

    def __len__(self) -> int:
        return self.n_obs

    def __getitem__(self, rows) -> dict:
        rows = np.asarray(rows)
        x = self.counts[rows]
        x = sp.csr_matrix(x, dtype=np.float32) if sp.issparse(x) else np.asarray(x, dtype=np.float32)
        return {self.key: x, **(self.fields[rows] if self.fields is not None else {})}


def minibatch_tensors(fetched: dict, positions) -> dict:
    """One minibatch (``positions`` of a fetch) as scvi-tools' tensor dict, the counts made dense."""
    out = {}
    for key, value in fetched.items():
        part = value[positions]
        out[key] = torch.as_tensor(part.toarray() if sp.issparse(part) else part)
    return out


def _fetch(rows: FetchedRows, indices) -> dict:
    return rows[indices]


def fetching_loader(adata_manager, indices, *, batch_size: int, shuffle: bool, seed: int | None,
                    fetch_factor: int | str = DEFAULT_FETCH_FACTOR, block_size: int = DEFAULT_BLOCK_SIZE,
                    pin_memory: bool = False):
    """A DataLoader of ``indices``' minibatches (tensor dicts, as scvi-tools' loader), read by scDataset.

    ``shuffle``: a new random order each epoch (blocks of ``block_size`` rows), else the cells
    in row order (``indices`` sorted).  ``fetch_factor``: minibatches per read, or ``"auto"``
    (:meth:`FetchedRows.fetch_factor`).  One process reads every cell, even inside a DDP
    process group (the passes after training).
    """
    from scdataset import scDataset
    from scdataset.strategy import BlockShuffling, Streaming

    indices = np.asarray(indices, dtype=np.int64)
    if shuffle:
        strategy = BlockShuffling(block_size=block_size, indices=np.sort(indices))
    elif np.any(np.diff(indices) < 0):  # a fetch is read and cut in row order
        raise ValueError("the cells of an unshuffled fetching loader must be in row order")
    else:
        strategy = Streaming(indices=indices)
    rows = FetchedRows(adata_manager)
    if fetch_factor == "auto":
        fetch_factor = rows.fetch_factor(int(batch_size))
    dataset = scDataset(
        rows, strategy, batch_size=int(batch_size), fetch_factor=int(fetch_factor),
        drop_last=False, fetch_callback=_fetch, batch_callback=minibatch_tensors,
        seed=0 if seed is None else int(seed), rank=0, world_size=1,
    )
    return torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=0, pin_memory=pin_memory)


class FetchingSplitter(DataSplitter):
    """scvi-tools' split with scDataset's fetching loaders (module docstring).

    Extra keyword arguments (through ``datasplitter_kwargs``): ``loader`` (one of
    :data:`LOADERS`), ``fetch_factor``, ``block_size``.  Everything else is
    :class:`~scvi.dataloaders.DataSplitter`'s.
    """

    def __init__(self, adata_manager, *args, loader: str = "fetch", fetch_factor: int | str = DEFAULT_FETCH_FACTOR,
                 block_size: int = DEFAULT_BLOCK_SIZE, **kwargs):
        super().__init__(adata_manager, *args, **kwargs)
        # under DDP scDataset deals whole fetches round-robin, so two processes can get unequal
        # numbers of minibatches and the one with more waits forever in its gradient all-reduce:
        # scvi-tools' distributed sampler pads every process to the same count
        self.fetching = uses_fetching(loader) and not self.data_loader_kwargs.get("distributed_sampler")
        self.fetch_options = {"fetch_factor": fetch_factor, "block_size": int(block_size),
                              "pin_memory": self.pin_memory,
                              "batch_size": int(self.data_loader_kwargs.get("batch_size") or settings.batch_size)}

    def train_dataloader(self):
        if not self.fetching:
            return super().train_dataloader()
        return fetching_loader(self.adata_manager, self.train_idx, shuffle=True, seed=settings.seed,
                               **self.fetch_options)

    def val_dataloader(self):
        if not self.fetching or len(self.val_idx) == 0:
            return super().val_dataloader()
        return fetching_loader(self.adata_manager, np.sort(self.val_idx), shuffle=False, seed=settings.seed,
                               **self.fetch_options)


def uses_fetching(loader: str) -> bool:
    """Whether ``loader`` (one of :data:`LOADERS`, checked) reads with :func:`fetching_loader`."""
    if loader not in LOADERS:
        raise ValueError(f"loader must be one of {', '.join(LOADERS)}, not {loader!r}")
    return loader == "fetch"
