"""sVAE+ with its defaults on a small realistic screen (negative binomial counts, 40% null
perturbations, weak to strong effects, pathway groups): the graph finds the perturbations with
an effect and leaves the nulls alone.  An empty graph fails every bound on recall and F1; a full
graph fails the bounds on precision and on the nulls."""

from __future__ import annotations

import numpy as np
import pytest
import scvi

import scperturb_vae as sv
from scperturb_vae.data.simulate import graph_from_adata, simulate_screen
from scperturb_vae.tl.metrics import graph_scores, mean_correlation_coefficient

SMALL_REALISTIC = dict(n_latent=4, n_pathways=6, n_perturbations=24, n_genes=300, genes_per_program=40,
                       n_control_cells=500, n_cells_per_perturbation=150, n_heldout=0, n_combinations=0,
                       condition_genes=0)


@pytest.fixture(scope="module")
def fitted():
    adata = simulate_screen("realistic", seed=0, **SMALL_REALISTIC)
    scvi.settings.seed = 0
    sv.SVAEPlus.setup_anndata(adata)
    model = sv.SVAEPlus(adata, n_latent=4)  # every other setting: the defaults
    model.train(max_epochs=80, enable_progress_bar=False)
    return adata, model


def test_default_graph_on_a_realistic_screen(fitted):
    adata, model = fitted
    latent = model.get_latent_representation()
    mcc = mean_correlation_coefficient(adata.obsm["z_true"], latent)
    truth = graph_from_adata(adata)
    graph = model.get_intervention_graph()
    scores = graph_scores(truth, graph, mcc.assignment)
    assert mcc.mcc > 0.8
    assert scores["f1"] > 0.75 and scores["precision"] > 0.75
    assert scores["perturbation_recall"] >= 0.85  # perturbations with an effect have an edge
    assert scores["null_specificity"] >= 0.85  # null perturbations have none
    for name, bad in (("empty", graph * 0), ("full", graph * 0 + 1)):
        worse = graph_scores(truth, bad, mcc.assignment)
        assert worse["f1"] < 0.75 or worse["null_specificity"] < 0.85, name


def test_edge_evidence_is_the_log_bayes_factor_of_the_drawn_edges(fitted):
    _, model = fitted
    graph = model.get_intervention_graph()
    evidence = model.get_edge_evidence()
    assert list(evidence.index) == list(graph.index) and list(evidence.columns) == list(graph.columns)
    on = graph.to_numpy() > 0.5
    threshold = np.log(model.module.prior.beta_k)
    assert (evidence.to_numpy()[on] > threshold).all() and (evidence.to_numpy()[~on] < threshold).all()


def test_signed_graph_gets_the_direction_of_every_recovered_edge(fitted):
    adata, model = fitted
    latent = model.get_latent_representation()
    mcc = mean_correlation_coefficient(adata.obsm["z_true"], latent)
    info = adata.uns["simulation"]
    true_shift = np.asarray(info["shifts"], dtype=float)  # perturbations x true latents
    perts = [str(p) for p in info["perturbations"]]
    signed = model.get_signed_graph(latent=latent)
    assert len(signed) == len(model.perturbations) * 4
    assert list(signed["probability"]) == sorted(signed["probability"], reverse=True)
    edges = signed[signed["probability"] > 0.5]
    assert len(edges) > 0
    checked = 0
    for j, col in enumerate(mcc.assignment):
        learned = model.latent_names[col]
        # the learned latent may be the true one flipped: orient it by their correlation
        orientation = np.sign(np.corrcoef(adata.obsm["z_true"][:, j], latent[:, col])[0, 1])
        for _, row in edges[edges["latent"] == learned].iterrows():
            shift = true_shift[perts.index(row["perturbation"]), j]
            if abs(shift) > 0:
                assert np.sign(row["shift_sd"]) == orientation * np.sign(shift), row.to_dict()
                assert np.sign(row["prior_shift"]) == np.sign(row["shift_sd"]), row.to_dict()
                checked += 1
    assert checked >= 0.8 * len(edges)  # nearly every drawn edge is a true one and was checked
    counts = adata.obs["perturbation"].astype(str).value_counts()
    first = edges.iloc[0]
    assert first["n_cells"] == counts[first["perturbation"]]
    assert np.isfinite(edges["evidence"]).all()


def _observed_means(adata, label: str, genes) -> np.ndarray:
    counts = adata[adata.obs["perturbation"].astype(str) == label].X
    counts = counts.toarray() if hasattr(counts, "toarray") else np.asarray(counts)
    return (counts / counts.sum(1, keepdims=True) * 1e4).mean(0)


def test_predicted_effects_follow_the_observed_ones(fitted):
    adata, model = fitted
    truth = graph_from_adata(adata)
    effective = [p for p in truth.index if truth.loc[p].any()]
    null = [p for p in truth.index if not truth.loc[p].any()]
    pred = model.predict(effective + null, n_cells=400)
    assert list(pred.means.index) == ["control", *effective, *null]
    assert list(pred.means.columns) == list(adata.var_names)
    assert np.allclose(pred.means.sum(1), 1e4, rtol=1e-4)  # normalised means
    control = _observed_means(adata, "control", adata.var_names)
    corr = []
    for p in effective:
        observed = _observed_means(adata, p, adata.var_names) - control
        top = np.argsort(-np.abs(observed))[:50]  # the genes the perturbation moves most
        corr.append(np.corrcoef(pred.ate.loc[p].to_numpy()[top], observed[top])[0, 1])
    # the control baseline predicts no effect (correlation undefined, error = the effect itself)
    assert np.median(corr) > 0.6, corr
    size = pred.ate.abs().sum(1)
    assert size[null].median() < 0.5 * size[effective].median()  # nulls predicted near the control


def test_combination_prediction_adds_the_shifts_and_the_vae_predicts_control(fitted):
    adata, model = fitted
    truth = graph_from_adata(adata)
    a, b = [p for p in truth.index if truth.loc[p].any()][:2]
    pred = model.predict([a, b, f"{a}+{b}"], n_cells=300, sample_counts=True, seed=1)
    additive = pred.ate.loc[a] + pred.ate.loc[b]
    assert np.corrcoef(pred.ate.loc[f"{a}+{b}"], additive)[0, 1] > 0.8
    cells = pred.cells
    assert cells.shape == (4 * 300, adata.n_vars) and set(cells.obs["target"]) == {"control", a, b, f"{a}+{b}"}
    again = model.predict([a, b, f"{a}+{b}"], n_cells=300, sample_counts=True, seed=1).cells
    assert (cells.X != again.X).nnz == 0  # a seed fixes the sampled counts
    with pytest.raises(sv.InputError, match="not trained"):
        model.predict(["NOT_A_GENE"])

    scvi.settings.seed = 0
    vae_data = adata.copy()
    sv.VAE.setup_anndata(vae_data)
    vae = sv.VAE(vae_data, n_latent=4)
    vae.train(max_epochs=2, enable_progress_bar=False)
    assert np.abs(vae.predict([a]).ate.to_numpy()).max() < 1e-6  # no perturbation parameters
