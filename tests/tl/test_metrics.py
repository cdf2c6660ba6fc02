"""Recovery metrics on cases with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from scperturb_vae.tl.metrics import graph_scores, mean_correlation_coefficient, recovery_summary


def _truth(seed=0, n=2000, k=4):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, k))
    graph = pd.DataFrame(rng.random((6, k)) < 0.4, index=[f"P{i}" for i in range(6)]).astype(int)
    return z, graph


@pytest.mark.parametrize("method", ["pearson", "spearman"])
def test_permuted_rescaled_truth_gives_one(method):
    z, graph = _truth()
    perm = np.array([2, 0, 3, 1])
    learned = z[:, perm] * np.array([3.0, -0.5, 2.0, -7.0]) + 1.0
    res = mean_correlation_coefficient(z, learned, method)
    assert res.mcc == pytest.approx(1.0, abs=1e-9)
    # true latent j is learned column assignment[j]
    np.testing.assert_array_equal(perm[res.assignment], np.arange(4))
    learned_graph = pd.DataFrame(np.zeros_like(graph.to_numpy(), dtype=float), index=graph.index)
    for j in range(4):
        learned_graph.iloc[:, res.assignment[j]] = graph.iloc[:, j] * 0.9
    scores = graph_scores(graph, learned_graph, res.assignment)
    assert scores["f1"] == 1.0 and scores["precision"] == 1.0 and scores["recall"] == 1.0


def test_monotone_transform_is_one_for_spearman_only():
    z, _ = _truth()
    learned = np.exp(2 * z)
    assert mean_correlation_coefficient(z, learned, "spearman").mcc == pytest.approx(1.0)
    assert mean_correlation_coefficient(z, learned, "pearson").mcc < 0.9


def test_independent_noise_gives_mcc_near_zero():
    z, _ = _truth(n=20000)
    noise = np.random.default_rng(5).normal(size=z.shape)
    assert mean_correlation_coefficient(z, noise).mcc < 0.03


def test_hand_computed_graph_scores():
    truth = pd.DataFrame([[1, 0], [0, 1], [1, 1]], index=["a", "b", "c"])
    learned = pd.DataFrame([[0.9, 0.2, 0.7], [0.1, 0.3, 0.0], [0.6, 0.8, 0.1]], index=["a", "b", "c"])
    # true 0 -> learned 0, true 1 -> learned 1; learned 2 unmatched (its edge a counts as FP)
    scores = graph_scores(truth, learned, np.array([0, 1]))
    assert (scores["tp"], scores["fp"], scores["fn"]) == (3, 1, 1)
    assert scores["precision"] == pytest.approx(0.75) and scores["recall"] == pytest.approx(0.75)
    assert scores["f1"] == pytest.approx(0.75)


def test_recovery_summary_keys():
    z, graph = _truth()
    out = recovery_summary(z, z, graph, graph.astype(float))
    assert out["mcc_pearson"] == pytest.approx(1.0) and out["graph_f1"] == 1.0


# --------------------------------------------------------------------------- added metrics
from scperturb_vae.tl.metrics import (
    active_units,
    average_precision,
    discretize,
    linear_r2,
    mutual_information,
    mutual_information_gap,
    posterior_collapse,
    roc_auc,
)


def _learned_graph_like(graph: pd.DataFrame, assignment, m: int, on=0.9, off=0.05) -> pd.DataFrame:
    """A learned graph equal to the truth (scores ``on`` / ``off``) in the columns ``assignment``."""
    values = np.full((graph.shape[0], m), off)
    for j, col in enumerate(assignment):
        values[:, col] = np.where(graph.iloc[:, j].to_numpy() == 1, on, off)
    return pd.DataFrame(values, index=graph.index)


def test_permuted_rescaled_sign_flipped_truth_gives_one_everywhere():
    z, graph = _truth(n=3000)
    perm = np.array([2, 0, 3, 1])
    # an extra, unmatched learned latent that varies (noise) and has no edges
    noise = np.random.default_rng(1).normal(size=(len(z), 1))
    learned = np.hstack([z[:, perm] * np.array([3.0, -0.5, 2.0, -7.0]) + 1.0, noise])
    out = recovery_summary(z, learned, graph, _learned_graph_like(graph, [1, 3, 0, 2], 5))
    assert out["mcc_pearson"] == pytest.approx(1.0, abs=1e-9)
    assert out["mcc_spearman"] == pytest.approx(1.0, abs=1e-9)
    assert out["r2"] == pytest.approx(1.0, abs=1e-9)
    assert out["graph_f1"] == 1.0 and out["graph_auroc"] == 1.0 and out["graph_average_precision"] == 1.0
    assert out["n_matched"] == 4
    # each factor sits in one latent: every gap is H - (a small plug-in bias)
    assert out["mig"] > 0.95


def test_linear_r2_invariant_to_invertible_linear_maps():
    z, _ = _truth(n=3000)
    rotation = np.linalg.qr(np.random.default_rng(2).normal(size=(4, 4)))[0] @ np.diag([1.0, 2.0, 0.3, 5.0])
    res = linear_r2(z, z @ rotation + 4.0)
    assert res.r2 == pytest.approx(1.0, abs=1e-9)
    np.testing.assert_allclose(res.per_latent, 1.0, atol=1e-9)
    # ... MCC is not (the latents are mixed)
    assert mean_correlation_coefficient(z, z @ rotation).mcc < 0.95


def test_linear_r2_known_answers():
    rng = np.random.default_rng(3)
    n = 4000
    x = rng.normal(size=(n, 1))
    t = np.hstack([x + rng.normal(size=(n, 1)), 2 * x + 0.5 * rng.normal(size=(n, 1))])
    res = linear_r2(t, x)
    # one predictor: R^2 = Pearson r^2 exactly
    for j in range(2):
        assert res.per_latent[j] == pytest.approx(stats_pearson(t[:, j], x[:, 0]) ** 2, abs=1e-12)
    # population values: 1 / (1 + 1) and 4 / (4 + 0.25)
    assert res.per_latent[0] == pytest.approx(0.5, abs=0.03)
    assert res.per_latent[1] == pytest.approx(4 / 4.25, abs=0.01)
    assert res.r2 == pytest.approx(res.per_latent.mean())


def stats_pearson(a, b) -> float:
    from scipy.stats import pearsonr

    return float(pearsonr(a, b)[0])


def test_linear_r2_matches_sklearn_when_available():
    lm = pytest.importorskip("sklearn.linear_model")
    rng = np.random.default_rng(4)
    learned = rng.normal(size=(500, 3))
    true = np.tanh(learned @ rng.normal(size=(3, 2))) + 0.3 * rng.normal(size=(500, 2))
    res = linear_r2(true, learned)
    for j in range(2):
        expected = lm.LinearRegression().fit(learned, true[:, j]).score(learned, true[:, j])
        assert res.per_latent[j] == pytest.approx(expected, abs=1e-10)


def test_independent_noise_gives_all_scores_near_zero():
    # n = 5000: each |correlation| has sd 1/sqrt(n) = 0.014, and the matching takes 4 of
    # 16 such values, all below 4 sd = 0.057 with probability > 0.999; in-sample R^2 of
    # noise on m = 4 predictors is about m / n = 0.0008 (sd ~ 0.0006); the MIG gap is a
    # difference of plug-in biases (~0.036 nats each) over an entropy of ~2.6 nats
    z, _ = _truth(n=5000)
    noise = np.random.default_rng(5).normal(size=z.shape)
    assert mean_correlation_coefficient(z, noise).mcc < 0.057
    assert mean_correlation_coefficient(z, noise, "spearman").mcc < 0.057
    assert linear_r2(z, noise).r2 < 0.005
    assert mutual_information_gap(z, noise).mig < 0.02


def test_graph_scores_hand_computed_with_unmatched_latent():
    truth = pd.DataFrame([[1, 0], [0, 1], [1, 1]], index=["a", "b", "c"])
    learned = pd.DataFrame([[0.9, 0.2, 0.7], [0.1, 0.3, 0.0], [0.6, 0.8, 0.1]], index=["a", "b", "c"])
    s = graph_scores(truth, learned, np.array([0, 1]))
    # positives 0.9, 0.6 (col 0), 0.3, 0.8 (col 1); negatives 0.1, 0.2 and the unmatched
    # column 2: 0.7, 0.0, 0.1.  Pairs won: 5 + 4 + 4 + 5 = 18 of 20
    assert s["auroc"] == pytest.approx(18 / 20)
    # ranking 0.9 P, 0.8 P, 0.7 N, 0.6 P, 0.3 P: precisions 1, 1, 3/4, 4/5 at the positives
    assert s["average_precision"] == pytest.approx((1 + 1 + 0.75 + 0.8) / 4)
    # the unmatched column is left out: the 0.7 false positive disappears
    both = graph_scores(truth, learned.iloc[:, :2], np.array([0, 1]))
    assert (both["tp"], both["fp"], both["fn"]) == (3, 0, 1)
    assert both["precision"] == 1.0 and both["recall"] == pytest.approx(0.75)
    assert both["f1"] == pytest.approx(2 * 0.75 / 1.75)
    # rows are matched by name, in any order, and rows missing from the learned graph are skipped
    shuffled = learned.iloc[[2, 0], :]
    part = graph_scores(truth, shuffled, np.array([0, 1]))
    assert (part["tp"], part["fp"], part["fn"], part["n_perturbations"]) == (3, 1, 0, 2)


def test_graph_unmatched_true_latent_counts_as_missed():
    truth = pd.DataFrame([[1, 0], [1, 1]], index=["a", "b"])
    learned = pd.DataFrame([[0.9], [0.8]], index=["a", "b"])
    s = graph_scores(truth, learned, np.array([0, -1]))
    assert (s["tp"], s["fp"], s["fn"]) == (2, 0, 1)
    # scores: positives 0.9, 0.8, 0 (true latent 1 unmatched); negative 0: 2.5 of 3 pairs
    assert s["auroc"] == pytest.approx(2.5 / 3)


def test_auroc_and_average_precision_match_sklearn():
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(6)
    for _ in range(20):
        n = int(rng.integers(5, 60))
        labels = rng.random(n) < rng.uniform(0.1, 0.9)
        if labels.all() or not labels.any():
            labels[0] = not labels[0]
        # coarse scores: many ties
        scores = np.round(rng.random(n) + 0.5 * labels, 1)
        assert roc_auc(labels, scores) == pytest.approx(skm.roc_auc_score(labels, scores), abs=1e-12)
        assert average_precision(labels, scores) == pytest.approx(
            skm.average_precision_score(labels, scores), abs=1e-12)
    assert np.isnan(roc_auc([1, 1], [0.2, 0.3])) and np.isnan(average_precision([0, 0], [0.2, 0.3]))
    assert np.isnan(roc_auc([0, 0], [0.2, 0.3])) and average_precision([1, 1], [0.2, 0.3]) == 1.0
    assert np.isnan(roc_auc([], [])) and np.isnan(average_precision([], []))
    assert np.isnan(roc_auc([1, 0, 1], [0.1, np.nan, 0.3]))
    # infinite scores are ranked; a NaN score is below every other (AP: each NaN its own threshold)
    assert roc_auc([1, 0, 1], [np.inf, 0.5, -np.inf]) == 0.5
    assert average_precision([1, 0, 1], [0.1, np.nan, 0.3]) == 1.0
    assert average_precision([0, 1, 0, 1], [np.nan, np.nan, 0.2, -np.inf]) == pytest.approx((1 / 2 + 2 / 4) / 2)


def test_recovery_summary_is_strict_json_for_a_graph_without_non_edges():
    z, _ = _truth()
    full = pd.DataFrame(np.ones((3, 4), dtype=int), index=["a", "b", "c"])
    out = recovery_summary(z, z, full, full.astype(float))
    assert out["graph_auroc"] is None and out["graph_average_precision"] == 1.0
    import json

    json.dumps(out, allow_nan=False)


def test_discretize_equal_width_on_central_range():
    values = np.r_[np.linspace(0, 1, 998), -100.0, 100.0]  # two outliers in 1000 values
    codes = discretize(values, n_bins=10)[:, 0]
    assert codes.min() == 0 and codes.max() == 9
    assert codes[-2] == 0 and codes[-1] == 9  # outliers clipped into the end bins
    # the bulk is spread evenly over all bins, not squeezed into one by the outliers
    counts = np.bincount(codes[:998], minlength=10)
    assert counts.min() >= 90 and counts.max() <= 110
    assert (discretize(np.full(7, 3.0))[:, 0] == 0).all()


def _grid_factors(levels=4, repeat=50):
    """Two factors taking ``levels`` values each, every combination equally often (exactly independent)."""
    a, b = np.meshgrid(np.arange(levels), np.arange(levels), indexing="ij")
    v = np.stack([a.ravel(), b.ravel()], 1).astype(float)
    return np.repeat(v, repeat, axis=0)


def test_mig_hand_computed_on_discrete_factors():
    v = _grid_factors()
    # H(v_k) = log 4; a copy of a factor carries log 4 nats about it and 0 about the other
    res = mutual_information_gap(v, v[:, ::-1].copy())
    np.testing.assert_allclose(res.entropy, np.log(4), atol=1e-12)
    np.testing.assert_allclose(res.mutual_info, [[0, np.log(4)], [np.log(4), 0]], atol=1e-12)
    assert res.mig == pytest.approx(1.0)
    # learned: a copy of factor 0 and a coarsened copy of it (2 levels: log 2 nats);
    # factor 0's gap is (log 4 - log 2) / log 4 = 1/2, factor 1 is in no latent: gap 0
    learned = np.stack([v[:, 0], v[:, 0] // 2], 1)
    res = mutual_information_gap(v, learned)
    np.testing.assert_allclose(res.gaps, [0.5, 0.0], atol=1e-12)
    assert res.mig == pytest.approx(0.25)


def test_mig_with_one_copied_continuous_factor_matches_sklearn_mutual_info():
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(7)
    z = rng.normal(size=(5000, 2))
    learned = np.hstack([z[:, :1] * 3.0, rng.normal(size=(5000, 2))])  # latent 0 = factor 0
    res = mutual_information_gap(z, learned)
    tc, lc = discretize(z), discretize(learned)
    # a rescaled copy has the same bins: I(v_0; z_0) = H(v_0)
    assert res.mutual_info[0, 0] == pytest.approx(res.entropy[0], abs=1e-12)
    mi_second = max(skm.mutual_info_score(tc[:, 0], lc[:, j]) for j in (1, 2))
    assert res.gaps[0] == pytest.approx((res.entropy[0] - mi_second) / res.entropy[0], abs=1e-10)
    for j in range(3):
        assert res.mutual_info[1, j] == pytest.approx(skm.mutual_info_score(tc[:, 1], lc[:, j]), abs=1e-10)
    assert res.gaps[0] > 0.97 and res.gaps[1] < 0.02
    assert res.mig == pytest.approx(res.gaps.mean())


def test_active_units_on_constructed_means():
    rng = np.random.default_rng(8)
    mean = np.column_stack([
        rng.normal(0, 1, 1000),      # active
        np.full(1000, 0.3),          # collapsed: constant
        rng.normal(0, 0.05, 1000),   # variance 0.0025 < 0.01: inactive
        rng.normal(0, 0.2, 1000),    # variance 0.04: active
    ])
    units = active_units(mean)
    assert units.count == 2
    np.testing.assert_array_equal(units.mask, [True, False, False, True])
    np.testing.assert_allclose(units.variance, mean.var(0))
    assert active_units(mean, threshold=0.001).count == 3


def test_mutual_information_known_answers():
    rng = np.random.default_rng(9)
    n = 1200
    # point-like posteriors at 4 well separated places, 300 cells each: I = log 4
    centers = np.array([[0, 0], [10, 0], [0, 10], [10, 10]], float)
    mu = np.repeat(centers, n // 4, axis=0)
    var = np.full_like(mu, 1e-4)
    assert mutual_information(mu, var, seed=0) == pytest.approx(np.log(4), abs=1e-6)
    # distinct point-like posteriors: I = log N, the largest possible value
    mu_distinct = rng.normal(size=(n, 2)) * 10
    assert mutual_information(mu_distinct, np.full_like(mu_distinct, 1e-8)) == pytest.approx(np.log(n), abs=0.01)
    # every cell has the same posterior: I = 0 (exactly, samples cancel)
    same = np.tile([[0.5, -1.0]], (n, 1))
    assert mutual_information(same, np.tile([[0.3, 2.0]], (n, 1)), n_samples=2) == pytest.approx(0.0, abs=1e-9)
    # Gaussian: mu ~ N(0, 1), q(z|x) = N(mu, s^2): I = sum_d 0.5 log((1 + s^2) / s^2)
    n = 2000
    mu = rng.normal(size=(n, 2))
    s2 = np.array([1.0, 0.25])
    expected = 0.5 * np.log((1 + s2) / s2).sum()
    # chunked computation (small chunks) gives the same answer as one block
    small = mutual_information(mu, np.tile(s2, (n, 1)), n_samples=2, seed=1, sample_chunk=100, cell_chunk=700)
    one = mutual_information(mu, np.tile(s2, (n, 1)), n_samples=2, seed=1, sample_chunk=20000, cell_chunk=20000)
    assert small == pytest.approx(one, abs=1e-9)
    assert small == pytest.approx(expected, abs=0.04)


@pytest.fixture(scope="module")
def tiny_models():
    """A VAE and an sVAE+ trained for 3 epochs on a tiny simulated screen."""
    import scvi

    from scperturb_vae.data.simulate import simulate_screen
    from scperturb_vae.model.models import VAE, SVAEPlus

    adata = simulate_screen("paper", n_latent=3, n_perturbations=6, n_cells_per_perturbation=50, n_genes=30,
                            n_heldout=0, max_targets=2, seed=0)
    out = {}
    for name, cls in (("vae", VAE), ("svae+", SVAEPlus)):
        scvi.settings.seed = 0
        data = adata.copy()
        cls.setup_anndata(data, perturbation_key="perturbation", control_label="control")
        model = cls(data, n_latent=3)
        model.train(max_epochs=3, enable_progress_bar=False, batch_size=64)
        out[name] = model
    return out


@pytest.mark.parametrize("name", ["vae", "svae+"])
def test_posterior_collapse_on_tiny_models(tiny_models, name):
    import json

    import torch

    from scperturb_vae.module.priors import gaussian_kl

    model = tiny_models[name]
    diag = posterior_collapse(model, n_cells=200, seed=0)
    json.dumps(diag, allow_nan=False)
    assert diag["n_cells"] == 200
    assert len(diag["active_mask"]) == len(diag["kl_per_latent"]) == len(diag["latent_variance"]) == 3
    assert diag["active_units"] == sum(diag["active_mask"])
    assert all(np.isfinite(diag["kl_per_latent"]))
    assert diag["kl_total"] == pytest.approx(sum(diag["kl_per_latent"]))
    assert 0 <= diag["mutual_information"] <= np.log(200) + 0.05
    assert min(diag["kl_per_latent"]) > -0.1  # a KL: >= 0 up to Monte Carlo noise
    # the same seed gives the same numbers, and the model is left in eval mode
    assert posterior_collapse(model, n_cells=200, seed=0) == diag
    assert not model.module.training
    # the means are the model's posterior means on the same cells
    idx = np.sort(np.random.default_rng(0).choice(model.adata.n_obs, size=200, replace=False))
    latent = model.get_latent_representation(indices=idx)
    np.testing.assert_allclose(diag["latent_variance"], latent.var(0), rtol=1e-4, atol=1e-7)
    if name == "vae":
        # N(0, I) prior: the Monte Carlo KL matches the closed form
        loader = model._make_data_loader(adata=model.adata, indices=idx, batch_size=256)
        closed = np.zeros(3)
        with torch.inference_mode():
            for tensors in loader:
                qz = model.module.inference(**model.module._get_inference_input(tensors))["qz"]
                closed += gaussian_kl(qz.loc, qz.scale.square()).sum(0).double().numpy()
        closed /= 200
        np.testing.assert_allclose(diag["kl_per_latent"], closed, atol=0.05 + 0.05 * closed.max())
        # on all cells (fewer than n_cells): every cell is used
        assert posterior_collapse(model, n_cells=10_000)["n_cells"] == model.adata.n_obs


def test_matched_edges_name_edges_by_the_truth_and_jaccard_compares_them():
    from scperturb_vae.tl.stability import edge_jaccard, matched_edges

    truth = pd.DataFrame([[1, 0], [0, 1], [0, 0]], index=["A", "B", "C"], columns=["t0", "t1"])
    run1 = pd.DataFrame([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.0, 0.0, 0.7]], index=["A", "B", "C"],
                        columns=["l0", "l1", "l2"])
    # the second run's latents are permuted; its A edge sits on an unmatched latent
    run2 = pd.DataFrame([[0.0, 0.1, 0.9], [0.8, 0.0, 0.0], [0.0, 0.0, 0.0]], index=["A", "B", "C"],
                        columns=["m0", "m1", "m2"])
    e1 = matched_edges(truth, run1, {"t0": "l0", "t1": "l1"})
    e2 = matched_edges(truth, run2, {"t0": "m1", "t1": "m0"})
    assert e1 == {("A", "t0"), ("B", "t1"), ("C", "unmatched:l2")}
    assert e2 == {("A", "unmatched:m2"), ("B", "t1")}
    assert edge_jaccard([e1, e2]) == pytest.approx([0.25, 0.25])
    assert edge_jaccard([e1, e1, e2]) == pytest.approx([(1 + 0.25) / 2, (1 + 0.25) / 2, 0.25])
    assert edge_jaccard([set(), set()]) == pytest.approx([1.0, 1.0])  # two empty graphs agree
    assert np.isnan(edge_jaccard([e1])).all()
