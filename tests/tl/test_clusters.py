"""Tests of perturbation clusters (:mod:`scperturb_vae.tl.clusters`), cluster tables
(:mod:`scperturb_vae.data.cluster_tables`) and ``scvae clusters`` (:mod:`scperturb_vae.pipelines.clusters`).

The clustering is checked on a hand-built screen whose two groups of perturbations move
two disjoint gene blocks (the groups must come out exactly), on a simulated screen whose
ground truth is known, and against an independent dense computation with scipy.  The
profiles are checked against a hand-computed example.  Everything is small and fast.
"""

from __future__ import annotations

import logging
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from helpers import SHARED_DATA, assert_user_error, invoke, sha256
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import pdist

from scperturb_vae.data.cluster_tables import (
    cluster_members,
    cluster_summary,
    read_cluster_table,
    restrict_to_perturbations,
)
from scperturb_vae.errors import InputError, OutputError
from scperturb_vae.pipelines.clusters import write_cluster_table
from scperturb_vae.tl import clusters as clusters_module
from scperturb_vae.tl.clusters import compute_perturbation_clusters, perturbation_profiles

REPLOGLE = SHARED_DATA / "genesets" / "replogle2022_perturbation_clusters_LINDA_ENCORE.txt"
DATLINGER = SHARED_DATA / "datlinger2021_scperturb_testdata.h5ad"


# --------------------------------------------------------------------------- helpers


def two_block_screen(
    group_up: list[str],
    group_down: list[str],
    *,
    n_cells: int = 30,
    n_control: int = 40,
    n_genes: int = 60,
    seed: int = 0,
    extra_labels: dict[str, int] | None = None,
) -> ad.AnnData:
    """Poisson counts; ``group_up`` multiplies genes 0-9, ``group_down`` genes 10-19.

    Within a group the perturbations differ in strength (x3 to x5), so that every
    perturbation has its own profile; ``extra_labels`` adds cells at baseline.
    """
    rng = np.random.default_rng(seed)
    base = rng.uniform(2.0, 6.0, size=n_genes)
    labels: list[str] = ["control"] * n_control
    rates = [np.tile(base, (n_control, 1))]
    for members, block in ((group_up, slice(0, 10)), (group_down, slice(10, 20))):
        for i, name in enumerate(members):
            rate = base.copy()
            rate[block] *= 3.0 + 2.0 * i / max(len(members) - 1, 1)
            labels += [name] * n_cells
            rates.append(np.tile(rate, (n_cells, 1)))
    for name, count in (extra_labels or {}).items():
        labels += [name] * count
        rates.append(np.tile(base, (count, 1)))
    rate = np.vstack(rates)
    X = rng.poisson(rate).astype(np.float32)
    X[:, -1] += 1  # no empty cell
    obs = pd.DataFrame({"perturbation": pd.Categorical(labels)},
                       index=[f"cell{i:04d}" for i in range(len(labels))])
    var = pd.DataFrame(index=[f"g{j:03d}" for j in range(n_genes)])
    return ad.AnnData(X=sp.csr_matrix(X), obs=obs, var=var)


def partition(table: pd.DataFrame) -> set[frozenset[str]]:
    return {frozenset(m) for m in cluster_members(table).values()}


def dense_reference_profiles(adata: ad.AnnData, key: str, control: str) -> pd.DataFrame:
    """Profiles computed the plain way: dense matrix, boolean masks."""
    X = adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X, dtype=np.float64)
    X = X.astype(np.float64)
    logged = np.log1p(X / X.sum(axis=1, keepdims=True) * 1e4)
    labels = adata.obs[key].astype(str).to_numpy()
    reference = logged[labels == control].mean(axis=0)
    names = sorted(set(labels) - {control})
    return pd.DataFrame([logged[labels == n].mean(axis=0) - reference for n in names],
                        index=names, columns=adata.var_names)


UP = ["Z1", "Z2", "Z3", "Z4", "Z5"]
DOWN = ["A1", "A2", "A3"]


@pytest.fixture(scope="module")
def screen() -> ad.AnnData:
    return two_block_screen(UP, DOWN)


@pytest.fixture
def screen_file(tmp_path, screen) -> Path:
    path = tmp_path / "screen.h5ad"
    screen.write_h5ad(path)
    return path


@pytest.fixture
def members_file(tmp_path) -> Path:
    """A small table in the Replogle 2022 'members' layout (unnamed id column)."""
    path = tmp_path / "members.txt"
    path.write_text(
        "\tmembers\tnearby_genes\tmanual_annotation\tbest_description\n"
        "0\tZ1,Z2,Z3\tX\tup complex\tup complex 1\n"
        "1\tA1,A2,NOTINDATA,A1\t\t\tdown module\n"
        "2\tQQ1,QQ2\t\tabsent\tabsent 1\n"
        "3\tZ3, A3\t\t\t\n"
    )
    return path


# --------------------------------------------------------------------------- profiles
def test_profiles_match_hand_computation():
    X = sp.csr_matrix(np.array([[1, 3], [2, 2], [4, 0], [0, 5]], dtype=np.float32))
    adata = ad.AnnData(X=X, obs=pd.DataFrame({"p": ["ctrl", "ctrl", "B", "A"]},
                                             index=["c0", "c1", "c2", "c3"]))
    adata.var_names = ["g0", "g1"]
    profiles, n_cells = perturbation_profiles(adata, "p", "ctrl")
    control = np.array([(np.log1p(2500) + np.log1p(5000)) / 2, (np.log1p(7500) + np.log1p(5000)) / 2])
    expected = pd.DataFrame([[0 - control[0], np.log1p(1e4) - control[1]],
                             [np.log1p(1e4) - control[0], 0 - control[1]]],
                            index=["A", "B"], columns=["g0", "g1"])
    np.testing.assert_allclose(profiles.to_numpy(), expected.to_numpy(), rtol=0, atol=1e-12)
    assert list(profiles.index) == ["A", "B"] and list(profiles.columns) == ["g0", "g1"]
    assert n_cells.to_dict() == {"A": 1, "B": 1}
    assert profiles.loc["B", "g0"] == pytest.approx(np.log1p(1e4) - 0.5 * np.log1p(2500) - 0.5 * np.log1p(5000))


def test_profiles_match_dense_reference_and_chunking(screen, monkeypatch):
    expected = dense_reference_profiles(screen, "perturbation", "control")
    profiles, n_cells = perturbation_profiles(screen, "perturbation", "control")
    np.testing.assert_allclose(profiles.loc[expected.index].to_numpy(), expected.to_numpy(), atol=1e-10)
    assert set(n_cells) == {30}
    # tiny row blocks (including blocks of controls only) give the same numbers
    monkeypatch.setattr(clusters_module, "_CHUNK_ROWS", 7)
    chunked, _ = perturbation_profiles(screen, "perturbation", "control")
    np.testing.assert_allclose(chunked.to_numpy(), profiles.to_numpy(), atol=1e-10)
    # Z1 multiplies genes 0-9 by 3: about log(3) = 1.1 above the other genes (which
    # all drop a little, as the cell totals grow); genes 10-19 move like the rest
    up = profiles.loc["Z1"].to_numpy()
    assert 0.9 < up[:10].mean() - up[20:].mean() < 1.3
    assert abs(up[10:20].mean() - up[20:].mean()) < 0.1


def test_profiles_never_densify_the_whole_matrix(screen, monkeypatch):
    """The only sparse -> dense conversion is the small groups x genes sum."""
    shapes = []
    original = sp.csr_matrix.toarray

    def recording(self, *args, **kwargs):
        shapes.append(self.shape)
        return original(self, *args, **kwargs)

    def refuse(self, *args, **kwargs):
        raise AssertionError("densified")

    monkeypatch.setattr(sp.csr_matrix, "toarray", recording)
    monkeypatch.setattr(sp.csr_matrix, "todense", refuse)
    perturbation_profiles(screen, "perturbation", "control")
    assert shapes and all(shape == (len(UP) + len(DOWN) + 1, screen.n_vars) for shape in shapes), shapes


# --------------------------------------------------------------------------- clustering
def test_clusters_separate_the_two_groups_exactly(screen):
    table = compute_perturbation_clusters(screen, "perturbation", "control", n_clusters=2)
    assert list(table.columns) == ["perturbation", "cluster", "n_cells"]
    assert partition(table) == {frozenset(UP), frozenset(DOWN)}
    # the larger group is cluster0 although its names sort after the other group's
    assert cluster_members(table) == {"cluster0": UP, "cluster1": DOWN}
    assert list(table["perturbation"]) == UP + DOWN  # by cluster, then perturbation
    assert table["n_cells"].tolist() == [30] * 8
    assert table["n_cells"].dtype == np.int64


def test_equal_sizes_are_named_by_first_member():
    # same data (same seed), the gene blocks of the groups swapped
    a = two_block_screen(["B1", "B2", "B3"], ["C1", "C2", "C3"])
    b = two_block_screen(["C1", "C2", "C3"], ["B1", "B2", "B3"])
    for adata in (a, b):
        table = compute_perturbation_clusters(adata, "perturbation", "control", n_clusters=2)
        assert cluster_members(table) == {"cluster0": ["B1", "B2", "B3"], "cluster1": ["C1", "C2", "C3"]}


def test_more_clusters_than_perturbations_and_one_cluster(screen):
    table = compute_perturbation_clusters(screen, "perturbation", "control", n_clusters=50)
    # all singletons: named in alphabetical order
    assert table["cluster"].tolist() == [f"cluster{i}" for i in range(8)]
    assert table["perturbation"].tolist() == sorted(UP + DOWN)
    one = compute_perturbation_clusters(screen, "perturbation", "control", n_clusters=1)
    assert set(one["cluster"]) == {"cluster0"} and len(one) == 8


def test_cluster_numbers_sort_naturally():
    names = [f"P{i:02d}" for i in range(12)]
    adata = two_block_screen(names[:6], names[6:], n_cells=10)
    table = compute_perturbation_clusters(adata, "perturbation", "control", n_clusters=12)
    assert table["cluster"].tolist() == [f"cluster{i}" for i in range(12)]  # cluster10 after cluster9


def test_deterministic_and_independent_of_cell_order(screen):
    first = compute_perturbation_clusters(screen, "perturbation", "control", n_clusters=3)
    second = compute_perturbation_clusters(screen, "perturbation", "control", n_clusters=3)
    pd.testing.assert_frame_equal(first, second)
    order = np.random.default_rng(1).permutation(screen.n_obs)
    shuffled = compute_perturbation_clusters(screen[order].copy(), "perturbation", "control", n_clusters=3)
    pd.testing.assert_frame_equal(first, shuffled)
    assert first["cluster"].nunique() == 3


def test_sparse_dense_and_layer_give_the_same_table(screen):
    sparse = compute_perturbation_clusters(screen, "perturbation", "control", n_clusters=3, n_genes=30)
    dense = screen.copy()
    dense.X = screen.X.toarray()
    pd.testing.assert_frame_equal(
        sparse, compute_perturbation_clusters(dense, "perturbation", "control", n_clusters=3, n_genes=30))
    layered = screen.copy()
    layered.layers["counts"] = screen.X.copy()
    layered.X = sp.csr_matrix(np.ones(screen.shape, dtype=np.float32))  # not the counts
    pd.testing.assert_frame_equal(
        sparse, compute_perturbation_clusters(layered, "perturbation", "control", n_clusters=3,
                                              n_genes=30, layer="counts"))


def test_matches_independent_scipy_computation():
    from scperturb_vae.data.simulate import simulate_screen

    adata = simulate_screen("programs", n_latent=4, n_perturbations=16, n_cells_per_perturbation=40,
                            n_genes=200, n_heldout=0, seed=3)
    for k, n_genes in ((3, 40), (5, 500)):
        table = compute_perturbation_clusters(adata, "perturbation", "control", n_clusters=k, n_genes=n_genes)
        profiles = dense_reference_profiles(adata, "perturbation", "control")
        variance = profiles.var(axis=0, ddof=0)
        top = variance[variance > 0].sort_values(ascending=False, kind="stable").index[:n_genes]
        z = profiles[top]
        z = (z - z.mean()) / z.std(ddof=0)
        tree = linkage(np.sqrt(2 * pdist(z.to_numpy(), "correlation")), method="ward")
        labels = fcluster(tree, t=k, criterion="maxclust")
        expected = {frozenset(np.asarray(profiles.index)[labels == c]) for c in np.unique(labels)}
        assert partition(table) == expected
        assert len(expected) == k


def test_simulated_screen_recovers_the_true_groups():
    """Single-target perturbations group by (targeted latent, sign of the shift)."""
    from scperturb_vae.data.simulate import simulate_screen

    adata = simulate_screen("programs", n_latent=3, n_perturbations=12, n_cells_per_perturbation=60,
                            n_genes=200, min_targets=1, max_targets=1, n_heldout=0, seed=0)
    sim = adata.uns["simulation"]
    shifts = np.asarray(sim["shifts"])
    truth: dict[tuple[int, float], set[str]] = {}
    for name, row in zip(sim["perturbations"], shifts):
        target = int(np.flatnonzero(row)[0])
        truth.setdefault((target, float(np.sign(row[target]))), set()).add(str(name))
    assert len(truth) >= 4  # a non-trivial truth
    table = compute_perturbation_clusters(adata, "perturbation", "control", n_clusters=len(truth))
    assert partition(table) == {frozenset(g) for g in truth.values()}
    sizes = table["cluster"].value_counts()
    assert list(sizes.sort_index(key=lambda idx: idx.str[7:].astype(int))) == sorted(sizes, reverse=True)


def test_combinations_control_and_small_perturbations_left_out(caplog):
    adata = two_block_screen(UP, DOWN, extra_labels={"Z1+A1": 20, "TINY": 5})
    with caplog.at_level(logging.INFO, logger="scperturb_vae"):
        table = compute_perturbation_clusters(adata, "perturbation", "control", n_clusters=2, min_cells=10)
    assert set(table["perturbation"]) == set(UP + DOWN)
    assert partition(table) == {frozenset(UP), frozenset(DOWN)}
    assert "1 combination label" in caplog.text and "TINY" in caplog.text
    kept = compute_perturbation_clusters(adata, "perturbation", "control", n_clusters=3)
    assert "TINY" in set(kept["perturbation"]) and "Z1+A1" not in set(kept["perturbation"])
    assert int(kept.set_index("perturbation").loc["TINY", "n_cells"]) == 5


def test_bad_arguments_raise_input_errors(screen):
    with pytest.raises(InputError, match="not an obs column"):
        compute_perturbation_clusters(screen, "nope", "control")
    with pytest.raises(InputError, match="control label 'ctrl' not found"):
        compute_perturbation_clusters(screen, "perturbation", "ctrl")
    with pytest.raises(InputError, match="n_clusters must be a positive integer"):
        compute_perturbation_clusters(screen, "perturbation", "control", n_clusters=0)
    with pytest.raises(InputError, match="n_genes must be a positive integer"):
        compute_perturbation_clusters(screen, "perturbation", "control", n_genes=-1)
    with pytest.raises(InputError, match="layer 'counts' not found"):
        compute_perturbation_clusters(screen, "perturbation", "control", layer="counts")
    with pytest.raises(InputError, match="no single perturbation with at least 31 cells"):
        compute_perturbation_clusters(screen, "perturbation", "control", min_cells=31)
    # two perturbations with identical cells: nothing varies between their profiles
    X = sp.csr_matrix(np.array([[1, 2, 3], [3, 2, 1], [2, 2, 2], [2, 2, 2]], dtype=np.float32))
    same = ad.AnnData(X=X, obs=pd.DataFrame({"p": ["c", "c", "A", "B"]}, index=list("wxyz")))
    with pytest.raises(InputError, match="vary"):
        compute_perturbation_clusters(same, "p", "c", n_clusters=2)


# --------------------------------------------------------------------------- reading
def test_read_long_csv_with_numeric_clusters(tmp_path):
    path = tmp_path / "long.csv"
    path.write_text("Target_Gene,Cluster,Description\nB,1,\nA,0,first\nC,1,second\nA,0,\n,2,x\nD,,\n")
    table = read_cluster_table(path)
    assert list(table.columns) == ["perturbation", "cluster", "description"]
    assert table.to_dict("records") == [
        {"perturbation": "B", "cluster": "cluster1", "description": "second"},
        {"perturbation": "C", "cluster": "cluster1", "description": "second"},
        {"perturbation": "A", "cluster": "cluster0", "description": "first"},
    ]


def test_read_tsv_keeps_multiple_memberships(tmp_path):
    path = tmp_path / "long.tsv"
    path.write_text("gene\tcluster\nMED12\tmediator\nMED13\tmediator\nCDK8\tmediator\nCDK8\tkinase\n")
    table = read_cluster_table(path)
    assert cluster_members(table) == {"mediator": ["CDK8", "MED12", "MED13"], "kinase": ["CDK8"]}
    assert (table["description"] == "").all()
    assert (table["perturbation"] == "CDK8").sum() == 2


def test_read_members_layout(members_file):
    table = read_cluster_table(members_file)
    assert cluster_members(table) == {
        "cluster0": ["Z1", "Z2", "Z3"],
        "cluster1": ["A1", "A2", "NOTINDATA"],  # the duplicate A1 dropped
        "cluster2": ["QQ1", "QQ2"],
        "cluster3": ["A3", "Z3"],
    }
    summary = cluster_summary(table)
    # manual_annotation first, best_description when it is empty, "" when both are
    assert summary["description"].tolist() == ["up complex", "down module", "absent", ""]
    assert summary["size"].tolist() == [3, 3, 2, 2]
    assert summary["members"].tolist()[0] == "Z1,Z2,Z3"


def test_restriction_to_the_data_logs_empty_clusters(members_file, caplog):
    with caplog.at_level(logging.INFO, logger="scperturb_vae"):
        table = read_cluster_table(members_file, perturbations=UP + DOWN)
    assert cluster_members(table) == {"cluster0": ["Z1", "Z2", "Z3"], "cluster1": ["A1", "A2"],
                                      "cluster3": ["A3", "Z3"]}
    assert "3 of 4 clusters" in caplog.text and "1 cluster(s) have no member in the data" in caplog.text
    with pytest.raises(InputError, match="no member of the 4 clusters"):
        read_cluster_table(members_file, perturbations=["NOPE1", "NOPE2"])
    full = read_cluster_table(members_file)
    pd.testing.assert_frame_equal(restrict_to_perturbations(full, UP + DOWN), table)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("gene,group\nA,1\n", "no cluster column"),
        ("name,cluster\nA,1\n", "no perturbation column"),
        ("", "is empty"),
        ("gene,cluster\n", "has a header but no rows"),
        ("gene,cluster\n,\n ,\n", "no \\(perturbation, cluster\\) pair"),
        ("members,notes\nA,B\n", "unnamed first column"),
    ],
)
def test_read_bad_tables(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(InputError, match=message):
        read_cluster_table(path)


def test_read_bad_files(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_cluster_table(tmp_path / "missing.csv")
    with pytest.raises(InputError, match="is a directory"):
        read_cluster_table(tmp_path)
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"\x89HDF\r\n\x1a\n\x00\x00\xff\xfe")
    with pytest.raises(InputError, match="not a text"):
        read_cluster_table(binary)


@pytest.mark.skipif(not REPLOGLE.exists(), reason=f"shared data not found at {REPLOGLE}")
def test_read_real_replogle_table(caplog):
    digest = sha256(REPLOGLE)
    table = read_cluster_table(REPLOGLE)
    summary = cluster_summary(table)
    assert len(summary) == 64 and summary["cluster"].tolist() == [f"cluster{i}" for i in range(64)]
    assert len(table) == 703  # 705 listed members, two listed twice within their cluster
    assert summary["size"].sum() == 703 and summary["size"].min() >= 3
    by_name = summary.set_index("cluster")
    assert by_name.loc["cluster52", "description"] == "Mediator complex"
    assert by_name.loc["cluster37", "description"] == "TFIID complex"  # from best_description
    assert by_name.loc["cluster0", "description"] == "unknown 1"
    members = cluster_members(table)
    assert "MED12" in members["cluster52"]
    with caplog.at_level(logging.INFO, logger="scperturb_vae"):
        kept = read_cluster_table(REPLOGLE, perturbations=["MED12", "UPF1", "NOT_A_GENE"])
    assert set(kept["perturbation"]) == {"MED12", "UPF1"} and kept["cluster"].nunique() == 2
    assert "62 cluster(s) have no member" in caplog.text
    assert sha256(REPLOGLE) == digest


# --------------------------------------------------------------------------- summaries and writing
def test_summary_members_and_write_round_trip(screen, tmp_path):
    table = compute_perturbation_clusters(screen, "perturbation", "control", n_clusters=2)
    summary = cluster_summary(table)
    assert summary.to_dict("records") == [
        {"cluster": "cluster0", "size": 5, "members": ",".join(UP), "description": ""},
        {"cluster": "cluster1", "size": 3, "members": ",".join(DOWN), "description": ""},
    ]
    out = tmp_path / "sub" / "clusters.csv"
    assert write_cluster_table(table, out) == out
    pd.testing.assert_frame_equal(pd.read_csv(out), table)
    assert partition(read_cluster_table(out)) == partition(table)
    before = sha256(out)
    with pytest.raises(OutputError, match="exists already"):
        write_cluster_table(table.head(2), out)
    assert sha256(out) == before
    write_cluster_table(table.head(2), out, overwrite=True)
    assert len(pd.read_csv(out)) == 2
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(".")]
    with pytest.raises(InputError, match="lacks column"):
        cluster_members(pd.DataFrame({"gene": ["A"]}))


# --------------------------------------------------------------------------- CLI
def test_cli_computes_clusters(runner, screen_file, screen, tmp_path):
    digest = sha256(screen_file)
    out = tmp_path / "out" / "clusters.csv"
    result = invoke(runner, "clusters", "--adata", screen_file, "--n-clusters", 2, "--out", out)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    written = pd.read_csv(out, keep_default_na=False)
    assert list(written.columns) == ["perturbation", "cluster", "n_cells", "description"]
    expected = compute_perturbation_clusters(screen, "perturbation", "control", n_clusters=2)
    pd.testing.assert_frame_equal(written.drop(columns="description"), expected)
    assert (written["description"] == "").all()
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["cluster", "size", "members"]
    assert lines[1].split()[:2] == ["cluster0", "5"] and "Z1, Z2" in lines[1]
    assert lines[2].split()[:2] == ["cluster1", "3"]
    assert "8 perturbations in 2 clusters" in lines[-1]
    assert "into 2 clusters" in result.stderr
    assert sha256(screen_file) == digest
    # again, refused without --overwrite; accepted with it
    again = invoke(runner, "clusters", "--adata", screen_file, "--out", out)
    message = assert_user_error(again, 3)
    assert "exists already" in message
    assert sha256(screen_file) == digest
    assert pd.read_csv(out, keep_default_na=False).equals(written)
    result = invoke(runner, "clusters", "--adata", screen_file, "--n-clusters", 3, "--out", out, "--overwrite")
    assert result.exit_code == 0, result.stderr
    assert pd.read_csv(out)["cluster"].nunique() == 3


def test_cli_reads_a_cluster_table(runner, screen_file, members_file, tmp_path):
    digests = sha256(screen_file), sha256(members_file)
    out = tmp_path / "clusters.csv"
    result = invoke(runner, "clusters", "--adata", screen_file, "--clusters", members_file, "--out", out)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    written = pd.read_csv(out, keep_default_na=False)
    assert written.to_dict("list") == {
        "perturbation": ["Z1", "Z2", "Z3", "A1", "A2", "A3", "Z3"],
        "cluster": ["cluster0"] * 3 + ["cluster1"] * 2 + ["cluster3"] * 2,
        "n_cells": [30] * 7,
        "description": ["up complex"] * 3 + ["down module"] * 2 + ["", ""],
    }
    assert "description" in result.stdout.splitlines()[0]
    assert "1 cluster(s) have no member in the data" in result.stderr
    assert (sha256(screen_file), sha256(members_file)) == digests


def test_cli_bad_inputs(runner, screen_file, tmp_path):
    digest = sha256(screen_file)
    out = tmp_path / "clusters.csv"
    # missing h5ad
    message = assert_user_error(invoke(runner, "clusters", "--adata", tmp_path / "nope.h5ad", "--out", out), 2)
    assert "does not exist" in message
    # a cluster table with no perturbation of the data
    disjoint = tmp_path / "disjoint.csv"
    disjoint.write_text("gene,cluster\nMED12,0\nMED13,0\n")
    message = assert_user_error(
        invoke(runner, "clusters", "--adata", screen_file, "--clusters", disjoint, "--out", out), 2)
    assert "no member of the 1 clusters" in message
    # a table without a cluster column
    no_cluster = tmp_path / "nocluster.csv"
    no_cluster.write_text("gene,group\nZ1,0\n")
    message = assert_user_error(
        invoke(runner, "clusters", "--adata", screen_file, "--clusters", no_cluster, "--out", out), 2)
    assert "no cluster column" in message
    # a missing cluster table
    message = assert_user_error(
        invoke(runner, "clusters", "--adata", screen_file, "--clusters", tmp_path / "none.csv", "--out", out), 2)
    assert "does not exist" in message
    # a wrong control label, a bad number of clusters
    message = assert_user_error(
        invoke(runner, "clusters", "--adata", screen_file, "--control", "NT", "--out", out), 2)
    assert "control label 'NT' not found" in message
    message = assert_user_error(
        invoke(runner, "clusters", "--adata", screen_file, "--n-clusters", 0, "--out", out), 2)
    assert "--n-clusters" in message
    assert not out.exists()
    assert sha256(screen_file) == digest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["disjoint.csv", "nocluster.csv", "screen.h5ad"]


def test_cli_help_lists_clusters(runner):
    result = invoke(runner, "--help")
    assert result.exit_code == 0 and "clusters" in result.stdout
    result = invoke(runner, "clusters", "--help")
    assert result.exit_code == 0 and "--n-clusters" in result.stdout


@pytest.mark.skipif(not DATLINGER.exists(), reason=f"shared data not found at {DATLINGER}")
def test_cli_on_real_data(runner, tmp_path):
    digest = sha256(DATLINGER)
    out = tmp_path / "clusters.csv"
    result = invoke(runner, "clusters", "--adata", DATLINGER, "--perturbation-key", "gene",
                    "--control", "control", "--n-clusters", 5, "--out", out)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    table = pd.read_csv(out)
    assert len(table) == 20 and table["perturbation"].is_unique
    assert table["cluster"].nunique() == 5
    sizes = table["cluster"].value_counts()
    assert sizes.min() >= 1 and sizes["cluster0"] == sizes.max()
    assert table["n_cells"].sum() == 7500 - 200
    assert sha256(DATLINGER) == digest
