"""Decoder computations on a trained model: what each latent does to the genes.

- :func:`gene_effects`: the change of each gene's decoded log expression per standard
  deviation of each latent, averaged over real cells;
- :func:`latent_traversal`: decoded log expression of genes as one latent moves.

Both decode a seeded sample of cells (:func:`sample_cells`) at shifted posterior means, with
the module in eval mode under ``torch.inference_mode``.  torch is imported inside the
functions, so that :mod:`scperturb_vae.model` imports quickly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from scperturb_vae.errors import InputError

__all__ = ["DEFAULT_TRAVERSAL_VALUES", "gene_effects", "latent_traversal", "sample_cells"]

#: The shifts of a traversal, in standard deviations of the latent: -2 ... 2 in 9 steps.
DEFAULT_TRAVERSAL_VALUES = tuple(float(v) for v in np.linspace(-2.0, 2.0, 9))

#: Floor of the decoded proportions before the log (float32 softmax can underflow to 0).
_TINY = 1e-30


# --------------------------------------------------------------------------- decoding
def sample_cells(n_obs: int, n_cells: int, seed: int) -> np.ndarray:
    """A seeded sample of at most ``n_cells`` cell indices, sorted."""
    if n_cells < 1:
        raise InputError(f"n_cells must be at least 1, not {n_cells}")
    rng = np.random.default_rng(seed)
    if n_cells >= n_obs:
        return np.arange(n_obs)
    return np.sort(rng.choice(n_obs, size=n_cells, replace=False))


class _Decoder:
    """Posterior means of a sample of cells, and the decoder run at shifted latents.

    Holds the module in eval mode; every computation runs under ``torch.inference_mode``.
    """

    def __init__(self, model, adata, n_cells: int, seed: int, batch_size: int):
        import torch

        if batch_size < 1:
            raise InputError(f"batch_size must be at least 1, not {batch_size}")
        self.torch = torch
        self.model = model
        self.module = model.module
        adata = model._validate_anndata(adata)
        self.indices = sample_cells(adata.n_obs, n_cells, seed)
        self.batch_size = int(batch_size)
        self.device = next(self.module.parameters()).device
        self.was_training = self.module.training
        self.module.eval()
        means, batches = [], []
        with torch.inference_mode():
            loader = model._make_data_loader(adata=adata, indices=self.indices, batch_size=self.batch_size)
            for tensors in loader:
                inference = self.module.inference(**self.module._get_inference_input(tensors))
                means.append(inference["qz"].loc.detach().to("cpu", torch.float64))
                batch = self.module._batch(tensors)
                batches.append(None if batch is None else batch.detach().to("cpu"))
        self.z = torch.cat(means).numpy()  # cells x latents
        self.batch = None if any(b is None for b in batches) else torch.cat(batches)
        self.sd = self.z.std(axis=0)  # population sd (ddof=0) of the posterior means

    def restore(self) -> None:
        """Put the module back in training mode when it was."""
        if self.was_training:
            self.module.train()

    def chunks(self):
        """Yield ``(start, stop)`` of the cell chunks."""
        n = self.z.shape[0]
        for start in range(0, n, self.batch_size):
            yield start, min(start + self.batch_size, n)

    def log_scale(self, z: np.ndarray, start: int, stop: int):
        """``log rho`` (a torch tensor, cells x genes) at latents ``z`` for cells ``start:stop``."""
        torch = self.torch
        zt = torch.as_tensor(z, dtype=torch.float32, device=self.device)
        library = torch.zeros(zt.shape[0], 1, device=self.device)
        batch = None if self.batch is None else self.batch[start:stop].to(self.device)
        px = self.module.generative(z=zt, library=library, batch_index=batch)["px"]
        return torch.log(px.scale.clamp_min(_TINY)).to(torch.float64)


def gene_effects(model, adata=None, *, n_cells: int = 2000, seed: int = 0, batch_size: int = 256) -> pd.DataFrame:
    r"""The change of each gene's decoded log expression per unit of each latent.

    Definition: let ``z_c`` (``c = 1..C``) be the posterior means ``E[z | x_c]`` of a
    seeded random sample of ``C = min(n_cells, n_obs)`` cells (the sorted
    ``np.random.default_rng(seed).choice(n_obs, C, replace=False)``; every cell when
    ``n_cells >= n_obs``), ``s_i`` the standard
    deviation (``ddof=0``) of latent ``i``'s posterior means over those cells, ``e_i`` the
    ``i``-th unit vector, and ``rho_g(z)`` the decoded proportion of gene ``g``
    (``px.scale``: the decoder's softmax output, independent of the library size; each
    cell is decoded with its own batch).  Then

    ``effect[i, g] = mean_c [ log rho_g(z_c + s_i e_i) - log rho_g(z_c - s_i e_i) ] / 2``

    i.e. the central-difference change of the decoded natural-log mean expression of
    ``g`` when latent ``i`` moves by one standard deviation of its aggregate posterior,
    averaged over real cells.  A latent with ``s_i = 0`` (collapsed) has effect 0 on
    every gene.  Proportions are floored at 1e-30 before the log.

    The module is run in eval mode under ``torch.inference_mode``, in chunks of
    ``batch_size`` cells (two decoder passes of ``batch_size x n_genes`` at a time).

    Parameters
    ----------
    model
        A trained model of :mod:`scperturb_vae.model.models`.
    adata
        Cells to average over (set up for the model); default: the model's own.
    n_cells
        Cells sampled (at most).
    seed
        Seed of the cell sample.
    batch_size
        Cells decoded at once.

    Returns
    -------
    pandas.DataFrame
        Rows: ``model.latent_names``; columns: genes (``adata.var_names``).
        ``attrs["latent_sd"]`` holds ``s_i`` per latent, ``attrs["n_cells"]`` ``C``.
    """
    dec = _Decoder(model, adata, n_cells, seed, batch_size)
    torch = dec.torch
    try:
        n_latent = dec.z.shape[1]
        total = None
        with torch.inference_mode():
            for start, stop in dec.chunks():
                z = dec.z[start:stop]
                for i in range(n_latent):
                    if dec.sd[i] == 0:
                        continue
                    shift = np.zeros(n_latent)
                    shift[i] = dec.sd[i]
                    diff = (dec.log_scale(z + shift, start, stop) - dec.log_scale(z - shift, start, stop)).sum(0)
                    if total is None:
                        total = np.zeros((n_latent, diff.shape[0]))
                    total[i] += diff.cpu().numpy()
    finally:
        dec.restore()
    genes = model._validate_anndata(adata).var_names.astype(str)
    if total is None:
        total = np.zeros((dec.z.shape[1], len(genes)))
    effects = pd.DataFrame(
        total / (2.0 * dec.z.shape[0]),
        index=pd.Index(list(model.latent_names), name="latent"),
        columns=pd.Index(genes, name="gene"),
    )
    effects.attrs["latent_sd"] = {name: float(s) for name, s in zip(model.latent_names, dec.sd)}
    effects.attrs["n_cells"] = int(dec.z.shape[0])
    return effects


def _latent_index(model, latent) -> int:
    names = list(model.latent_names)
    if isinstance(latent, (int, np.integer)) and not isinstance(latent, bool):
        if not 0 <= int(latent) < len(names):
            raise InputError(f"latent index {latent} is out of range (the model has {len(names)} latents)")
        return int(latent)
    if str(latent) not in names:
        raise InputError(f"unknown latent {str(latent)!r}; the model's latents are {names[0]} ... {names[-1]}")
    return names.index(str(latent))


def latent_traversal(
    model,
    latent: str | int,
    *,
    values: Sequence[float] = DEFAULT_TRAVERSAL_VALUES,
    n_cells: int = 500,
    genes: Sequence[str] | None = None,
    seed: int = 0,
    adata=None,
    batch_size: int = 256,
    n_top_genes: int = 10,
    latent_sd: float | None = None,
) -> pd.DataFrame:
    """Decoded log mean expression of genes as one latent moves around real cells.

    For each ``v`` in ``values``: ``mean_c log rho_g(z_c + v s_i e_i)``, with ``z_c``,
    ``s_i`` and ``rho`` as in :func:`gene_effects` (so ``v`` is in units of the latent's
    aggregate-posterior standard deviation, and ``v = 0`` decodes the cells' own
    posterior means).

    Parameters
    ----------
    model
        A trained model.
    latent
        Latent name (``"latent03"``) or index.
    values
        Shifts, in standard deviations of the latent.
    n_cells, seed, adata, batch_size
        As in :func:`gene_effects`.
    genes
        Genes to report (case-insensitive).  Default: the ``n_top_genes`` genes whose
        value changes most between the smallest and the largest shift.
    latent_sd
        The unit of ``values`` (default: the sd over these cells); pass the sd of
        :func:`gene_effects` so that a report gives one sd per latent.

    Returns
    -------
    pandas.DataFrame
        Rows: the shifts (index ``value``); columns: the genes; natural-log proportions.
        ``attrs`` hold ``latent`` and ``latent_sd``.

    Raises
    ------
    InputError
        For an unknown latent or gene, or no values.
    """
    i = _latent_index(model, latent)
    values = np.asarray(list(values), dtype=np.float64)
    if values.size == 0:
        raise InputError("latent_traversal needs at least one value")
    all_genes = model._validate_anndata(adata).var_names.astype(str)
    selected = None
    if genes is not None:
        lookup = {g.upper(): j for j, g in reversed(list(enumerate(all_genes)))}
        missing = [g for g in genes if str(g).upper() not in lookup]
        if missing:
            raise InputError(f"gene(s) not in the model: {', '.join(map(str, missing[:5]))}")
        selected = np.array([lookup[str(g).upper()] for g in genes])
    dec = _Decoder(model, adata, n_cells, seed, batch_size)
    torch = dec.torch
    unit = float(dec.sd[i]) if latent_sd is None else float(latent_sd)
    try:
        total = np.zeros((values.size, len(all_genes)))
        with torch.inference_mode():
            for start, stop in dec.chunks():
                z = dec.z[start:stop]
                for k, v in enumerate(values):
                    shifted = z.copy()
                    shifted[:, i] += v * unit
                    total[k] += dec.log_scale(shifted, start, stop).sum(0).cpu().numpy()
    finally:
        dec.restore()
    mean = total / dec.z.shape[0]
    if selected is None:
        change = np.abs(mean[np.argmax(values)] - mean[np.argmin(values)])
        selected = np.argsort(-change, kind="mergesort")[: min(n_top_genes, len(all_genes))]
    frame = pd.DataFrame(
        mean[:, selected],
        index=pd.Index(values, name="value"),
        columns=pd.Index(all_genes[selected], name="gene"),
    )
    frame.attrs["latent"] = model.latent_names[i]
    frame.attrs["latent_sd"] = unit
    return frame
