"""Recovery metrics on cases with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from scperturb_vae.metrics import graph_scores, mean_correlation_coefficient, recovery_summary


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
