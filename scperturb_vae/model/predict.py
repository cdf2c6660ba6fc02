"""Counterfactual expression: what a perturbation does to the control cells.

The estimator (:func:`predict_expression`): take ``C`` control cells (a seeded sample), their
posterior means ``z_c = E[z | x_c]`` and observed library sizes ``l_c``; move each latent by the
prior's own transport from the control prior to ``p(z | a)`` (:meth:`Prior.counterfactual
<scperturb_vae.module.priors.Prior.counterfactual>`):

- sVAE+ / sVAE: ``z_c + sum_a pi_a mu_a``, the expected shift of the masks (a combination
  ``A+B`` adds its parts' shifts, the union of their masks);
- iVAE: ``m_a + s_a z_c``, the Gaussian transport to ``N(m_a, s_a^2)``;
- VAE: ``z_c`` (no perturbation parameters: it predicts the control);

and decode with the cell's own batch.  The predicted normalised mean of gene ``g`` is
``1e4 * mean_c rho_g(z_c')`` (``rho``: the decoder's proportions, library-free); the average
treatment effect (ATE) is its difference to the same mean at ``z_c``.  Sampled counts draw from
the count likelihood at the control cell's library size ``l_c``, one draw per cell and target,
coupled with the cell's own control draw (:func:`coupled_counts`): the counterfactual counts
of a cell differ from its control counts only where the perturbation changed the rate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from scperturb_vae.data.labels import COMBINATION_SEP, split_combination
from scperturb_vae.errors import InputError

__all__ = ["NORMALISED_TOTAL", "Prediction", "coupled_counts", "decode_counterfactuals", "parse_targets",
           "predict_expression"]

#: counts per cell of the normalised means (as ``sc.pp.normalize_total(target_sum=1e4)``)
NORMALISED_TOTAL = 1e4


@dataclass
class Prediction:
    """What :func:`predict_expression` returns."""

    #: targets (control first) x genes: predicted normalised means (per 1e4 counts)
    means: pd.DataFrame
    #: perturbations x genes: ``means[target] - means[control]``
    ate: pd.DataFrame
    #: sampled counts (targets x cells, genes) when asked, else None; ``obs["target"]``
    cells: object | None
    #: the control cells used (their obs names)
    control_cells: list[str]


def parse_targets(model, perturbations: str | Sequence[str]) -> list[str]:
    """Checked target labels: trained perturbations, or combinations ``A+B`` of them."""
    items = perturbations.split(",") if isinstance(perturbations, str) else list(perturbations)
    items = [str(p).strip() for p in items if str(p).strip()]
    if not items:
        raise InputError("no perturbation to predict; give e.g. A,B,A+B")
    known = set(model.perturbations)
    for label in items:
        unknown = [p for p in split_combination(label, COMBINATION_SEP) if p not in known]
        if unknown:
            raise InputError(f"cannot predict {label!r}: {', '.join(map(repr, unknown))} was not trained "
                             f"(the model knows {len(known)} perturbations, e.g. {', '.join(sorted(known)[:5])})")
    return list(dict.fromkeys(items))


def _control_indices(model, n_cells: int | None, seed: int) -> np.ndarray:
    labels = model.adata.obs[model.perturbation_key].astype(str).to_numpy()
    control = np.flatnonzero(labels == model.control_label)
    if n_cells is not None and n_cells < len(control):
        control = np.sort(np.random.default_rng(seed).choice(control, size=int(n_cells), replace=False))
    return control


def predict_expression(model, perturbations, *, n_cells: int | None = 1000, sample_counts: bool = False,
                       seed: int = 0, batch_size: int = 256) -> Prediction:
    """Predicted expression of ``perturbations`` (see the module docstring for the estimator).

    Parameters
    ----------
    model
        A trained model of the package.
    perturbations
        Labels (``"A,B,A+B"`` or a list): trained perturbations and combinations of them.
    n_cells
        Control cells to transport (a seeded sample; None: all).
    sample_counts
        Also draw counts, one counterfactual cell per control cell and target (and the
        controls' own reconstructions), returned as an AnnData in ``cells``.
    seed
        Fixes the sample of control cells and the sampled counts.
    """
    import anndata as ad
    import scipy.sparse as sp
    import torch

    targets = parse_targets(model, perturbations)
    index = {p: i for i, p in enumerate(model.perturbations)}
    k = max(len(split_combination(t, COMBINATION_SEP)) for t in targets)
    rows = [[index[p] for p in split_combination(t, COMBINATION_SEP)] for t in targets]
    pert_table = torch.tensor([r + [-1] * (k - len(r)) for r in rows], dtype=torch.long)
    control = _control_indices(model, n_cells, seed)
    if sample_counts:
        torch.manual_seed(int(seed))
    loader = model._make_data_loader(adata=model.adata, indices=control, batch_size=batch_size, shuffle=False)
    sums, sampled = decode_counterfactuals(model.module, loader, pert_table, sample_counts=sample_counts)
    genes = list(model.adata.var_names)
    names = [model.control_label, *targets]
    means = pd.DataFrame((sums / max(len(control), 1) * NORMALISED_TOTAL).numpy(), index=pd.Index(names, name="target"),
                         columns=pd.Index(genes, name="gene"))
    ate = means.iloc[1:] - means.iloc[0].to_numpy()
    cells = None
    if sample_counts:
        counts = sp.vstack(sampled).tocsr()
        control_names = model.adata.obs_names[control].astype(str)
        obs = pd.DataFrame({
            "target": pd.Categorical(np.repeat(names, len(control)), categories=names),
            "control_cell": np.tile(control_names, len(names)),
        })
        obs.index = [f"{t}_{c}" for t, c in zip(obs["target"], obs["control_cell"])]
        cells = ad.AnnData(X=counts, obs=obs, var=pd.DataFrame(index=pd.Index(genes)))
    return Prediction(means=means, ate=ate, cells=cells,
                      control_cells=list(model.adata.obs_names[control].astype(str)))


def decode_counterfactuals(module, batches, pert_table, *, sample_counts: bool = False):
    """Sums of decoded proportions (row 0: the cells themselves, then one row per target).

    ``batches`` yields scvi tensor dicts of the cells to transport; ``pert_table`` is
    ``(n_targets, k)`` single-perturbation indices into ``module``'s prior (-1 padded).
    Returns ``(sums, sampled)``: a float64 ``(n_targets + 1, n_genes)`` tensor and, when
    ``sample_counts``, one CSR matrix of counts per row (cells in batch order), drawn by
    :func:`coupled_counts` so that a cell's counterfactual counts share its own noise; else
    ``[]``.  The caller seeds torch when counts are sampled.
    """
    import scipy.sparse as sp
    import torch
    from scvi import REGISTRY_KEYS

    module.eval()
    device = next(module.parameters()).device
    rows = pert_table.shape[0] + 1
    sums, sampled = None, [[] for _ in range(rows)]
    with torch.inference_mode():
        for tensors in batches:
            tensors = {key: value.to(device) for key, value in tensors.items()}
            batch = tensors.get(REGISTRY_KEYS.BATCH_KEY)
            inference = module.inference(x=tensors[REGISTRY_KEYS.X_KEY], batch_index=batch,
                                         labels=tensors[REGISTRY_KEYS.LABELS_KEY])
            z, library = inference["qz"].loc, inference["library"]
            pxs = [module.generative(z=z if row == 0 else module.prior.counterfactual(
                       z, pert_table[row - 1].to(device).expand(z.shape[0], -1)), library=library,
                       batch_index=batch)["px"] for row in range(rows)]
            part = torch.stack([px.scale.double().sum(0) for px in pxs]).cpu()
            sums = part if sums is None else sums + part
            if sample_counts:
                for row, counts in enumerate(coupled_counts(pxs)):
                    sampled[row].append(sp.csr_matrix(counts.cpu().numpy().astype(np.float32)))
    return sums, [sp.vstack(parts) for parts in sampled] if sample_counts else []


def coupled_counts(pxs: list) -> list:
    """One count draw per cell from each of ``pxs`` (the same cells' count distributions under
    several conditions, the first the cell itself), coupled through the cell's own noise.

    Each draw has exactly its own distribution (negative binomial, zero-inflated or Poisson),
    but all share one gamma draw per cell and gene (the negative binomial's
    ``Gamma(theta, theta)`` rate noise, which depends on the gene only) and one Poisson
    process: with ``l0`` and ``l`` the first and another condition's Poisson rates,
    ``x = x0 + Poisson(l - l0)`` where ``l > l0`` and ``x ~ Binomial(x0, l / l0)`` (thinning)
    where it is lower; zero inflation shares one uniform draw.  A counterfactual therefore
    differs from its control draw only where the decoded rate changed, and the noise of two
    independent draws (which at a few hundred cells hides a weak predicted effect) cancels
    from the predicted effect.
    """
    import torch
    from scvi.distributions import NegativeBinomial, ZeroInflatedNegativeBinomial

    first = pxs[0]
    rate0 = first.mu if isinstance(first, NegativeBinomial) else first.rate
    noise = torch.ones_like(rate0)
    if isinstance(first, NegativeBinomial):  # ZINB is a subclass
        theta = first.theta.expand_as(rate0)
        noise = torch.distributions.Gamma(theta, theta).sample().clamp_min(1e-12)
    lam0 = (rate0 * noise).clamp_min(1e-12)
    x0 = torch.poisson(lam0)
    uniform = torch.rand_like(rate0) if isinstance(first, ZeroInflatedNegativeBinomial) else None
    out = []
    for px in pxs:
        lam = ((px.mu if isinstance(px, NegativeBinomial) else px.rate) * noise).clamp_min(1e-12)
        up = x0 + torch.poisson((lam - lam0).clamp_min(0.0))
        down = torch.distributions.Binomial(total_count=x0, probs=(lam / lam0).clamp(0.0, 1.0)).sample()
        x = torch.where(lam > lam0, up, down)
        if uniform is not None:
            x = torch.where(uniform < px.zi_probs, torch.zeros_like(x), x)
        out.append(x)
    return out
