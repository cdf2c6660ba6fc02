"""The priors' math, checked numerically (no AnnData, no training)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch.distributions import Normal

from scperturb_vae.module.priors import (
    ConditionalGaussianPrior,
    SparseShiftPrior,
    StandardNormalPrior,
    gaussian_kl,
    gumbel_sigmoid,
)

GRID = torch.linspace(-20, 20, 8001, dtype=torch.float64)


def _sparse_prior(n_latent=3, n_pert=4, seed=0, **kw) -> SparseShiftPrior:
    torch.manual_seed(seed)
    prior = SparseShiftPrior(n_latent, n_pert, **kw).double()
    with torch.no_grad():
        prior.shift.copy_(torch.randn(n_pert, n_latent, dtype=torch.float64) * 4)
        prior.mask_logit.copy_(torch.randn(n_pert, n_latent, dtype=torch.float64) * 2)
    return prior


def _integrate(prior, pert_idx: torch.Tensor) -> torch.Tensor:
    """Integral over each latent of exp(log_prob) on a fine grid: (batch, latent)."""
    n_latent = prior.n_latent
    z = GRID.view(-1, 1, 1).expand(-1, pert_idx.shape[0], n_latent)
    dens = prior.log_prob(z, pert_idx).exp()
    return torch.trapezoid(dens, GRID, dim=0)


PERT_IDX = torch.tensor([[-1, -1], [0, -1], [2, -1], [1, 3]])  # control, single, single, combination


@pytest.mark.parametrize(
    "make",
    [
        lambda: StandardNormalPrior(3, 4).double(),
        lambda: _sparse_prior(),
        lambda: _ivae_prior(),
    ],
    ids=["normal", "sparse_shift", "conditional_gaussian"],
)
def test_prior_densities_integrate_to_one(make):
    prior = make()
    mass = _integrate(prior, PERT_IDX)
    torch.testing.assert_close(mass, torch.ones_like(mass), atol=1e-6, rtol=0)


def _ivae_prior(seed=0) -> ConditionalGaussianPrior:
    torch.manual_seed(seed)
    prior = ConditionalGaussianPrior(3, 4).double()
    with torch.no_grad():
        prior.mean.copy_(torch.randn(4, 3, dtype=torch.float64) * 2)
        prior.log_var.copy_(torch.randn(4, 3, dtype=torch.float64))
    return prior


@pytest.mark.parametrize("make", [_sparse_prior, _ivae_prior, lambda: StandardNormalPrior(3, 4)])
def test_control_cells_get_standard_normal(make):
    prior = make()
    z = torch.randn(7, 3, dtype=torch.float64)
    control = torch.full((7, 2), -1)
    expected = Normal(0.0, 1.0).log_prob(z)
    torch.testing.assert_close(prior.log_prob(z, control), expected)


def test_sparse_marginal_matches_mask_sampling():
    """The exact per-latent mixture equals the average over sampled masks (incl. a combination)."""
    prior = _sparse_prior()
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(len(PERT_IDX), 3, generator=gen, dtype=torch.float64) * 3
    exact = prior.log_prob(z, PERT_IDX)

    n = 200_000
    pi = torch.sigmoid(prior.mask_logit)
    shift, valid = prior.shift[PERT_IDX.clamp(min=0)], (PERT_IDX >= 0).unsqueeze(-1)
    p = pi[PERT_IDX.clamp(min=0)]
    gamma = (torch.rand((n, *p.shape), generator=gen, dtype=torch.float64) < p).double()
    mean = (gamma * shift * valid).sum(-2)  # (n, B, D)
    mc = torch.logsumexp(Normal(mean, 1.0).log_prob(z), 0) - math.log(n)
    torch.testing.assert_close(mc, exact, atol=0.02, rtol=0)


def test_sparse_marginal_limits():
    """pi -> 1 gives N(mu, 1); pi -> 0 gives N(0, 1)."""
    prior = _sparse_prior()
    z = torch.randn(4, 3, dtype=torch.float64)
    idx = torch.tensor([[0], [1], [2], [3]])
    with torch.no_grad():
        prior.mask_logit.fill_(40.0)
    torch.testing.assert_close(prior.log_prob(z, idx), Normal(prior.shift[idx[:, 0]], 1.0).log_prob(z))
    with torch.no_grad():
        prior.mask_logit.fill_(-40.0)
    torch.testing.assert_close(prior.log_prob(z, idx), Normal(0.0, 1.0).log_prob(z))


def test_gaussian_kl_against_monte_carlo():
    gen = torch.Generator().manual_seed(0)
    qm, qv = torch.tensor([0.3, -1.0, 2.0]), torch.tensor([0.5, 1.5, 0.1])
    pm, pv = torch.tensor([1.0, 0.0, -0.5]), torch.tensor([2.0, 0.7, 1.0])
    z = qm + qv.sqrt() * torch.randn(400_000, 3, generator=gen)
    mc = (Normal(qm, qv.sqrt()).log_prob(z) - Normal(pm, pv.sqrt()).log_prob(z)).mean(0)
    torch.testing.assert_close(gaussian_kl(qm, qv, pm, pv), mc, atol=0.02, rtol=0)


def test_ivae_kl_is_exact_against_its_log_prob():
    prior = _ivae_prior()
    gen = torch.Generator().manual_seed(2)
    qm = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    qs = torch.rand(4, 3, generator=gen, dtype=torch.float64) + 0.3
    qz = Normal(qm, qs)
    z = qz.sample((200_000,))
    mc = (qz.log_prob(z) - prior.log_prob(z, PERT_IDX)).sum(-1).mean(0)
    torch.testing.assert_close(prior.kl(qz, z[0], PERT_IDX), mc, atol=0.03, rtol=0.005)


def test_sparse_kl_expectation_over_gumbel_masks():
    """Training KL (hard Gumbel-sigmoid masks) is unbiased for E_gamma KL(q || N(gamma mu, 1))."""
    prior = _sparse_prior(n_latent=2, n_pert=1, kl_estimator="gumbel")
    prior.train()
    idx = torch.zeros(50_000, 1, dtype=torch.long)
    qz = Normal(torch.full((50_000, 2), 0.5, dtype=torch.float64), torch.full((50_000, 2), 0.8, dtype=torch.float64))
    torch.manual_seed(0)
    mc = prior.kl(qz, qz.loc, idx).mean()
    pi = torch.sigmoid(prior.mask_logit[0])
    on = gaussian_kl(qz.loc[0], qz.scale[0] ** 2, prior.shift[0], 1.0)
    off = gaussian_kl(qz.loc[0], qz.scale[0] ** 2, 0.0, 1.0)
    expected = (pi * on + (1 - pi) * off).sum()
    assert abs(mc.item() - expected.item()) < 0.05 * expected.item()


def test_sparse_mixture_kl_is_unbiased_for_the_kl_to_the_exact_mixture():
    """The per-cell mixture estimator: E_{z~q}[log q(z) - log p(z|a)] = KL(q || mixture), by quadrature."""
    prior = _sparse_prior(n_latent=1, n_pert=1, kl_estimator="mixture")
    prior.train()
    qz = Normal(torch.tensor([[1.2]], dtype=torch.float64), torch.tensor([[0.6]], dtype=torch.float64))
    torch.manual_seed(0)
    z = qz.sample((200_000,)).view(-1, 1)
    idx = torch.zeros(len(z), 1, dtype=torch.long)
    q_many = Normal(qz.loc.expand(len(z), 1), qz.scale.expand(len(z), 1))
    mc = prior.kl(q_many, z, idx).mean()
    grid = torch.linspace(-8, 10, 20001, dtype=torch.float64).view(-1, 1)
    log_q = qz.log_prob(grid)
    log_p = prior.log_prob(grid, torch.zeros(len(grid), 1, dtype=torch.long))
    exact = (log_q.exp() * (log_q - log_p)).sum() * (grid[1] - grid[0])
    assert abs(mc.item() - exact.item()) < 0.01 + 0.01 * abs(exact.item()), (mc.item(), exact.item())


def test_gumbel_sigmoid_hard_is_bernoulli_with_straight_through_gradient():
    torch.manual_seed(0)
    logits = torch.tensor([-2.0, 0.0, 1.5], requires_grad=True)
    samples = gumbel_sigmoid(logits.expand(100_000, 3), temperature=0.7, hard=True)
    assert set(samples.detach().unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(samples.detach().mean(0), torch.sigmoid(logits.detach()), atol=0.01, rtol=0)
    samples.sum().backward()
    assert torch.all(logits.grad > 0)


@pytest.mark.parametrize("k", [1.0, 5.0, 100.0])
def test_beta_penalty_is_negative_beta_log_density(k):
    prior = _sparse_prior(sparsity="beta", beta_k=k, kl_estimator="mixture")
    pi = torch.sigmoid(prior.mask_logit).detach().numpy()
    expected = -stats.beta(1.0, k).logpdf(pi).sum()
    assert prior.penalty().item() == pytest.approx(expected, rel=1e-9)


def test_flat_beta_has_no_sparsity_gradient_and_larger_k_pushes_masks_off():
    flat = _sparse_prior(beta_k=1.0, kl_estimator="mixture")
    flat.penalty().backward()
    assert torch.count_nonzero(flat.mask_logit.grad) == 0
    sparse = _sparse_prior(beta_k=50.0, kl_estimator="mixture")
    sparse.penalty().backward()
    assert torch.all(sparse.mask_logit.grad > 0)  # gradient descent lowers every logit


def test_l1_penalty():
    prior = _sparse_prior(sparsity="l1", l1_strength=3.0)
    assert prior.penalty().item() == pytest.approx(3.0 * torch.sigmoid(prior.mask_logit).sum().item())


def test_ivae_variances_are_modulated_and_graph_scores():
    prior = ConditionalGaussianPrior(2, 2)
    assert prior.log_var.requires_grad
    torch.testing.assert_close(prior.intervention_graph().detach(), torch.zeros(2, 2))
    with torch.no_grad():
        prior.mean[0, 1] = 3.0
    graph = prior.intervention_graph().detach()
    assert graph[0, 1].item() == pytest.approx(1 - math.exp(-4.5), rel=1e-5)
    assert graph[0, 0] == 0 and graph[1].abs().sum() == 0
    assert not ConditionalGaussianPrior(2, 2, modulate_mean=False).mean.requires_grad


def test_add_perturbations_keeps_old_parameters():
    prior = _sparse_prior()
    old = prior.shift.detach().clone()
    prior.add_perturbations(2)
    assert prior.shift.shape == (6, 3) and prior.n_perturbations == 6
    torch.testing.assert_close(prior.shift[:4].detach(), old)
    ivae = _ivae_prior()
    ivae.add_perturbations(3)
    assert ivae.log_var.shape == (7, 3)


def test_invalid_hyperparameters():
    with pytest.raises(ValueError, match="flat"):
        SparseShiftPrior(2, 2, beta_k=0.5)
    with pytest.raises(ValueError, match="temperature"):
        SparseShiftPrior(2, 2, temperature=0)
    with pytest.raises(ValueError, match="sparsity"):
        SparseShiftPrior(2, 2, sparsity="l2")


def test_numpy_reference_of_two_component_mixture():
    """One hand-computed value: pi N(z; mu, 1) + (1 - pi) N(z; 0, 1)."""
    prior = SparseShiftPrior(1, 1).double()
    with torch.no_grad():
        prior.shift.fill_(2.0)
        prior.mask_logit.fill_(math.log(0.3 / 0.7))
    z = torch.tensor([[0.7]], dtype=torch.float64)
    expected = np.log(0.3 * stats.norm.pdf(0.7, 2.0) + 0.7 * stats.norm.pdf(0.7, 0.0))
    assert prior.log_prob(z, torch.tensor([[0]])).item() == pytest.approx(expected, rel=1e-12)


# --------------------------------------------------------------------------- the shared-mask estimator
def test_shared_kl_is_the_expectation_over_the_masks():
    """rho KL(q || N(mu, 1)) + (1 - rho) KL(q || N(0, 1)) per latent; all 4 configurations for A+B."""
    prior = _sparse_prior(n_latent=3, n_pert=4)
    assert prior.kl_estimator == "shared"
    loc = torch.randn(4, 3, dtype=torch.float64)
    scale = torch.rand(4, 3, dtype=torch.float64) + 0.3
    qz = Normal(loc, scale)
    got = prior.kl(qz, loc, PERT_IDX)
    rho, mu = torch.sigmoid(prior.mask_logit).detach(), prior.shift.detach()
    var = scale.square()

    def single(a, i):
        return rho[a] * gaussian_kl(loc[i], var[i], mu[a]) + (1 - rho[a]) * gaussian_kl(loc[i], var[i])

    torch.testing.assert_close(got[0], gaussian_kl(loc[0], var[0]).sum())
    torch.testing.assert_close(got[1], single(0, 1).sum())
    combo = sum(w * gaussian_kl(loc[3], var[3], m) for w, m in [
        (rho[1] * rho[3], mu[1] + mu[3]), (rho[1] * (1 - rho[3]), mu[1]),
        ((1 - rho[1]) * rho[3], mu[3]), ((1 - rho[1]) * (1 - rho[3]), 0.0)])
    torch.testing.assert_close(got[3], combo.sum())


def _fit_edges(n_cells: int, shift: float, n_steps: int = 600, **kw) -> SparseShiftPrior:
    """Fit one perturbation's shift and mask on fixed latents z ~ N(shift * e_0, 1) (2 latents)."""
    torch.manual_seed(1)
    prior = SparseShiftPrior(2, 1, cell_counts=torch.tensor([float(n_cells)]), **kw)
    z = torch.randn(n_cells, 2)
    z[:, 0] += shift
    qz = Normal(z, torch.full_like(z, 0.05))
    idx = torch.zeros(n_cells, 1, dtype=torch.long)
    opt = torch.optim.Adam(prior.parameters(), lr=0.05)
    for _ in range(n_steps):
        opt.zero_grad()
        (prior.kl(qz, z, idx).sum() + prior.penalty()).backward()
        opt.step()
    return prior


def test_shared_masks_gain_evidence_with_cells_and_nulls_get_no_edge():
    """The same weak shift (0.5 sd) is kept with 200 cells, not with 10; a null gets no edge."""
    many = _fit_edges(200, 0.5)
    few = _fit_edges(10, 0.5)
    null = _fit_edges(200, 0.0)
    assert many.intervention_graph()[0, 0] > 0.9 and many.intervention_graph()[0, 1] < 0.1
    assert few.intervention_graph()[0, 0] < 0.5
    assert (null.intervention_graph() < 0.1).all()
    # the evidence is the log Bayes factor: about n c^2 / 2 minus the slab's cost, far above log K
    evidence = many.edge_evidence().detach()
    assert 5.0 < evidence[0, 0] < 0.5 * 200 * 0.25 and evidence[0, 1] < 0
    assert abs(many.shift[0, 0].item() - 0.5) < 0.15


def test_mixture_estimator_drops_the_same_weak_edge():
    """The per-cell mixture with K = 100 needs ~K nats: the 0.5 sd shift on 200 cells has none."""
    mixture = _fit_edges(200, 0.5, kl_estimator="mixture")
    assert mixture.intervention_graph()[0, 0] < 0.5


def test_min_edge_share_keeps_the_main_target_only():
    torch.manual_seed(0)
    prior = SparseShiftPrior(2, 1, cell_counts=torch.tensor([300.0]))
    z = torch.randn(300, 2) + torch.tensor([2.0, 0.3])  # a residual 0.3 sd beside a 2 sd shift
    qz, idx = Normal(z, torch.full_like(z, 0.05)), torch.zeros(300, 1, dtype=torch.long)
    for share, kept in ((0.2, [True, False]), (0.0, [True, True])):
        p = SparseShiftPrior(2, 1, cell_counts=torch.tensor([300.0]), min_edge_share=share)
        opt = torch.optim.Adam(p.parameters(), lr=0.05)
        for _ in range(600):
            opt.zero_grad()
            (p.kl(qz, z, idx).sum() + p.penalty()).backward()
            opt.step()
        assert ((p.intervention_graph()[0] > 0.5).tolist()) == kept, share
    assert prior.edge_evidence() is not None


def test_cell_counts_follow_new_perturbations():
    prior = SparseShiftPrior(2, 2, cell_counts=torch.tensor([5.0, 7.0]))
    prior.add_perturbations(2)
    assert prior.cell_counts.tolist() == [5.0, 7.0, 0.0, 0.0]
    prior.set_cell_counts(torch.tensor([[2, -1], [3, 2], [3, -1]]), rows=slice(2, None))
    assert prior.cell_counts.tolist() == [5.0, 7.0, 2.0, 2.0]
    with pytest.raises(ValueError):
        SparseShiftPrior(2, 2, cell_counts=torch.ones(3))
    with pytest.raises(ValueError):
        SparseShiftPrior(2, 2, slab="cauchy")
    assert SparseShiftPrior(2, 2, kl_estimator="mixture").edge_evidence() is None


def test_importance_sampling_chunk_fits_the_memory_budget():
    from scperturb_vae.module.vae import IS_ARRAYS_PER_PASS, IS_MEMORY_BUDGET, samples_per_pass

    assert samples_per_pass(1000, 128) == 100  # small screens: the full chunk, as before
    for genes in (8000, 20000, 60000):
        n = samples_per_pass(genes, 128)
        assert 1 <= n < 100
        assert n * 128 * genes * 4 * IS_ARRAYS_PER_PASS <= IS_MEMORY_BUDGET  # within the budget ...
        assert (n + 1) * 128 * genes * 4 * IS_ARRAYS_PER_PASS > IS_MEMORY_BUDGET  # ... and not wastefully small
    assert samples_per_pass(10**7, 128) == 1


def test_counterfactual_transports_the_control_prior_and_composes_combinations():
    z = torch.randn(20000, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    # sVAE+: a single moves by pi * mu; a combination by the sum of its parts' (the union of masks)
    prior = _sparse_prior()
    pi, mu = prior.mask_probability.detach(), prior.shift.detach()
    single = prior.counterfactual(z, torch.tensor([[2, -1]]).expand(len(z), -1))
    torch.testing.assert_close(single - z, (pi[2] * mu[2]).expand_as(z))
    combo = prior.counterfactual(z, torch.tensor([[1, 3]]).expand(len(z), -1))
    torch.testing.assert_close(combo - z, (pi[1] * mu[1] + pi[3] * mu[3]).expand_as(z))
    control = prior.counterfactual(z, torch.tensor([[-1, -1]]).expand(len(z), -1))
    torch.testing.assert_close(control, z)
    # iVAE: N(0, I) samples land on p(z | a) = N(m_a, s_a^2)
    ivae = _ivae_prior()
    moved = ivae.counterfactual(z, torch.tensor([[1, -1]]).expand(len(z), -1)).detach()
    grid = GRID.view(-1, 1, 1).expand(-1, 1, 3)
    density = ivae.log_prob(grid, torch.tensor([[1, -1]])).exp().detach()[:, 0]  # (grid, latent)
    mean = torch.trapezoid(density * GRID[:, None], GRID, dim=0)
    sd = torch.trapezoid(density * (GRID[:, None] - mean) ** 2, GRID, dim=0).sqrt()
    torch.testing.assert_close(moved.mean(0), mean, atol=0.05, rtol=0)
    torch.testing.assert_close(moved.std(0), sd, atol=0.05, rtol=0.02)
    assert (mean.abs() > 0.2).any() or (sd - 1).abs().max() > 0.2  # a prior that moves something
    # VAE: no perturbation parameters, the control prior itself
    assert torch.equal(StandardNormalPrior(3, 4).counterfactual(z, torch.tensor([[0, -1]]).expand(len(z), -1)), z)
