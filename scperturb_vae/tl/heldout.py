r"""Held-out perturbations: the split (:mod:`scperturb_vae.tl.holdout`), the adaptation of new
prior parameters, the likelihood.

The question a perturbation model must answer is whether it generalises to perturbations it
has not seen.  Following the sVAE+ paper (Lopez et al. 2023), a set of perturbations (e.g. a
cluster of mediator-complex knockouts) is held out:

1. **Split** (:func:`scperturb_vae.tl.holdout.make_split`).  Every cell whose label holds a held-out perturbation (alone
   or in a combination) is held out.  The cells of each held-out label are split at random
   (seeded) into an *adaptation* part (``adapt_fraction``) and an *evaluation* part; all other
   cells (training perturbations and controls) train the model.
2. **Adaptation** (:func:`adapt_prior`).  Fresh prior parameters are appended for the new
   perturbations (sVAE+ / sVAE: shifts and mask logits; iVAE: means and log-variances) and
   fitted on the adaptation cells with the encoder, decoder and dispersion frozen.  The
   objective is the ELBO of the adaptation cells under the *exact* prior marginal plus the
   hyper-prior of the new parameters (sVAE+'s Beta(1, K)), per adaptation cell::

       mean_cells E_q(z|x)[ log q(z|x) - log p(z|a) ]  +  penalty(new parameters) / n_cells

   (the reconstruction term is constant when the networks are frozen, so ``q(z|x)`` is computed
   once and the fit is full-batch Adam on the prior parameters alone).  New parameters start
   at "no effect": shifts and means 0, log-variances 0, so before adaptation (*zero-shot*) the
   prior of an unseen perturbation is the control's ``N(0, I)``.  The plain VAE has no
   perturbation parameters: its adapted and zero-shot likelihoods are the same, the reference.
3. **Likelihood** (:func:`heldout_log_likelihood`).  The per-cell importance-sampled
   ``log p(x | a)`` (``q(z|x)`` as proposal, chunked over samples) and its Monte Carlo standard
   error, on the evaluation cells.

Nothing here changes the trained model: adaptation works on a copy of its module.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from scvi import REGISTRY_KEYS

from scperturb_vae.data.labels import COMBINATION_SEP, split_combination
from scperturb_vae.errors import InputError
from scperturb_vae.module.priors import ConditionalGaussianPrior, Prior, SparseShiftPrior, StandardNormalPrior

logger = logging.getLogger("scperturb_vae")

__all__ = [
    "HeldoutCells",
    "heldout_cells",
    "iter_batches",
    "extended_module",
    "adapt_prior",
    "heldout_log_likelihood",
    "mean_and_stderr",
]


# --------------------------------------------------------------------------- which perturbations


# --------------------------------------------------------------------------- which cells


# --------------------------------------------------------------------------- tensors of held-out cells
@dataclass
class HeldoutCells:
    """Held-out cells as the module sees them, with the extended perturbation index."""

    #: cell names
    obs_names: pd.Index
    #: raw labels of the cells
    labels: np.ndarray
    #: counts, CSR (cells x genes), float32
    X: object = field(repr=False)
    #: ``(n_cells, k)`` single-perturbation indices into the extended table (-1 padded)
    pert_idx: torch.Tensor = field(repr=False)
    #: batch codes ``(n_cells, 1)``
    batch: torch.Tensor = field(repr=False)
    #: the label code the encoder gets (the control's, for ``q(z | x, a)`` encoders)
    encoder_label: int = 0
    #: the new single perturbations (appended after the model's own, in this order)
    new_perturbations: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.obs_names)

    def subset(self, rows: np.ndarray) -> HeldoutCells:
        rows = np.asarray(rows)
        return HeldoutCells(
            self.obs_names[rows], self.labels[rows], self.X[rows], self.pert_idx[rows],
            self.batch[rows], self.encoder_label, self.new_perturbations,
        )


def heldout_cells(model, adata, rows: np.ndarray, new_perturbations: list[str] | None = None) -> HeldoutCells:
    """Cells ``rows`` of ``adata`` (which need not be registered with the model) as tensors.

    Perturbations the model does not know get indices after its own, in the order of
    ``new_perturbations`` (default: sorted as they appear in the cells' labels).
    """
    import scipy.sparse as sp

    setup = model.adata_manager.registry["setup_args"]
    key, control, layer, batch_key = (
        setup["perturbation_key"], setup["control_label"], setup.get("layer"), setup.get("batch_key"),
    )
    rows = np.asarray(rows)
    labels = adata.obs[key].astype(str).to_numpy()[rows]
    parts = [[] if lab == control else split_combination(lab, COMBINATION_SEP) for lab in labels]
    index = {p: i for i, p in enumerate(model.perturbations)}
    if new_perturbations is None:
        new_perturbations = sorted({p for ps in parts for p in ps if p not in index})
    for p in new_perturbations:
        if p not in index:
            index[p] = len(index)
    missing = sorted({p for ps in parts for p in ps if p not in index})
    if missing:
        raise InputError(f"perturbation(s) {', '.join(missing[:5])} are neither in the model nor held out")
    k = max(1, max((len(ps) for ps in parts), default=1))
    pert_idx = torch.full((len(rows), k), -1, dtype=torch.long)
    for r, ps in enumerate(parts):
        for c, p in enumerate(ps):
            pert_idx[r, c] = index[p]

    counts = adata.layers[layer] if layer is not None else adata.X
    X = counts[rows]
    X = sp.csr_matrix(X, dtype=np.float32) if not sp.issparse(X) else X.tocsr().astype(np.float32)

    batch = torch.zeros((len(rows), 1), dtype=torch.long)
    if batch_key is not None:
        mapping = list(model.adata_manager.get_state_registry(REGISTRY_KEYS.BATCH_KEY).categorical_mapping)
        code = {str(b): i for i, b in enumerate(mapping)}
        values = adata.obs[batch_key].astype(str).to_numpy()[rows]
        unknown = sorted(set(values) - set(code))
        if unknown:
            raise InputError(f"batch(es) {', '.join(unknown[:5])} of held-out cells were not seen in training")
        batch = torch.as_tensor([code[v] for v in values], dtype=torch.long).view(-1, 1)
    mapping = [str(c) for c in model.adata_manager.get_state_registry(REGISTRY_KEYS.LABELS_KEY).categorical_mapping]
    return HeldoutCells(
        adata.obs_names[rows], labels, X, pert_idx, batch, mapping.index(control), list(new_perturbations),
    )


def iter_batches(cells: HeldoutCells, batch_size: int):
    """scvi tensor dicts of ``cells`` (``batch_size`` at a time) and their perturbation indices."""
    for start in range(0, len(cells), batch_size):
        stop = min(start + batch_size, len(cells))
        x = torch.as_tensor(cells.X[start:stop].toarray())
        tensors = {
            REGISTRY_KEYS.X_KEY: x,
            REGISTRY_KEYS.LABELS_KEY: torch.full((stop - start, 1), cells.encoder_label, dtype=torch.long),
            REGISTRY_KEYS.BATCH_KEY: cells.batch[start:stop],
        }
        yield tensors, cells.pert_idx[start:stop]


def extended_module(model, n_new: int):
    """A copy of the model's module with ``n_new`` fresh "no effect" perturbations in its prior."""
    module = copy.deepcopy(model.module)
    module.eval()
    prior = module.prior
    if n_new:
        old = prior.n_perturbations
        prior.add_perturbations(n_new)
        with torch.no_grad():
            if isinstance(prior, SparseShiftPrior):
                prior.shift[old:] = 0.0
            elif isinstance(prior, ConditionalGaussianPrior):
                prior.mean[old:] = 0.0
                prior.log_var[old:] = 0.0
    return module


@torch.inference_mode()
def _posterior(module, cells: HeldoutCells, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    locs, scales = [], []
    device = next(module.parameters()).device
    for tensors, _ in iter_batches(cells, batch_size):
        tensors = {k: v.to(device) for k, v in tensors.items()}
        inf = module.inference(**module._get_inference_input(tensors))
        locs.append(inf["qz"].loc.cpu())
        scales.append(inf["qz"].scale.cpu())
    return torch.cat(locs), torch.cat(scales)


def _adaptation_kl(prior: Prior, qz, z, pert_idx) -> torch.Tensor:
    """Per-cell KL of the training objective, in closed form where there is one.

    sVAE+'s shared-mask estimator is closed form and is the one it was trained with (the same
    graph rule for the new perturbations); its per-cell estimators (mixture, Gumbel) are
    replaced by the exact mixture marginal, which needs no mask samples.
    """
    if isinstance(prior, ConditionalGaussianPrior):
        return prior.kl(qz, z, pert_idx)
    if isinstance(prior, SparseShiftPrior) and prior.kl_estimator == "shared":
        return prior.kl(qz, z, pert_idx)
    return Prior.kl(prior, qz, z, pert_idx)


def adapt_prior(
    module,
    cells: HeldoutCells,
    *,
    n_steps: int = 500,
    lr: float = 0.05,
    n_samples: int = 8,
    batch_size: int = 512,
    seed: int = 0,
) -> dict:
    """Fit the new perturbations' prior parameters of ``module`` (in place) on ``cells``.

    Only the rows of the prior parameters that belong to new perturbations change (the
    gradients of the others are zeroed, and Adam leaves a parameter with zero gradient
    history where it is); the networks and the dispersion are not touched.  Returns a small
    record of the fit (initial and final objective).
    """
    prior = module.prior
    n_new = len(cells.new_perturbations)
    if isinstance(prior, StandardNormalPrior) or n_new == 0 or len(cells) == 0:
        return {"adapted": False, "n_cells": int(len(cells))}
    n_old = prior.n_perturbations - n_new
    loc, scale = _posterior(module, cells, batch_size)
    pert_idx = cells.pert_idx
    if isinstance(prior, SparseShiftPrior):  # the slab's Occam factor counts the adaptation cells
        prior.set_cell_counts(pert_idx, rows=slice(n_old, None))
    params = [p for p in prior.parameters() if p.requires_grad]
    saved = {id(p): p.requires_grad for p in module.parameters()}
    for p in module.parameters():
        p.requires_grad_(False)
    row_mask = torch.zeros(prior.n_perturbations, 1)
    row_mask[n_old:] = 1.0
    for p in params:
        p.requires_grad_(True)
    optimiser = torch.optim.Adam(params, lr=lr)
    generator = torch.Generator().manual_seed(int(seed))
    qz = torch.distributions.Normal(loc, scale)
    n_cells = len(cells)
    history = []
    try:
        for _ in range(n_steps):
            optimiser.zero_grad()
            eps = torch.randn((n_samples, *loc.shape), generator=generator)
            z = loc + scale * eps
            kl = _adaptation_kl(prior, qz, z, pert_idx).mean()
            penalty = prior.penalty(rows=slice(n_old, None)) if isinstance(prior, SparseShiftPrior) else 0.0
            loss = kl + penalty / n_cells
            loss.backward()
            for p in params:
                if p.grad is not None:
                    p.grad.mul_(row_mask.to(p.grad.dtype))
            optimiser.step()
            history.append(float(loss.detach()))
    finally:
        for p in module.parameters():
            p.requires_grad_(saved[id(p)])
    return {
        "adapted": True,
        "n_cells": int(n_cells),
        "n_steps": int(n_steps),
        "objective_first": history[0],
        "objective_last": float(np.mean(history[-20:])),
    }


@torch.inference_mode()
def heldout_log_likelihood(
    module,
    cells: HeldoutCells,
    *,
    n_samples: int = 1000,
    n_samples_per_pass: int | None = None,
    batch_size: int = 128,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-cell importance-sampled ``log p(x | a)`` and its Monte Carlo standard error.

    Uses :meth:`~scperturb_vae.module.vae.PerturbationVAEModule.marginal_ll` with the cells' own
    (extended) perturbation indices for the prior.
    """
    torch.manual_seed(int(seed))
    device = next(module.parameters()).device
    values, errors = [], []
    module.eval()
    for tensors, pert_idx in iter_batches(cells, batch_size):
        tensors = {k: v.to(device) for k, v in tensors.items()}
        ll, se = module.marginal_ll(
            tensors, n_mc_samples=n_samples, n_mc_samples_per_pass=n_samples_per_pass,
            return_stderr=True, pert_idx=pert_idx.to(device),
        )
        values.append(ll.cpu().numpy())
        errors.append(se.cpu().numpy())
    if not values:
        return np.zeros(0), np.zeros(0)
    return np.concatenate(values).astype(np.float64), np.concatenate(errors).astype(np.float64)


def mean_and_stderr(ll: np.ndarray, se: np.ndarray) -> tuple[float, float]:
    """Mean per-cell NLL and the Monte Carlo standard error of that mean."""
    if len(ll) == 0:
        return math.nan, math.nan
    return float(-np.mean(ll)), float(np.sqrt(np.sum(np.square(se))) / len(se))


