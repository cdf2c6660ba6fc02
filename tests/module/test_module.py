"""The shared module, driven with tensors only (no AnnData)."""

from __future__ import annotations

import math

import pytest
import torch
from scvi import REGISTRY_KEYS

from scperturb_vae.module.priors import ConditionalGaussianPrior, SparseShiftPrior, StandardNormalPrior
from scperturb_vae.module.vae import PerturbationVAEModule

# label codes: 0 = control, 1 = A, 2 = B, 3 = A+B
LABEL_TABLE = torch.tensor([[-1, -1], [0, -1], [1, -1], [0, 1]])


def _module(prior, n_genes=6, n_latent=1, likelihood="poisson", seed=0, **kw):
    torch.manual_seed(seed)
    module = PerturbationVAEModule(
        n_genes, LABEL_TABLE, prior, n_latent=n_latent, n_hidden=16, likelihood=likelihood, **kw
    )
    module.eval()
    return module


def _tensors(n_genes=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.poisson(torch.rand(8, n_genes, generator=gen) * 20 + 1)
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3]).view(-1, 1)
    return {REGISTRY_KEYS.X_KEY: x, REGISTRY_KEYS.LABELS_KEY: labels,
            REGISTRY_KEYS.BATCH_KEY: torch.zeros(8, 1, dtype=torch.long)}


def _exact_log_marginal(module, tensors):
    """log p(x | a) by quadrature over a one-dimensional latent."""
    grid = torch.linspace(-12, 12, 4001)
    x = tensors[REGISTRY_KEYS.X_KEY]
    inf = module.inference(**module._get_inference_input(tensors))
    z = grid.view(-1, 1, 1).expand(-1, x.shape[0], 1)
    library = inf["library"].unsqueeze(0).expand(len(grid), *inf["library"].shape)
    with torch.no_grad():
        px = module.generative(z, library, tensors[REGISTRY_KEYS.BATCH_KEY])["px"]
        log_joint = px.log_prob(x).sum(-1) + module.prior.log_prob(z, inf["pert_idx"]).sum(-1)
    dz = (grid[1] - grid[0]).item()
    return torch.logsumexp(log_joint, 0) + math.log(dz)


@pytest.mark.parametrize(
    "prior",
    [
        lambda: StandardNormalPrior(1, 2),
        lambda: _shifted_sparse(),
        lambda: _shifted_ivae(),
    ],
    ids=["vae", "svae+", "ivae"],
)
def test_importance_sampled_likelihood_matches_numerical_integration(prior):
    module = _module(prior())
    tensors = _tensors()
    exact = _exact_log_marginal(module, tensors)
    torch.manual_seed(1)
    ll, se = module.marginal_ll(tensors, n_mc_samples=2000, n_mc_samples_per_pass=250, return_stderr=True)
    assert torch.all(se > 0)
    # within Monte Carlo error (IS is biased low by O(1/S); 5 standard errors + a small slack)
    assert torch.all((ll - exact).abs() < 5 * se + 0.02), (ll, exact, se)


def _shifted_sparse():
    prior = SparseShiftPrior(1, 2)
    with torch.no_grad():
        prior.shift.copy_(torch.tensor([[2.5], [-1.5]]))
        prior.mask_logit.copy_(torch.tensor([[1.0], [-0.5]]))
    return prior


def _shifted_ivae():
    prior = ConditionalGaussianPrior(1, 2)
    with torch.no_grad():
        prior.mean.copy_(torch.tensor([[1.5], [-1.0]]))
        prior.log_var.copy_(torch.tensor([[0.7], [-0.6]]))
    return prior


def test_likelihood_depends_on_the_prior():
    """A perturbation shift in the prior changes the likelihood of perturbed cells only."""
    tensors = _tensors()
    base = _module(SparseShiftPrior(1, 2, mask_init_logit=-30))
    shifted = _module(SparseShiftPrior(1, 2, mask_init_logit=-30))
    with torch.no_grad():
        shifted.prior.mask_logit[0] = 30.0
        shifted.prior.shift[0] = 3.0
    torch.manual_seed(0)
    a = base.marginal_ll(tensors, n_mc_samples=500)
    torch.manual_seed(0)
    b = shifted.marginal_ll(tensors, n_mc_samples=500)
    labels = tensors[REGISTRY_KEYS.LABELS_KEY].view(-1)
    unaffected = (labels == 0) | (labels == 2)
    torch.testing.assert_close(a[unaffected], b[unaffected])
    # log N(z; 3, 1) - log N(z; 0, 1) = 3 z - 4.5 under the posterior: nonzero, of either sign
    assert torch.all((a[~unaffected] - b[~unaffected]).abs() > 1e-3)


def test_tc_decomposition_with_unit_weight_equals_log_ratio():
    module = _module(StandardNormalPrior(3, 2), n_latent=3, tc_beta=1.0)
    tensors = _tensors()
    inf = module.inference(**module._get_inference_input(tensors))
    kl = module._tc_kl(inf["qz"], inf["z"], inf["pert_idx"], n_obs=100)
    expected = (inf["qz"].log_prob(inf["z"]) - module.prior.log_prob(inf["z"], inf["pert_idx"])).sum(-1)
    torch.testing.assert_close(kl, expected, atol=1e-4, rtol=1e-5)
    module.tc_beta = 4.0
    assert not torch.allclose(module._tc_kl(inf["qz"], inf["z"], inf["pert_idx"], n_obs=100), expected)


@pytest.mark.parametrize("likelihood", ["nb", "zinb", "poisson"])
def test_loss_is_per_cell_elbo_plus_penalty_over_n_obs(likelihood):
    module = _module(SparseShiftPrior(2, 2, beta_k=10.0), n_latent=2, likelihood=likelihood)
    tensors = _tensors()
    inf, gen, out = module(tensors, loss_kwargs={"kl_weight": 1.0, "n_obs": 1000})
    rec = out.reconstruction_loss["reconstruction_loss"]
    kl = out.kl_local["kl_z"]
    penalty = out.kl_global["prior_penalty"]
    assert rec.shape == (8,) and kl.shape == (8,)
    torch.testing.assert_close(out.loss, (rec + kl).mean() + penalty / 1000)
    assert torch.isfinite(out.loss)


def test_decoder_never_sees_the_perturbation():
    """Same z, different labels: the same expression distribution."""
    module = _module(SparseShiftPrior(2, 2), n_latent=2, likelihood="nb")
    z = torch.randn(4, 2)
    lib = torch.full((4, 1), 5.0)
    out = module.generative(z, lib, None)["px"]
    again = module.generative(z, lib, torch.zeros(4, 1, dtype=torch.long))["px"]
    torch.testing.assert_close(out.mu, again.mu)


def test_encode_perturbation_changes_the_posterior():
    module = _module(SparseShiftPrior(2, 2), n_latent=2, encode_perturbation=True)
    tensors = _tensors()
    q1 = module.inference(**module._get_inference_input(tensors))["qz"].loc
    tensors[REGISTRY_KEYS.LABELS_KEY] = torch.zeros(8, 1, dtype=torch.long)
    q2 = module.inference(**module._get_inference_input(tensors))["qz"].loc
    assert not torch.allclose(q1, q2)
