"""The alignment step (scperturb_vae.train.align): varimax finds a hidden rotation, and rotating
the module leaves what it computes unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scperturb_vae.module.priors import SparseShiftPrior
from scperturb_vae.module.vae import PerturbationVAEModule
from scperturb_vae.train.align import rotate_module, sparsest_rotation, varimax


def _random_rotation(k: int, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((k, k)))
    return q


def _sparse_shifts(two_targets: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    sparse = np.zeros((40, 6))
    for row in sparse:
        targets = rng.choice(6, size=2 if rng.random() < two_targets else 1, replace=False)
        row[targets] = rng.choice([-1, 1], size=len(targets)) * rng.uniform(0.5, 3, size=len(targets))
    return sparse + 0.1 * rng.standard_normal(sparse.shape)


def test_the_sparsest_rotation_undoes_a_rotation_of_sparse_shifts():
    sparse = _sparse_shifts(0.3)
    rotated = sparse @ _random_rotation(6, 1)
    back = rotated @ sparsest_rotation(rotated)
    # each recovered column matches one true column up to sign
    corr = np.abs(np.corrcoef(back.T, sparse.T)[:6, 6:])
    assert corr.max(axis=1).min() > 0.97
    assert np.abs(back).sum() < 1.01 * np.abs(sparse).sum() < 0.8 * np.abs(rotated).sum()
    # varimax alone stops off the sparse basis (L1 3.7% above the truth here)
    assert np.abs(rotated @ varimax(rotated)).sum() > np.abs(back).sum()
    assert np.abs(sparse @ sparsest_rotation(sparse)).sum() <= 1.001 * np.abs(sparse).sum()  # already sparse


@pytest.mark.parametrize("decoder", ["standard", "injective"])
def test_rotating_the_module_keeps_the_decoder_and_the_shifted_means(decoder):
    torch.manual_seed(0)
    prior = SparseShiftPrior(3, 2)
    module = PerturbationVAEModule(12, torch.tensor([[-1], [0], [1]]), prior, n_latent=3, n_hidden=16,
                                   decoder=decoder).eval()
    x = torch.poisson(torch.rand(5, 12) * 5) + 1
    labels = torch.tensor([[0], [1], [2], [1], [0]])
    batch = torch.zeros(5, 1, dtype=torch.long)
    inf = module.inference(x, batch, labels)
    z = inf["qz"].loc
    rate = module.generative(z, inf["library"], batch)["px"].mu
    shift = prior.shift.detach().clone()
    r = _random_rotation(3, 2)
    rotate_module(module, r)
    r_t = torch.as_tensor(r, dtype=torch.float32)
    inf2 = module.inference(x, batch, labels)
    torch.testing.assert_close(inf2["qz"].loc, z @ r_t, atol=1e-5, rtol=1e-5)
    rate2 = module.generative(inf2["qz"].loc, inf2["library"], batch)["px"].mu
    torch.testing.assert_close(rate2, rate, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(prior.shift.detach(), shift @ r_t, atol=1e-6, rtol=1e-6)
    assert torch.all(prior.mask_logit == prior.mask_init_logit)
