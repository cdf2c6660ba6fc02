"""The injective decoder (scperturb_vae.module.injective): a Brenier map is the gradient of its
convex potential, its hidden weights stay non-negative through training, and the decoder's
Jacobian has full column rank, so no latent direction is lost."""

from __future__ import annotations

import numpy as np
import pytest
import scvi
import torch

import scperturb_vae as sv
from scperturb_vae.data.simulate import simulate_screen
from scperturb_vae.module.injective import ICNN, InjectiveDecoder


def test_the_map_is_the_autograd_gradient_of_the_potential():
    torch.manual_seed(0)
    icnn = ICNN(5, n_hidden=16, n_layers=3).double()
    x = torch.randn(40, 5, dtype=torch.float64, requires_grad=True)
    (auto,) = torch.autograd.grad(icnn(x).sum(), x)
    torch.testing.assert_close(icnn.gradient(x), auto)
    with torch.inference_mode():  # the closed form needs no autograd (prediction runs in inference mode)
        torch.testing.assert_close(icnn.gradient(x.detach()), auto.detach())


def test_the_potential_is_convex_and_the_map_monotone():
    torch.manual_seed(1)
    icnn = ICNN(4, n_hidden=16, n_layers=3).double()
    with torch.no_grad():  # a bent potential: large random weights
        for p in icnn.parameters():
            p.add_(torch.randn_like(p) * 2)
        a, b = torch.randn(500, 4, dtype=torch.float64), torch.randn(500, 4, dtype=torch.float64)
        t = torch.rand(500, 1, dtype=torch.float64)
        mid = icnn(t * a + (1 - t) * b)
        chord = t[:, 0] * icnn(a) + (1 - t[:, 0]) * icnn(b)
        assert (mid <= chord + 1e-9).all()
        # strictly monotone gradient: <g(a) - g(b), a - b> >= alpha |a - b|^2
        inner = ((icnn.gradient(a) - icnn.gradient(b)) * (a - b)).sum(-1)
        assert (inner >= icnn.alpha * (a - b).square().sum(-1) - 1e-9).all()


def _jacobian_singular_values(decoder: InjectiveDecoder, z: torch.Tensor) -> torch.Tensor:
    jac = torch.autograd.functional.jacobian(lambda v: decoder.head(decoder.embed(v[None]))[0], z)
    return torch.linalg.svdvals(jac)


def test_the_decoder_has_full_column_rank_at_random_points():
    torch.manual_seed(2)
    decoder = InjectiveDecoder(6, 80, n_hidden=32).double()
    for z in torch.randn(10, 6, dtype=torch.float64) * 2:
        s = _jacobian_singular_values(decoder, z)
        assert len(s) == 6 and s.min() > 1e-4 * s.max(), s
    # a decoder that drops a latent (here: B forgets it) fails the same check
    with torch.no_grad():
        decoder.B.weight[:, 5] = 0.0
    s = _jacobian_singular_values(decoder, torch.randn(6, dtype=torch.float64))
    assert s.min() < 1e-8 * s.max()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    adata = simulate_screen("paper", seed=0, n_latent=3, n_perturbations=6, n_cells_per_perturbation=60,
                            n_genes=30, n_heldout=0, max_targets=1)
    scvi.settings.seed = 0
    sv.SVAEPlus.setup_anndata(adata)
    model = sv.SVAEPlus(adata, n_latent=3, decoder="injective")
    before = [w.detach().clone() for w in model.module.decoder.g1.hidden_weights()]
    model.train(max_epochs=15, enable_progress_bar=False)
    return adata, model, before, tmp_path_factory.mktemp("injective")


def test_hidden_weights_stay_non_negative_through_training(trained):
    _, model, before, _ = trained
    decoder = model.module.decoder
    after = decoder.g1.hidden_weights() + decoder.g2.hidden_weights()
    assert all((w >= 0).all() for w in after)
    assert any(not torch.equal(a, b) for a, b in zip(decoder.g1.hidden_weights(), before))  # they were trained
    z = torch.randn(5, 3)
    for point in z:
        assert _jacobian_singular_values(decoder, point).min() > 0


def test_an_injective_model_saves_loads_and_decodes_the_same(trained):
    adata, model, _, tmp = trained
    model.save(str(tmp / "model"), overwrite=True)
    loaded = sv.SVAEPlus.load(str(tmp / "model"), adata=adata)
    assert loaded.module.decoder_kind == "injective"
    np.testing.assert_allclose(loaded.get_latent_representation(), model.get_latent_representation(), atol=1e-6)
    ll = model.get_marginal_ll(indices=np.arange(50), n_mc_samples=10)
    assert np.isfinite(ll).all()
    assert np.isfinite(model.predict([model.perturbations[0]], n_cells=20).ate.to_numpy()).all()
