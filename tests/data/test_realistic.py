"""Tests of the realistic simulation preset (scperturb_vae.data.realistic): the counts show what
the ground truth says, from the counts alone."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from scperturb_vae.data.realistic import REALISTIC_DEFAULTS
from scperturb_vae.data.simulate import graph_from_adata, programs_to_gene_sets, simulate_screen
from scperturb_vae.errors import InputError

SMALL = dict(n_latent=5, n_pathways=7, n_perturbations=20, n_genes=300, genes_per_program=30,
             n_control_cells=400, n_cells_per_perturbation=120, n_heldout=2, condition_genes=30)


@pytest.fixture(scope="module")
def small():
    return simulate_screen("realistic", seed=1, **SMALL)


def test_defaults_are_realistic():
    adata = simulate_screen("realistic", seed=0)
    sim = adata.uns["simulation"]
    depth = np.asarray(adata.X.sum(axis=1)).ravel()
    assert 2000 < np.median(depth) < 4500  # a few thousand UMIs, lognormal
    assert depth.std() / depth.mean() > 0.3
    n_null = len(sim["null_perturbations"])
    assert n_null == round(REALISTIC_DEFAULTS["null_fraction"] * REALISTIC_DEFAULTS["n_perturbations"])
    sizes = sim["cells_per_perturbation"]
    assert sizes.min() >= 20 and sizes.max() > 3 * sizes.min()  # tens to hundreds
    effects = sim["effect_size"][sim["effect_size"] > 0]
    assert effects.min() < 1.0 < 2.0 < effects.max()  # weak to strong
    assert len(sim["combinations"]) >= 1 and all("+" in c for c in sim["combinations"])
    assert 1000 <= adata.n_vars <= 2000
    # every latent is the target of some training perturbation
    graph = graph_from_adata(adata)
    assert graph.loc[[p for p in graph.index if p not in set(sim["heldout_perturbations"])]].any(axis=0).all()


def test_pathway_members_share_targets_and_nulls_have_none(small):
    sim = small.uns["simulation"]
    graph = graph_from_adata(small)
    pathway = dict(zip(sim["perturbations"], sim["pathway"]))
    for p in sim["null_perturbations"]:
        assert pathway[p] == "none" and graph.loc[p].sum() == 0
    groups = {}
    for p, k in pathway.items():
        if k != "none":
            groups.setdefault(k, []).append(tuple(graph.loc[p]))
    assert all(len(set(rows)) == 1 for rows in groups.values())  # one pathway, one target set
    # every latent is moved alone by some pathway (identifiable by sparsity), others share latents
    singles = {np.flatnonzero(rows[0])[0] for rows in groups.values() if sum(rows[0]) == 1}
    assert singles == set(range(SMALL["n_latent"]))
    assert any(sum(rows[0]) == 2 for rows in groups.values())


def test_counts_are_overdispersed_and_programs_move_with_their_latent(small):
    x = small.X.toarray() if sp.issparse(small.X) else small.X
    control = (small.obs["perturbation"] == "control").to_numpy()
    depth = x[control].sum(1, keepdims=True)
    norm = x[control] / depth * np.median(depth)
    mean, var = norm.mean(0), norm.var(0)
    expressed = mean > 1
    assert np.median(var[expressed] / mean[expressed]) > 1.5  # negative binomial, not Poisson
    z = small.obsm["z_true"][control]
    programs = programs_to_gene_sets(small)
    logx = np.log1p(norm)
    for i, genes in enumerate(programs.values()):
        cols = small.var_names.get_indexer(genes)
        weights = small.var["program_weight"].to_numpy()[cols]
        score = logx[:, cols] @ np.sign(weights)
        assert np.corrcoef(score, z[:, i])[0, 1] > 0.5


def test_condition_is_uneven_and_moves_only_its_genes():
    adata = simulate_screen("realistic", seed=2, condition_effect=1.0, **SMALL)
    stim = (adata.obs["condition"] == "stimulated").to_numpy()
    share = adata.obs.assign(s=stim).groupby("perturbation", observed=True)["s"].mean()
    assert share.max() - share.min() > 0.3
    assert adata.var["condition_gene"].sum() == SMALL["condition_genes"]
    assert (adata.var.loc[adata.var["condition_gene"], "program"] == "none").all()


def test_seed_fixes_everything_and_errors_are_one_line():
    a = simulate_screen("realistic", seed=5, **SMALL)
    b = simulate_screen("realistic", seed=5, **SMALL)
    assert (a.X != b.X).nnz == 0 and np.array_equal(a.obsm["z_true"], b.obsm["z_true"])
    with pytest.raises(InputError, match="unknown parameter"):
        simulate_screen("realistic", shift_mean=2.0)
    with pytest.raises(InputError, match="shift_min"):
        simulate_screen("realistic", shift_min=3.0, shift_max=1.0)
    with pytest.raises(InputError, match="n_genes"):
        simulate_screen("realistic", n_genes=100)
