r"""Held-out perturbations: the split, the adaptation of new prior parameters, the likelihood.

The question a perturbation model must answer is whether it generalises to perturbations it
has not seen.  Following the sVAE+ paper (Lopez et al. 2023), a set of perturbations (e.g. a
cluster of mediator-complex knockouts) is held out:

1. **Split** (:func:`make_split`).  Every cell whose label holds a held-out perturbation (alone
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
from scperturb_vae.data.validate import PerturbationData
from scperturb_vae.errors import InputError
from scperturb_vae.module.priors import ConditionalGaussianPrior, Prior, SparseShiftPrior, StandardNormalPrior

logger = logging.getLogger("scperturb_vae")

__all__ = [
    "PARTS",
    "HoldoutSpec",
    "resolve_holdout",
    "make_split",
    "HeldoutCells",
    "heldout_cells",
    "extended_module",
    "adapt_prior",
    "heldout_log_likelihood",
    "mean_and_stderr",
]

#: the parts of a held-out split, as written in ``split.csv``
PARTS = ("train", "validation", "heldout_adapt", "heldout_eval")


# --------------------------------------------------------------------------- which perturbations
@dataclass
class HoldoutSpec:
    """The held-out perturbations and where they came from."""

    perturbations: list[str]
    #: the cluster's name, or ``"custom"`` for ``--holdout-perturbations``
    name: str
    #: ``"computed"``, the cluster file's path, or ``"list"``
    source: str
    #: the whole cluster table when clusters were used (perturbation, cluster, ...)
    clusters: pd.DataFrame | None = field(default=None, repr=False)

    def to_json(self) -> dict:
        return {"name": self.name, "source": self.source, "perturbations": list(self.perturbations)}


def _parse_list(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = value.split(",")
    return [str(v).strip() for v in value if str(v).strip()]


def resolve_holdout(
    data: PerturbationData,
    *,
    holdout: str | None = None,
    holdout_perturbations=None,
    clusters: str | None = None,
    n_clusters: int = 8,
    n_genes: int = 500,
) -> HoldoutSpec:
    """Resolve ``--holdout CLUSTER`` or ``--holdout-perturbations A,B`` into perturbations.

    A cluster name refers to the user's cluster table (``clusters``, read with
    :func:`scperturb_vae.data.cluster_tables.read_cluster_table`) or, without one, to the clusters computed
    from the data (:func:`scperturb_vae.tl.clusters.compute_perturbation_clusters` with
    ``n_clusters`` and ``n_genes``; deterministic, so ``train`` and ``evaluate`` agree).
    """
    names = _parse_list(holdout_perturbations)
    if holdout is not None and names:
        raise InputError("give either --holdout CLUSTER or --holdout-perturbations A,B,..., not both")
    if holdout is None and not names:
        raise InputError("nothing to hold out: give --holdout CLUSTER or --holdout-perturbations A,B,...")
    known = set(data.perturbations)
    table = None
    if names:
        unknown = [p for p in names if p not in known]
        if unknown:
            raise InputError(
                f"held-out perturbation(s) {', '.join(unknown[:5])} not in column {data.perturbation_key!r} "
                f"(it has {len(known)} perturbations, e.g. {', '.join(sorted(known)[:5])})"
            )
        spec = HoldoutSpec(sorted(set(names)), "custom", "list")
    else:
        from scperturb_vae.data.cluster_tables import cluster_members, natural_key, read_cluster_table
        from scperturb_vae.tl.clusters import compute_perturbation_clusters

        if clusters is not None:
            # read whole: a cluster none of whose members is in the data is named as such,
            # not reported as unknown
            table = read_cluster_table(clusters)
            source = str(clusters)
        else:
            table = compute_perturbation_clusters(
                data.adata, data.perturbation_key, data.control_label,
                n_clusters=n_clusters, n_genes=n_genes, layer=data.layer,
            )
            source = "computed"
        members = cluster_members(table)
        holdout = str(holdout)
        if holdout not in members:
            available = ", ".join(sorted(members, key=natural_key)[:12])
            where = f"the clusters of {clusters}" if clusters is not None else f"the {len(members)} computed clusters"
            raise InputError(f"unknown cluster {holdout!r}; {where} are named {available}")
        chosen = sorted(set(members[holdout]) & known)
        if not chosen:
            raise InputError(
                f"cluster {holdout!r} has no perturbation present in column {data.perturbation_key!r} "
                f"(its members: {', '.join(sorted(members[holdout])[:5])}"
                f"{', ...' if len(members[holdout]) > 5 else ''})"
            )
        if clusters is not None:  # the members present in the data, as computed clusters are
            table = table[table["perturbation"].astype(str).isin(known)].reset_index(drop=True)
        spec = HoldoutSpec(chosen, holdout, source, table)
    if set(spec.perturbations) >= known:
        raise InputError(
            f"holding out {spec.name!r} would hold out every perturbation ({len(known)}); "
            "nothing would be left to train the perturbation parameters on"
        )
    return spec


# --------------------------------------------------------------------------- which cells
def make_split(
    labels: pd.Series,
    control_label: str,
    heldout: list[str],
    *,
    adapt_fraction: float = 0.5,
    seed: int = 0,
) -> pd.Series:
    """Assign each cell to ``train``, ``heldout_adapt`` or ``heldout_eval``.

    ``labels`` are the cells' raw labels (index: cell names).  A cell is held out when any
    single perturbation of its label is in ``heldout``.  The cells of each held-out label are
    shuffled with ``numpy.random.default_rng(seed)`` (labels visited in sorted order) and the
    first ``round(adapt_fraction * n)`` (at least 1, at most ``n - 1``) adapt.

    Raises
    ------
    InputError
        When a held-out label has fewer than 2 cells, or no cell is held out.
    """
    if not 0.0 < adapt_fraction < 1.0:
        raise InputError(f"the adaptation fraction must be between 0 and 1, not {adapt_fraction}")
    labels = labels.astype(str)
    held = set(heldout)
    parts = pd.Series("train", index=labels.index, dtype=object, name="part")
    values = labels.to_numpy()
    rng = np.random.default_rng(seed)
    held_labels = sorted(
        lab for lab in pd.unique(values)
        if lab != control_label and held & set(split_combination(lab, COMBINATION_SEP))
    )
    if not held_labels:
        raise InputError("no cell carries a held-out perturbation")
    # rows of each label in one pass (a comparison per held-out label would cost
    # n_labels x n_cells when a large cluster is held out)
    rows_of = pd.Series(np.arange(len(values))).groupby(values, sort=False).indices
    for lab in held_labels:
        rows = np.asarray(rows_of[lab], dtype=np.int64)  # ascending, as np.flatnonzero
        if len(rows) < 2:
            raise InputError(
                f"held-out perturbation {lab!r} has {len(rows)} cell: at least 2 are needed to split it "
                "into adaptation and evaluation cells"
            )
        rows = rows[rng.permutation(len(rows))]
        n_adapt = int(min(len(rows) - 1, max(1, round(adapt_fraction * len(rows)))))
        parts.iloc[rows[:n_adapt]] = "heldout_adapt"
        parts.iloc[rows[n_adapt:]] = "heldout_eval"
    return parts


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


def _batches(cells: HeldoutCells, batch_size: int):
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
    for tensors, _ in _batches(cells, batch_size):
        tensors = {k: v.to(device) for k, v in tensors.items()}
        inf = module.inference(**module._get_inference_input(tensors))
        locs.append(inf["qz"].loc.cpu())
        scales.append(inf["qz"].scale.cpu())
    return torch.cat(locs), torch.cat(scales)


def _adaptation_kl(prior: Prior, qz, z, pert_idx) -> torch.Tensor:
    """Per-cell KL under the exact prior marginal (closed form where there is one)."""
    if isinstance(prior, ConditionalGaussianPrior):
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
    n_samples_per_pass: int = 100,
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
    for tensors, pert_idx in _batches(cells, batch_size):
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


def holdout_split(data: PerturbationData, *, holdout=None, holdout_perturbations=None, clusters=None,
                  n_clusters: int = 8, adapt_fraction: float = 0.5, seed: int = 0):
    """The held-out perturbations (:func:`resolve_holdout`) and the cells' parts (:func:`make_split`)."""
    spec = resolve_holdout(data, holdout=holdout, holdout_perturbations=holdout_perturbations, clusters=clusters,
                           n_clusters=n_clusters)
    parts = make_split(data.adata.obs[data.perturbation_key], data.control_label, spec.perturbations,
                       adapt_fraction=adapt_fraction, seed=seed)
    logger.info(
        f"holding out {spec.name!r} ({len(spec.perturbations)} perturbations: {', '.join(spec.perturbations[:8])}"
        f"{', ...' if len(spec.perturbations) > 8 else ''}): {int((parts == 'heldout_adapt').sum())} adaptation and "
        f"{int((parts == 'heldout_eval').sum())} evaluation cells; {int((parts == 'train').sum())} cells train"
    )
    return spec, parts
