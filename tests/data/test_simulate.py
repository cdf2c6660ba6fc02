"""Tests of the simulated Perturb-seq screens (scperturb_vae.data.simulate)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy.stats import spearmanr

from scperturb_vae.data.genesets import read_gene_sets, write_gmt
from scperturb_vae.data.simulate import (
    PRESETS,
    graph_from_adata,
    programs_to_gene_sets,
    simulate_screen,
)
from scperturb_vae.errors import InputError

SMALL_PAPER = dict(n_perturbations=12, n_cells_per_perturbation=20, n_heldout=2, n_latent=6)
SMALL_PROGRAMS = dict(
    n_latent=4, n_perturbations=10, n_cells_per_perturbation=40, n_genes=80,
    genes_per_program=10, n_heldout=2,
)


@pytest.fixture(scope="module")
def paper_full():
    return simulate_screen("paper", seed=0)


@pytest.fixture(scope="module")
def programs_default():
    return simulate_screen("programs", seed=3)


def _check_layout(adata, n_latent, n_pert, n_per, n_ctrl, n_genes, n_heldout):
    info = adata.uns["simulation"]
    n_cells = n_ctrl + n_pert * n_per
    assert adata.shape == (n_cells, n_genes)
    assert sp.isspmatrix_csr(adata.X) or isinstance(adata.X, sp.csr_matrix)
    assert adata.X.dtype == np.float32
    data = adata.X.data
    assert np.all(data >= 0) and np.all(data == np.round(data))
    assert adata.obs_names[0] == "cell00000"
    assert isinstance(adata.obs["perturbation"].dtype, pd.CategoricalDtype)
    assert (adata.obs["perturbation"] == "control").sum() == n_ctrl
    assert adata.obs["heldout"].dtype == bool
    z = adata.obsm["z_true"]
    assert z.shape == (n_cells, n_latent) and z.dtype == np.float32
    assert list(info["latent_names"]) == [f"z{i:02d}" for i in range(n_latent)]
    perts = list(info["perturbations"])
    assert len(perts) == n_pert and perts[0] == "P000"
    assert info["graph"].dtype == np.int8 and info["graph"].shape == (n_pert, n_latent)
    assert info["shifts"].dtype == np.float32 and info["shifts"].shape == (n_pert, n_latent)
    assert np.all((info["shifts"] != 0) == (info["graph"] == 1))
    held = list(info["heldout_perturbations"])
    assert held == perts[n_pert - n_heldout:]
    assert adata.obs["heldout"].sum() == n_heldout * n_per
    assert set(adata.obs.loc[adata.obs["heldout"], "perturbation"].astype(str)) == set(held)
    assert info["control_label"] == "control" and info["perturbation_key"] == "perturbation"
    counts = adata.obs["perturbation"].value_counts()
    assert all(counts[p] == n_per for p in perts)


def test_paper_full_layout_and_ground_truth(paper_full):
    adata = paper_full
    d = PRESETS["paper"]
    _check_layout(adata, 15, 100, 250, 250, 100, 20)
    assert adata.var_names[0] == "gene000" and adata.var_names[-1] == "gene099"
    assert list(adata.uns["simulation"]["heldout_perturbations"])[0] == "P080"
    graph = graph_from_adata(adata)
    n_targets = graph.sum(axis=1)
    assert n_targets.between(d["min_targets"], d["max_targets"]).all()
    assert (graph.sum(axis=0) > 0).all()  # guaranteed by cover_latents=True
    assert (graph.iloc[:80].sum(axis=0) > 0).all()  # by training perturbations

    # the softmax is over genes: every cell's total ~ library size (1e6)
    totals = np.asarray(adata.X.sum(axis=1)).ravel()
    assert np.all(np.abs(totals / 1e6 - 1) < 0.01)

    # each perturbation's mean latent is its shift on targets, ~0 elsewhere
    shifts = adata.uns["simulation"]["shifts"]
    labels = adata.obs["perturbation"].astype(str).to_numpy()
    z = adata.obsm["z_true"]
    means = pd.DataFrame(z).groupby(labels).mean()
    pert_means = means.loc[graph.index].to_numpy()
    assert np.abs(pert_means - shifts).max() < 0.3
    assert np.abs(means.loc["control"].to_numpy()).max() < 0.3
    # shifts are ~ +/- N(5, 0.5) with both signs
    on = shifts[graph.to_numpy() == 1]
    assert np.all(np.abs(np.abs(on) - 5) < 2.5)
    assert (on > 0).any() and (on < 0).any()


def test_small_paper_layout_and_controls():
    adata = simulate_screen("paper", seed=1, n_control_cells=7, **SMALL_PAPER)
    _check_layout(adata, 6, 12, 20, 7, 100, 2)
    default_ctrl = simulate_screen("paper", seed=1, **SMALL_PAPER)
    assert (default_ctrl.obs["perturbation"] == "control").sum() == 20
    no_ctrl = simulate_screen("paper", seed=1, n_control_cells=0, **SMALL_PAPER)
    assert "control" not in set(no_ctrl.obs["perturbation"].astype(str))
    assert no_ctrl.n_obs == 12 * 20


def test_programs_layout(programs_default):
    adata = programs_default
    d = PRESETS["programs"]
    _check_layout(adata, d["n_latent"], d["n_perturbations"], d["n_cells_per_perturbation"],
                  d["n_cells_per_perturbation"], d["n_genes"], d["n_heldout"])
    assert adata.var_names[0] == "gene0000"
    prog = adata.var["program"].astype(str)
    assert (prog == "none").sum() == d["n_genes"] - d["n_latent"] * d["genes_per_program"]
    sets = programs_to_gene_sets(adata)
    assert list(sets) == [f"z{i:02d}_program" for i in range(d["n_latent"])]
    assert all(len(g) == d["genes_per_program"] for g in sets.values())
    all_genes = [g for genes in sets.values() for g in genes]
    assert len(set(all_genes)) == len(all_genes)
    graph = graph_from_adata(adata)
    assert graph.sum(axis=1).between(d["min_targets"], d["max_targets"]).all()
    totals = np.asarray(adata.X.sum(axis=1)).ravel()
    assert 3000 < np.median(totals) < 8000


def test_programs_ground_truth_is_real(programs_default):
    adata = programs_default
    z = adata.obsm["z_true"]
    logx = np.log1p(adata.X.toarray())
    prog = adata.var["program"].astype(str).to_numpy()
    names = list(adata.uns["simulation"]["latent_names"])
    for i, name in enumerate(names):
        in_prog = np.flatnonzero(prog == name)
        other = np.flatnonzero((prog != name) & (prog != "none"))
        cols = np.concatenate([in_prog, other])
        rho = spearmanr(np.column_stack([z[:, i], logx[:, cols]])).statistic[0, 1:]
        rho = np.nan_to_num(np.abs(rho))
        own, rest = rho[: len(in_prog)].mean(), rho[len(in_prog):].mean()
        assert own > 3 * rest, (name, own, rest)


def test_seed_reproducible():
    a = simulate_screen("paper", seed=5, **SMALL_PAPER)
    b = simulate_screen("paper", seed=5, **SMALL_PAPER)
    c = simulate_screen("paper", seed=6, **SMALL_PAPER)
    assert (a.X != b.X).nnz == 0
    np.testing.assert_array_equal(a.obsm["z_true"], b.obsm["z_true"])
    assert (a.X != c.X).nnz > 0
    assert not np.array_equal(a.obsm["z_true"], c.obsm["z_true"])
    p1 = simulate_screen("programs", seed=5, **SMALL_PROGRAMS)
    p2 = simulate_screen("programs", seed=5, **SMALL_PROGRAMS)
    p3 = simulate_screen("programs", seed=6, **SMALL_PROGRAMS)
    assert (p1.X != p2.X).nnz == 0
    assert (p1.X != p3.X).nnz > 0
    assert list(p1.var["program"]) == list(p2.var["program"])


def test_h5ad_round_trip(tmp_path):
    for preset, kw in (("paper", SMALL_PAPER), ("programs", SMALL_PROGRAMS)):
        adata = simulate_screen(preset, seed=2, **kw)
        path = tmp_path / f"{preset}.h5ad"
        adata.write_h5ad(path)
        back = ad.read_h5ad(path)
        pd.testing.assert_frame_equal(graph_from_adata(back), graph_from_adata(adata))
        a, b = adata.uns["simulation"], back.uns["simulation"]
        assert set(a) == set(b)
        for key in a:
            va, vb = a[key], b[key]
            if isinstance(va, np.ndarray):
                np.testing.assert_array_equal(np.asarray(vb), va)
            else:
                assert vb == va, key
        assert (back.X != adata.X).nnz == 0
        np.testing.assert_array_equal(back.obsm["z_true"], adata.obsm["z_true"])
        assert list(back.obs["perturbation"]) == list(adata.obs["perturbation"])
        assert back.obs["heldout"].dtype == bool
        if preset == "programs":
            assert programs_to_gene_sets(back) == programs_to_gene_sets(adata)
        else:
            with pytest.raises(InputError):
                programs_to_gene_sets(back)


def test_gmt_round_trip(tmp_path):
    adata = simulate_screen("programs", seed=0, **SMALL_PROGRAMS)
    sets = programs_to_gene_sets(adata)
    path = tmp_path / "programs.gmt"
    write_gmt(sets, path)
    assert read_gene_sets(path) == sets  # the package's one GMT reader
    text = path.read_text()
    first = text.splitlines()[0].split("\t")
    assert first[0] == "z00_program" and first[1] == "scperturb-vae simulation"
    # per-set descriptions, overwrite in place, blank lines skipped
    write_gmt({"a": ["g1", "g2"], "b": []}, path, description={"a": "first"})
    path.write_text(path.read_text() + "\n\n")
    assert path.read_text().splitlines()[:2] == ["a\tfirst\tg1\tg2", "b\t"]
    assert read_gene_sets(path) == {"a": ["g1", "g2"]}  # a set without genes is not a set
    assert [p.name for p in tmp_path.iterdir()] == ["programs.gmt"]  # no temp file left
    with pytest.raises(InputError):
        write_gmt({"bad\tname": ["g"]}, tmp_path / "x.gmt")
    with pytest.raises(InputError):
        read_gene_sets(tmp_path / "missing.gmt")


def test_input_errors():
    with pytest.raises(InputError, match="unknown simulation preset"):
        simulate_screen("nope")
    with pytest.raises(InputError, match="max_targets"):
        simulate_screen("paper", n_latent=4, max_targets=5)
    with pytest.raises(InputError):
        simulate_screen("paper", n_cells_per_perturbation=0)
    with pytest.raises(InputError):
        simulate_screen("paper", n_perturbations=10, n_heldout=10)
    with pytest.raises(InputError):
        simulate_screen("paper", min_targets=3, max_targets=2)
    with pytest.raises(InputError, match="unknown parameter"):
        simulate_screen("paper", genes_per_program=3)
    with pytest.raises(InputError):
        simulate_screen("programs", n_genes=50, genes_per_program=30)
    with pytest.raises(InputError):
        simulate_screen("paper", library_size=-1.0)
    with pytest.raises(InputError):
        simulate_screen("paper", n_latent=2.5)
    with pytest.raises(InputError):
        programs_to_gene_sets(simulate_screen("paper", seed=0, **SMALL_PAPER))
