r"""Minibatches of an on-disk (backed) screen read many at a time: scvi-tools' split, scDataset's loader.

scvi-tools' own loader reads every minibatch of a backed ``.h5ad`` with one HDF5 call for
128 scattered rows; each call costs about as much as the rows it reads, and training from
a backed file ran 1.8x an in-memory epoch (measured on 1,000,000 x 2,000 cells, see the
README).  :class:`FetchingSplitter` keeps scvi-tools' :class:`~scvi.dataloaders.DataSplitter`
(the same training and validation cells, from the same seed) and hands the reading to
`scDataset <https://github.com/scDataset/scDataset>`_ (pypi ``scdataset``): each *fetch*
reads ``fetch_factor`` minibatches' rows in one sorted call (scvi-tools'
:class:`~scvi.data.AnnTorchDataset` does the reading, so every registered field comes out as
it does in memory) and is cut into minibatches.

Training minibatches (:class:`scdataset.strategy.BlockShuffling`): every epoch a new random
order of the training cells in blocks of ``block_size`` consecutive rows, cut into fetches,
each fetch shuffled and cut into minibatches, so a minibatch mixes about ``batch_size``
cells from as many random places of the file (with ``block_size=1``, the default, a
uniformly random sample, as scvi-tools' sampler draws; the split leaves no last minibatch of
one or two cells, as scvi-tools' does).  Validation and the passes after training: the
cells in row order (:class:`scdataset.strategy.Streaming`), fetched the same way.  Under
Lightning's DDP, scDataset gives each process every ``world_size``-th fetch.

It is the loader of every model, in memory and backed alike (``loader="fetch"``), so a
backed run trains on the very minibatches of the in-memory run and gives the same numbers;
``loader="scvi"`` keeps scvi-tools' own sampler (other random minibatches, the same
statistics).  In memory the fetching costs nothing measurable (11.6 s against 11.5 s an
epoch of 50,000 x 2,000 cells); from a backed file it took an epoch from 24.9 s (2.2x the
in-memory epoch) to 13.6 s (1.18x).
"""

from __future__ import annotations

import numpy as np
import torch
from scvi import settings
from scvi.dataloaders import DataSplitter

__all__ = ["DEFAULT_BLOCK_SIZE", "DEFAULT_FETCH_FACTOR", "LOADERS", "FetchingSplitter", "fetching_loader",
           "uses_fetching"]

#: minibatches read by one call (a fetch of 16 x 128 rows)
DEFAULT_FETCH_FACTOR = 16
#: consecutive rows sampled together (1: a uniformly random order of the cells)
DEFAULT_BLOCK_SIZE = 1
#: ``fetch`` (scDataset, the default, in memory and backed alike) or ``scvi`` (scvi-tools' own sampler)
LOADERS = ("fetch", "scvi")


def _to_tensors(batch: dict) -> dict:
    return {key: torch.as_tensor(value) for key, value in batch.items()}


def _fetch(dataset, indices):
    return dataset[np.asarray(indices)]


def _take(fetched: dict, positions) -> dict:
    return {key: value[positions] for key, value in fetched.items()}


def fetching_loader(adata_manager, indices, *, batch_size: int, shuffle: bool, seed: int | None,
                    fetch_factor: int = DEFAULT_FETCH_FACTOR, block_size: int = DEFAULT_BLOCK_SIZE,
                    drop_last: bool = False, pin_memory: bool = False):
    """A DataLoader of ``indices``' minibatches (tensor dicts, as scvi-tools' loader), read by scDataset.

    ``shuffle``: a new random order each epoch (blocks of ``block_size`` rows), else the cells
    in row order (``indices`` sorted).  One process reads every cell, even inside a DDP
    process group (the passes after training).
    """
    from scdataset import scDataset
    from scdataset.strategy import BlockShuffling, Streaming
    from scvi.data import AnnTorchDataset

    indices = np.asarray(indices, dtype=np.int64)
    if shuffle:
        strategy = BlockShuffling(block_size=block_size, indices=np.sort(indices))
    elif np.any(np.diff(indices) < 0):  # a fetch is read and cut in row order
        raise ValueError("the cells of an unshuffled fetching loader must be in row order")
    else:
        strategy = Streaming(indices=indices)
    dataset = scDataset(
        AnnTorchDataset(adata_manager), strategy, batch_size=int(batch_size), fetch_factor=int(fetch_factor),
        drop_last=drop_last, fetch_callback=_fetch, batch_callback=_take, batch_transform=_to_tensors,
        seed=0 if seed is None else int(seed), rank=0, world_size=1,
    )
    return torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=0, pin_memory=pin_memory)


class FetchingSplitter(DataSplitter):
    """scvi-tools' split with scDataset's fetching loaders (module docstring).

    Extra keyword arguments (through ``datasplitter_kwargs``): ``loader`` (one of
    :data:`LOADERS`), ``fetch_factor``, ``block_size``.  Everything else is
    :class:`~scvi.dataloaders.DataSplitter`'s.
    """

    def __init__(self, adata_manager, *args, loader: str = "fetch", fetch_factor: int = DEFAULT_FETCH_FACTOR,
                 block_size: int = DEFAULT_BLOCK_SIZE, **kwargs):
        super().__init__(adata_manager, *args, **kwargs)
        # under DDP scDataset deals whole fetches round-robin, so two processes can get unequal
        # numbers of minibatches and the one with more waits forever in its gradient all-reduce:
        # scvi-tools' distributed sampler pads every process to the same count
        self.fetching = uses_fetching(loader) and not self.data_loader_kwargs.get("distributed_sampler")
        self.fetch_options = {"fetch_factor": int(fetch_factor), "block_size": int(block_size),
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
