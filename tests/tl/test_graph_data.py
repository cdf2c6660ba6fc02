"""Tests of the graph against the data (scperturb_vae.tl.graph_data): the counts alone find the
perturbations with an effect, and the verdicts tell a true graph from an empty and a full one."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from scperturb_vae.data.simulate import graph_from_adata, simulate_screen
from scperturb_vae.errors import InputError
from scperturb_vae.tl.graph_data import effect_pairs, graph_vs_data, perturbation_effects

SMALL = dict(n_latent=5, n_pathways=5, n_perturbations=20, n_genes=300, genes_per_program=30,
             n_control_cells=400, n_cells_per_perturbation=120, n_heldout=0, condition_genes=30,
             n_combinations=0, shift_min=1.0)


@pytest.fixture(scope="module")
def screen():
    adata = simulate_screen("realistic", seed=4, **SMALL)
    effects = perturbation_effects(adata, perturbation_key="perturbation", control_label="control")
    return adata, effects


def test_effects_found_from_the_counts(screen):
    adata, effects = screen
    sim = adata.uns["simulation"]
    nulls = set(sim["null_perturbations"])
    has = effects.set_index("perturbation")["has_effect"]
    effective = [p for p in has.index if p not in nulls]
    assert has[effective].mean() >= 0.9  # shifts of >= 1 sd on 30-gene programs are visible
    assert (~has[list(nulls)]).mean() >= 0.75  # BH at 5% per perturbation: at most 1 of 8 nulls calls a gene
    n_de = effects.set_index("perturbation")["n_de"]
    assert n_de[effective].median() > 5
    e = effects.set_index("perturbation")["e_distance"]
    assert e[effective].median() > 2 * e[list(nulls)].median()


def test_verdicts_tell_true_empty_and_full_graphs_apart(screen):
    adata, effects = screen
    truth = graph_from_adata(adata).astype(float)
    true_counts = graph_vs_data(effects, truth).attrs["counts"]
    empty = graph_vs_data(effects, truth * 0).attrs["counts"]
    full = graph_vs_data(effects, truth * 0 + 1).attrs["counts"]
    n = len(effects)
    assert true_counts["agree"] >= 0.9 * n
    assert empty["effect without edge"] >= 0.5 * n * (1 - SMALL.get("null_fraction", 0.4)) and empty["agree"] < 0.6 * n
    assert full["edge without effect"] >= 0.3 * n and full["agree"] < 0.7 * n


def test_pathway_members_correlate_and_share_latents_under_the_truth(screen):
    adata, effects = screen
    sim = adata.uns["simulation"]
    truth = graph_from_adata(adata).astype(float)
    table = graph_vs_data(effects, truth)
    pairs = effect_pairs(table, truth, min_correlation=0.8)
    pathway = dict(zip(sim["perturbations"], sim["pathway"]))
    assert len(pairs) >= 3
    same = [pathway[a] == pathway[b] for a, b in zip(pairs["a"], pairs["b"])]
    assert np.mean(same) >= 0.8  # strongly correlated pairs are pathway partners
    assert pairs["share_latent"].mean() >= 0.8
    assert not effect_pairs(table, truth * 0, min_correlation=0.8)["share_latent"].any()


def test_covariate_keeps_an_uneven_stimulation_from_reading_as_an_effect():
    adata = simulate_screen("realistic", seed=6, condition_effect=1.5, null_fraction=1.0, cover_latents=False,
                            **{k: v for k, v in SMALL.items() if k != "shift_min"})
    naive = perturbation_effects(adata, perturbation_key="perturbation", control_label="control")
    strat = perturbation_effects(adata, perturbation_key="perturbation", control_label="control",
                                 covariate="condition")
    # every perturbation is null: what the naive test calls (9 of 20, 122 genes) is the stimulation
    assert naive["has_effect"].sum() >= 5 and naive["n_de"].sum() >= 50
    assert strat["has_effect"].sum() <= 3 and strat["n_de"].sum() <= 6  # BH's own false calls
    with pytest.raises(InputError, match="covariate"):
        perturbation_effects(adata, perturbation_key="perturbation", control_label="control", covariate="nope")
    with pytest.raises(InputError, match="control label"):
        perturbation_effects(adata, perturbation_key="perturbation", control_label="NT")
    assert isinstance(strat.attrs["shift_matrix"], pd.DataFrame)
