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
the count likelihood at the control cell's library size ``l_c``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from scperturb_vae.data.labels import COMBINATION_SEP, split_combination
from scperturb_vae.errors import InputError

__all__ = ["NORMALISED_TOTAL", "Prediction", "parse_targets", "predict_expression"]

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
    from scvi import REGISTRY_KEYS

    targets = parse_targets(model, perturbations)
    index = {p: i for i, p in enumerate(model.perturbations)}
    k = max(len(split_combination(t, COMBINATION_SEP)) for t in targets)
    rows = [[index[p] for p in split_combination(t, COMBINATION_SEP)] for t in targets]
    pert_table = torch.tensor([r + [-1] * (k - len(r)) for r in rows], dtype=torch.long)
    control = _control_indices(model, n_cells, seed)
    module = model.module
    module.eval()
    device = next(module.parameters()).device
    genes = list(model.adata.var_names)
    sums = torch.zeros(len(targets) + 1, len(genes), dtype=torch.float64)
    sampled: list[list] = [[] for _ in range(len(targets) + 1)]
    if sample_counts:
        torch.manual_seed(int(seed))
    loader = model._make_data_loader(adata=model.adata, indices=control, batch_size=batch_size, shuffle=False)
    with torch.inference_mode():
        for tensors in loader:
            tensors = {key: value.to(device) for key, value in tensors.items()}
            batch = tensors.get(REGISTRY_KEYS.BATCH_KEY)
            inference = module.inference(x=tensors[REGISTRY_KEYS.X_KEY], batch_index=batch,
                                         labels=tensors[REGISTRY_KEYS.LABELS_KEY])
            z, library = inference["qz"].loc, inference["library"]
            for row in range(len(targets) + 1):
                if row == 0:
                    moved = z
                else:
                    idx = pert_table[row - 1].to(device).expand(z.shape[0], -1)
                    moved = module.prior.counterfactual(z, idx)
                px = module.generative(z=moved, library=library, batch_index=batch)["px"]
                sums[row] += px.scale.double().sum(0).cpu()
                if sample_counts:
                    sampled[row].append(sp.csr_matrix(px.sample().cpu().numpy().astype(np.float32)))
    names = [model.control_label, *targets]
    means = pd.DataFrame((sums / max(len(control), 1) * NORMALISED_TOTAL).numpy(), index=pd.Index(names, name="target"),
                         columns=pd.Index(genes, name="gene"))
    ate = means.iloc[1:] - means.iloc[0].to_numpy()
    cells = None
    if sample_counts:
        blocks = [sp.vstack(parts) for parts in sampled]
        counts = sp.vstack(blocks).tocsr()
        control_names = model.adata.obs_names[control].astype(str)
        obs = pd.DataFrame({
            "target": pd.Categorical(np.repeat(names, len(control)), categories=names),
            "control_cell": np.tile(control_names, len(names)),
        })
        obs.index = [f"{t}_{c}" for t, c in zip(obs["target"], obs["control_cell"])]
        cells = ad.AnnData(X=counts, obs=obs, var=pd.DataFrame(index=pd.Index(genes)))
    return Prediction(means=means, ate=ate, cells=cells,
                      control_cells=list(model.adata.obs_names[control].astype(str)))
