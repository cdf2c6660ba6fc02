"""The four models on small simulated screens: smoke tests, recovery, save / load, combinations."""

from __future__ import annotations

import numpy as np
import pytest
import scvi
import torch
from scipy.stats import mannwhitneyu

import scperturb_vae as sv
from scperturb_vae.data.simulate import graph_from_adata, simulate_screen
from scperturb_vae.model.base import default_kl_warmup
from scperturb_vae.tl.metrics import mean_correlation_coefficient

FAST = {"enable_progress_bar": False}


def _tiny(seed=0):
    return simulate_screen(
        "paper", n_latent=3, n_perturbations=6, n_cells_per_perturbation=30, n_genes=30,
        n_heldout=1, max_targets=2, seed=seed,
    )


@pytest.fixture(scope="module")
def small_screen():
    """12 perturbations x 150 cells, 4 latents, 40 genes: learnable in ~150 short epochs."""
    return simulate_screen(
        "paper", n_latent=4, n_perturbations=12, n_cells_per_perturbation=150, n_genes=40,
        n_heldout=0, max_targets=2, seed=0,
    )


def _auroc(truth: np.ndarray, score: np.ndarray) -> float:
    pos, neg = score[truth.astype(bool)], score[~truth.astype(bool)]
    return mannwhitneyu(pos, neg).statistic / (len(pos) * len(neg))


@pytest.mark.parametrize("likelihood", ["nb", "zinb", "poisson"])
@pytest.mark.parametrize("name", ["svae+", "svae", "ivae", "vae"])
def test_one_epoch_every_model_and_likelihood(name, likelihood):
    adata = _tiny()
    scvi.settings.seed = 0
    cls = sv.MODELS[name]
    cls.setup_anndata(adata)
    model = cls(adata, n_latent=3, likelihood=likelihood)
    model.train(max_epochs=1, **FAST)
    assert len(model.history["elbo_train"]) == 1
    assert np.isfinite(model.history["elbo_train"].to_numpy(dtype=float)).all()
    torch.manual_seed(0)
    ll_many = model.get_marginal_ll(n_mc_samples=200, n_mc_samples_per_pass=50)
    torch.manual_seed(0)
    ll_one = model.get_marginal_ll(n_mc_samples=1)
    assert ll_many.shape == (adata.n_obs,) and np.isfinite(ll_many).all()
    # the importance-weighted bound tightens with samples: a prior / likelihood mismatch would not
    assert ll_many.mean() > ll_one.mean()
    graph = model.get_intervention_graph()
    assert list(graph.index) == [f"P{i:03d}" for i in range(6)]
    assert list(graph.columns) == model.latent_names
    assert ((graph >= 0) & (graph <= 1)).all().all()
    assert model.get_latent_representation().shape == (adata.n_obs, 3)


def _train(name, adata, epochs=150, **kw):
    scvi.settings.seed = 0
    cls = sv.MODELS[name]
    cls.setup_anndata(adata)
    model = cls(adata, n_latent=4, **kw)
    model.train(max_epochs=epochs, **FAST)
    return model


def _recovery(model, adata):
    """MCC, the learned graph with columns matched to the true latents, and the true graph."""
    res = mean_correlation_coefficient(adata.obsm["z_true"], model.get_latent_representation())
    graph = model.get_intervention_graph().to_numpy()[:, res.assignment]
    truth = graph_from_adata(adata).loc[model.perturbations].to_numpy()
    return res.mcc, graph, truth


def test_svae_plus_recovers_a_sparse_graph(small_screen):
    adata = small_screen.copy()
    mcc, graph, truth = _recovery(_train("svae+", adata), adata)
    assert mcc > 0.75
    # true edges get higher mask probabilities than absent ones (0.5 = no information)
    assert _auroc(truth, graph) > 0.8
    # and the Beta(1, K) prior makes the graph sparse (a flat prior leaves every pi near 1)
    assert (graph < 0.05).mean() > 0.3


def test_ivae_prior_learns_perturbation_effects(small_screen):
    adata = small_screen.copy()
    model = _train("ivae", adata)
    mcc, graph, truth = _recovery(model, adata)
    assert mcc > 0.7
    assert _auroc(truth, graph) > 0.75
    assert model.module.prior.log_var.detach().abs().max() > 0.1  # variances were modulated


def test_save_load_round_trip(tmp_path):
    adata = _tiny()
    scvi.settings.seed = 0
    sv.SVAEPlus.setup_anndata(adata)
    model = sv.SVAEPlus(adata, n_latent=3, beta_k=20.0)
    model.train(max_epochs=3, **FAST)
    model.save(tmp_path / "m", save_anndata=False)
    loaded = sv.SVAEPlus.load(str(tmp_path / "m"), adata=_tiny())
    np.testing.assert_allclose(loaded.get_latent_representation(), model.get_latent_representation(), atol=1e-6)
    np.testing.assert_allclose(loaded.get_intervention_graph(), model.get_intervention_graph())
    torch.manual_seed(3)
    a = model.get_marginal_ll(n_mc_samples=50)
    torch.manual_seed(3)
    b = loaded.get_marginal_ll(n_mc_samples=50)
    np.testing.assert_allclose(a, b, rtol=1e-5)
    assert loaded.module.prior.beta_k == 20.0
    assert loaded.control_label == "control" and loaded.perturbation_key == "perturbation"


def test_combinations_add_shifts_and_share_parameters():
    adata = _tiny()
    labels = adata.obs["perturbation"].astype(str).to_numpy().copy()
    labels[labels == "P001"] = "P000+P002"
    adata.obs["perturbation"] = labels
    scvi.settings.seed = 0
    sv.SVAEPlus.setup_anndata(adata)
    model = sv.SVAEPlus(adata, n_latent=3)
    assert model.perturbations == ["P000", "P002", "P003", "P004", "P005"]
    model.train(max_epochs=1, **FAST)
    table = model.module.label_perturbations
    codes = list(model.get_state_registry("labels").categorical_mapping)
    combo = table[codes.index("P000+P002")].tolist()
    assert sorted(combo) == [0, 1]
    assert table[codes.index("control")].tolist() == [-1, -1]
    assert np.isfinite(model.get_marginal_ll(n_mc_samples=20)).all()


def test_setup_detects_key_and_control_and_leaves_data_alone():
    adata = _tiny()
    adata.obs["perturbation"] = adata.obs["perturbation"].astype(str).replace({"control": "non-targeting"})
    before_x = adata.X.copy()
    before_cols = list(adata.obs.columns)
    sv.IVAE.setup_anndata(adata)
    model = sv.IVAE(adata, n_latent=2)
    assert model.control_label == "non-targeting" and model.perturbation_key == "perturbation"
    assert (adata.X != before_x).nnz == 0
    assert [c for c in adata.obs.columns if not c.startswith("_scvi")] == before_cols


def test_vae_graph_comes_from_the_data(small_screen):
    adata = small_screen.copy()
    _, graph, truth = _recovery(_train("vae", adata, epochs=60), adata)
    assert ((graph >= 0) & (graph <= 1)).all()
    assert _auroc(truth, graph) > 0.75


def test_tcvae_and_beta_vae_options():
    adata = _tiny()
    sv.VAE.setup_anndata(adata)
    tc = sv.VAE(adata, n_latent=3, tc_beta=6.0)
    assert tc.module.tc_beta == 6.0 and "TCVAE" in tc._model_summary_string
    tc.train(max_epochs=1, **FAST)
    assert np.isfinite(tc.history["elbo_train"].to_numpy(dtype=float)).all()
    assert sv.VAE(adata, n_latent=3, beta=4.0).module.beta == 4.0


@pytest.mark.parametrize("epochs, expected", [(1, 1), (10, 2), (100, 25), (400, 50)])
def test_kl_warmup_suits_short_runs(epochs, expected):
    assert default_kl_warmup(epochs) == expected


def test_batch_norm_statistics_are_recomputed_for_the_final_weights():
    adata = _tiny()
    scvi.settings.seed = 0
    sv.SVAEPlus.setup_anndata(adata)
    model = sv.SVAEPlus(adata, n_latent=3)
    model.train(max_epochs=3, **FAST)
    layer = model.module.z_encoder.encoder.fc_layers[0]
    linear, norm = layer[0], layer[1]
    assert isinstance(norm, torch.nn.BatchNorm1d)
    x = torch.as_tensor(adata.X[model.train_indices].toarray())
    with torch.no_grad():
        h = linear(torch.log1p(x))
    # the exact mean over the training cells, not a lagging running average (momentum 0.01)
    torch.testing.assert_close(norm.running_mean, h.mean(0), atol=1e-4, rtol=1e-4)
    assert norm.momentum == 0.01 and not model.module.training


def test_latent_representation_equals_scvi_tools_own():
    """The preallocating override returns scvi-tools' numbers, for all cells and for indices."""
    from scvi.model.base import VAEMixin

    adata = _tiny()
    scvi.settings.seed = 0
    sv.SVAEPlus.setup_anndata(adata)
    model = sv.SVAEPlus(adata, n_latent=3)
    model.train(max_epochs=1, **FAST)
    ours = model.get_latent_representation()
    np.testing.assert_array_equal(ours, VAEMixin.get_latent_representation(model))
    # minibatches that do not divide the cells: the same up to the kernels' summation order
    np.testing.assert_allclose(model.get_latent_representation(batch_size=7), ours, atol=1e-5)
    idx = [11, 2, 40, 3]
    np.testing.assert_array_equal(model.get_latent_representation(indices=idx),
                                  VAEMixin.get_latent_representation(model, indices=idx))
    assert ours.dtype == np.float32 and ours.shape == (adata.n_obs, 3)
