"""Tests of :mod:`scperturb_vae.tl.enrichment`: the statistics against scipy, the readers, the tables."""

from __future__ import annotations

from fractions import Fraction
from math import comb
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import SHARED_DATA
from scipy import stats

from scperturb_vae.data.genesets import load_gene_sets, read_gene_sets, restrict_gene_sets
from scperturb_vae.errors import InputError
from scperturb_vae.tl.enrichment import (
    ENRICHMENT_COLUMNS,
    PERTURBATION_ENRICHMENT_COLUMNS,
    _fdr,
    _hypergeom_pvalues,
    _rank_sum_from_ranks,
    _ranks,
    enrich_latents,
    perturbation_set_enrichment,
)

SHARED = SHARED_DATA
GENESETS = SHARED / "genesets"


# --------------------------------------------------------------------------- statistics
def _exact_upper_tail(k, M, n, N) -> float:
    """``P(X >= k)`` of the hypergeometric distribution, from exact binomial coefficients."""
    terms = [Fraction(comb(n, j) * comb(M - n, N - j), comb(M, N)) for j in range(max(k, 0), min(n, N) + 1)]
    return float(sum(terms, Fraction(0)))


@pytest.mark.parametrize(
    "k, M, n, N",
    [
        (3, 100, 10, 20), (0, 50, 5, 5), (1, 10, 10, 3), (5, 10, 5, 5), (7, 1000, 30, 7),
        (10, 20000, 200, 50), (40, 20000, 500, 50), (2, 30, 12, 25), (13, 30, 12, 25),
        (1, 500, 1, 1), (6, 40, 20, 20), (11, 40, 20, 20),
    ],
)
def test_hypergeom_pvalues_are_upper_tails(k, M, n, N):
    """``P(X >= k)``, not scipy's ``P(X > k)``: the ``k - 1`` shift, against exact arithmetic."""
    ours = float(_hypergeom_pvalues(k, M, n, N))
    assert ours == pytest.approx(_exact_upper_tail(k, M, n, N), rel=1e-9, abs=1e-300)
    assert ours == pytest.approx(float(stats.hypergeom.sf(k - 1, M, n, N)), rel=1e-12, abs=1e-300)


def test_hypergeom_pvalues_vectorised_and_edges():
    rng = np.random.default_rng(1)
    M = rng.integers(20, 400, size=200)
    n = np.array([rng.integers(0, m + 1) for m in M])
    N = np.array([rng.integers(0, m + 1) for m in M])
    k = np.array([rng.integers(0, min(a, b) + 2) for a, b in zip(n, N)])
    ours = _hypergeom_pvalues(k, M, n, N)
    exact = [_exact_upper_tail(*args) for args in zip(k.tolist(), M.tolist(), n.tolist(), N.tolist())]
    np.testing.assert_allclose(ours, exact, rtol=1e-8, atol=1e-14)
    # k above the largest possible overlap: probability 0; k <= 0: probability 1
    assert _hypergeom_pvalues(6, 100, 5, 50) == 0.0
    assert _hypergeom_pvalues(0, 100, 5, 50) == 1.0
    # forced overlap (N - (M - n) = 3): P(X >= 3) = 1
    assert _hypergeom_pvalues(3, 10, 8, 5) == pytest.approx(1.0)
    # a tail far below float64's 1e-16 relative spacing from 1 is still accurate
    assert _hypergeom_pvalues(50, 20000, 50, 50) == pytest.approx(float(stats.hypergeom.pmf(50, 20000, 50, 50)), rel=1e-8)
    assert _hypergeom_pvalues(50, 20000, 50, 50) == pytest.approx(_exact_upper_tail(50, 20000, 50, 50), rel=1e-8)


def test_fdr_hand_computation():
    # sorted: 0.01 (x4/1 = .04), 0.03 (x4/2 = .06), 0.04 (x4/3 = .0533), 0.20 (x4/4 = .20)
    # step-up minimum from the top: .20, .0533, min(.06, .0533) = .0533, .04
    fdr = _fdr([0.01, 0.04, 0.03, 0.20])
    np.testing.assert_allclose(fdr, [0.04, 0.16 / 3, 0.16 / 3, 0.20])
    np.testing.assert_allclose(fdr, stats.false_discovery_control([0.01, 0.04, 0.03, 0.20]))


def test_fdr_random_monotone_and_nan():
    rng = np.random.default_rng(0)
    p = np.concatenate([rng.uniform(size=300), rng.uniform(0, 1e-4, size=30)])
    fdr = _fdr(p)
    np.testing.assert_allclose(fdr, stats.false_discovery_control(p), rtol=1e-12)
    order = np.argsort(p)
    assert np.all(np.diff(fdr[order]) >= -1e-15)  # monotone in p
    assert np.all(fdr >= p) and np.all(fdr <= 1)
    with_nan = np.array([0.01, np.nan, 0.04, 0.03, 0.20])
    out = _fdr(with_nan)
    assert np.isnan(out[1])
    np.testing.assert_allclose(out[[0, 2, 3, 4]], [0.04, 0.16 / 3, 0.16 / 3, 0.20])
    assert np.isnan(_fdr([np.nan])).all()


def test_ranks_and_tie_correction():
    x = np.array([3.0, 1.0, 3.0, 2.0, 3.0, 1.0, 7.0])
    ranks, correction = _ranks(x)
    np.testing.assert_allclose(ranks, stats.rankdata(x))
    tie = (3**3 - 3) + (2**3 - 2)  # three 3.0s, two 1.0s
    assert correction == pytest.approx(1 - tie / (x.size**3 - x.size), rel=1e-15)


def _rank_sum_test(x, y, alternative, continuity):
    """One set (``x``) against the rest (``y``) through the vectorised rank-sum."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ranks, correction = _ranks(np.concatenate([x, y]))
    auc, p = _rank_sum_from_ranks(ranks[: x.size].sum(), x.size, x.size + y.size, correction, alternative, continuity)
    return float(auc), float(p)


@pytest.mark.parametrize("continuity", [True, False])
@pytest.mark.parametrize("alternative", ["greater", "less"])
def test_rank_sum_matches_scipy_with_ties(alternative, continuity):
    rng = np.random.default_rng(3)
    for _ in range(5):
        x = rng.integers(0, 6, size=rng.integers(3, 25)).astype(float)  # many ties
        y = rng.integers(0, 8, size=rng.integers(10, 60)).astype(float)
        auc, p = _rank_sum_test(x, y, alternative, continuity)
        ref = stats.mannwhitneyu(x, y, alternative=alternative, method="asymptotic", use_continuity=continuity)
        assert p == pytest.approx(ref.pvalue, rel=1e-10)
        u1 = ref.statistic  # scipy reports U of x
        expected = u1 / (x.size * y.size) if alternative == "greater" else 1 - u1 / (x.size * y.size)
        assert auc == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("continuity", [True, False])
@pytest.mark.parametrize("alternative", ["greater", "less"])
def test_vectorised_rank_sum_over_sets_matches_mannwhitneyu_per_set(alternative, continuity):
    """Many sets at once (rank sums through a membership matrix) = one mannwhitneyu per set."""
    rng = np.random.default_rng(4)
    scores = np.round(rng.normal(size=300), 1)  # many ties
    membership = rng.random((40, scores.size)) < rng.uniform(0.02, 0.3, size=(40, 1))
    membership[0, :] = False
    membership[0, :5] = True
    ranks, correction = _ranks(scores)
    sizes = membership.sum(axis=1)
    auc, p = _rank_sum_from_ranks(membership.astype(float) @ ranks, sizes, scores.size, correction, alternative,
                                  continuity)
    for r, members in enumerate(membership):
        ref = stats.mannwhitneyu(scores[members], scores[~members], alternative=alternative, method="asymptotic",
                                 use_continuity=continuity)
        assert p[r] == pytest.approx(ref.pvalue, rel=1e-10)
        u1 = ref.statistic / (sizes[r] * (scores.size - sizes[r]))
        assert auc[r] == pytest.approx(u1 if alternative == "greater" else 1 - u1, rel=1e-12)


def test_rank_sum_known_answer_and_degenerate():
    # x entirely above y: U1 = n1 n2, AUC 1
    auc, p = _rank_sum_test([10, 11, 12], [1, 2, 3, 4], "greater", False)
    assert auc == 1.0
    # hand: n1=3, n2=4, mean 6, var = 12/12*(8) = 8, z = 6/sqrt(8)
    assert p == pytest.approx(stats.norm.sf(6 / np.sqrt(8)))
    auc_less, p_less = _rank_sum_test([10, 11, 12], [1, 2, 3, 4], "less", False)
    assert auc_less == 0.0 and p_less == pytest.approx(stats.norm.sf(-6 / np.sqrt(8)))
    assert all(np.isnan(_rank_sum_test([1.0, 1.0], [1.0, 1.0, 1.0], "greater", True)))  # all tied: no variance
    assert all(np.isnan(_rank_sum_test([], [1.0], "greater", True)))
    # empty sides of sets in the vectorised form
    auc, p = _rank_sum_from_ranks(np.array([0.0, 10.0]), np.array([0, 4]), 4, 1.0, "greater", True)
    assert np.isnan(auc).all() and np.isnan(p).all()


# --------------------------------------------------------------------------- readers
def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


CORUM_HEADER = "ComplexID\tComplexName\tOrganism\tsubunits(UniProt IDs)\tsubunits(Gene name)\tPubMed ID\n"


def test_read_gmt_and_corum(tmp_path):
    gmt = write(tmp_path / "sets.gmt", "A\tdesc\tg1\tg2\tg3\n\nB\t\tg2\tg4\t\nA\tagain\tg3\tg5\n")
    sets = read_gene_sets(gmt)
    assert sets == {"A": ["g1", "g2", "g3", "g5"], "B": ["g2", "g4"]}
    corum = write(
        tmp_path / "corum.txt",
        CORUM_HEADER
        + "1\tMediator\tHuman\tP1;P2\tMED12;MED13;CCNC\t1\n"
        + "2\tMediator\tHuman\tP1\tMED12;CDK8\t2\n"
        + "3\tMouse thing\tMouse\tP3\tMed1;Med2\t3\n"
        + "4\tEmpty\tHuman\tP4\tNone\t4\n",
    )
    human = read_gene_sets(corum)
    assert human == {"Mediator": ["MED12", "MED13", "CCNC"], "Mediator (2)": ["MED12", "CDK8"]}
    assert read_gene_sets(corum, organism="mouse") == {"Mouse thing": ["Med1", "Med2"]}
    assert len(read_gene_sets(corum, organism=None)) == 3
    with pytest.raises(InputError, match="organism 'Rat'.*Human, Mouse"):
        read_gene_sets(corum, organism="Rat")
    sources = load_gene_sets([gmt, corum, tmp_path / "sets.gmt"])
    assert list(sources) == ["sets", "corum", "sets_2"]


def test_read_gene_sets_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_gene_sets(tmp_path / "missing.gmt")
    with pytest.raises(InputError, match="is empty"):
        read_gene_sets(write(tmp_path / "empty.gmt", "\n\n"))
    with pytest.raises(InputError, match="no gene set"):
        read_gene_sets(write(tmp_path / "nogenes.gmt", "A\tdesc\nB\tdesc\t\n"))
    with pytest.raises(InputError, match=r"bad.gmt:2: not a GMT line"):
        read_gene_sets(write(tmp_path / "bad.gmt", "A\td\tg1\njustonefield\n"))
    (tmp_path / "binary.gmt").write_bytes(b"\x89HDF\r\n\x1a\n\x00\x00\x00")
    with pytest.raises(InputError, match="not a text file"):
        read_gene_sets(tmp_path / "binary.gmt")
    with pytest.raises(InputError, match="is a folder"):
        read_gene_sets(tmp_path)
    with pytest.raises(InputError, match="no gene-set file"):
        load_gene_sets([])


def test_restrict_gene_sets_case_insensitive_and_no_overlap():
    genes = ["Actb", "GAPDH", "Med12", "CCNC", "X1"]
    universe, kept = restrict_gene_sets(
        {"s1": ["ACTB", "gapdh", "NOPE"], "s2": ["MED12", "ccnc", "Med12"], "s3": ["NOPE"]}, genes,
        min_size=2, max_size=2,
    )
    assert universe == ["Actb", "GAPDH", "Med12", "CCNC"]  # model order, model spelling
    assert kept == {"s1": ["Actb", "GAPDH"], "s2": ["Med12", "CCNC"]}
    with pytest.raises(InputError) as err:
        restrict_gene_sets({"s": ["Foo", "Bar"]}, genes, source="mouse.gmt")
    message = str(err.value)
    assert "mouse.gmt" in message and "2 genes" in message and "5 genes" in message
    assert "'Bar'" in message and "'Actb'" in message and "\n" not in message


# --------------------------------------------------------------------------- enrich_latents
def _toy_effects():
    """3 latents x 200 genes with known strong sets."""
    rng = np.random.default_rng(7)
    genes = [f"G{i:03d}" for i in range(200)]
    values = rng.normal(0, 1, size=(3, 200))
    values[0, :10] += 6.0  # set_up members G000..G009 strongly up on L0
    values[1, 10:20] -= 6.0  # set_down members down on L1
    effects = pd.DataFrame(values, index=["L0", "L1", "L2"], columns=genes)
    sets = {
        "set_up": genes[:10] + ["NOT_A_MODEL_GENE"],
        "set_down": [g.lower() for g in genes[10:20]],  # lower case: matched anyway
        "set_mixed": genes[0:5] + genes[100:110],
        "tiny": genes[150:152],  # filtered out (min_size)
        "random": genes[50:80],
    }
    # genes 180..199 are in no set: outside the universe
    return effects, sets


def test_enrich_latents_against_scipy():
    effects, sets = _toy_effects()
    table = enrich_latents(effects, {"toy": sets}, top_n=15, min_size=5, max_size=100)
    assert list(table.columns) == list(ENRICHMENT_COLUMNS)
    named = {x.lower() for v in sets.values() for x in v}
    universe = [g for g in effects.columns if g.lower() in named]
    M = len(universe)
    assert table.attrs["universe"] == {"toy": M} and M == 10 + 10 + 10 + 2 + 30
    assert set(table["gene_set"]) == {"set_up", "set_down", "set_mixed", "random"}
    assert len(table) == 3 * 4 * 3 * 2  # latents x sets x directions (up, down, any) x tests

    row = table[(table.latent == "L0") & (table.gene_set == "set_up") & (table.test == "ora") & (table.direction == "up")].iloc[0]
    scores = effects.loc["L0", universe]
    top = scores.sort_values(ascending=False).index[:15]
    k = len(set(top) & set(sets["set_up"]))
    assert row.overlap == k == 10
    assert row.pvalue == pytest.approx(stats.hypergeom.sf(k - 1, M, 10, 15), rel=1e-9)
    assert row.statistic == pytest.approx((10 / 15) / (10 / M))
    assert row.genes.split(",") == list(scores[sets["set_up"][:10]].sort_values(ascending=False).index)
    assert row.fdr < 1e-6 and row.set_size == 10
    assert row.mean_effect == pytest.approx(scores[sets["set_up"][:10]].mean())

    rank = table[(table.latent == "L1") & (table.gene_set == "set_down") & (table.test == "rank") & (table.direction == "down")].iloc[0]
    members = [g for g in universe if g in effects.columns[10:20]]
    others = [g for g in universe if g not in members]
    ref = stats.mannwhitneyu(effects.loc["L1", members], effects.loc["L1", others], alternative="less",
                             method="asymptotic", use_continuity=True)
    assert rank.pvalue == pytest.approx(ref.pvalue, rel=1e-9)
    assert rank.statistic == pytest.approx(1 - ref.statistic / (10 * (M - 10)))
    assert rank.statistic > 0.95
    # the other direction of the same set is not significant
    other = table[(table.latent == "L1") & (table.gene_set == "set_down") & (table.test == "rank") & (table.direction == "up")].iloc[0]
    assert other.pvalue > 0.5 and other.statistic < 0.1

    # 'any': the rank-sum test on absolute effects; a set with members far up and far down
    mixed = table[(table.latent == "L0") & (table.gene_set == "set_mixed") & (table.test == "rank")].set_index("direction")
    members = [g for g in universe if g in sets["set_mixed"]]
    others = [g for g in universe if g not in members]
    ref = stats.mannwhitneyu(effects.loc["L0", members].abs(), effects.loc["L0", others].abs(), alternative="greater",
                             method="asymptotic", use_continuity=True)
    assert mixed.loc["any", "pvalue"] == pytest.approx(ref.pvalue, rel=1e-9)
    assert mixed.loc["any", "statistic"] == pytest.approx(ref.statistic / (len(members) * len(others)))
    assert mixed.loc["any", "mean_effect"] == pytest.approx(effects.loc["L0", members].abs().mean())
    ora_any = table[(table.latent == "L0") & (table.gene_set == "set_up") & (table.test == "ora")
                    & (table.direction == "any")].iloc[0]
    top_abs = scores.abs().sort_values(ascending=False).index[:15]
    k_abs = len(set(top_abs) & set(sets["set_up"]))
    assert ora_any.overlap == k_abs and ora_any.pvalue == pytest.approx(stats.hypergeom.sf(k_abs - 1, M, 10, 15))

    # FDR: BH within (latent, source, test) families, both directions together
    for _, family in table.groupby(["latent", "test"]):
        assert len(family) == 12
        np.testing.assert_allclose(family["fdr"], stats.false_discovery_control(family["pvalue"]))
    # sorted by latent (row order of effects) then fdr
    assert list(pd.unique(table["latent"])) == ["L0", "L1", "L2"]
    for _, family in table.groupby("latent"):
        assert family["fdr"].is_monotonic_increasing
    # the best row of L0 is set_up (up, or any: as significant); of L1 set_down (down or any)
    best0, best1 = table[table.latent == "L0"].iloc[0], table[table.latent == "L1"].iloc[0]
    assert best0.gene_set == "set_up" and best0.direction in ("up", "any")
    assert best1.gene_set == "set_down" and best1.direction in ("down", "any")


def test_enrich_latents_zero_effects_and_errors():
    effects, sets = _toy_effects()
    zero = effects.copy()
    zero.loc["L2"] = 0.0  # a collapsed latent: no gene is drawn, no rank test is defined
    table = enrich_latents(zero, {"toy": sets}, top_n=15)
    l2 = table[table.latent == "L2"]
    assert (l2[l2.test == "ora"]["pvalue"] == 1.0).all() and (l2[l2.test == "ora"]["overlap"] == 0).all()
    assert l2[l2.test == "rank"]["pvalue"].isna().all()
    with pytest.raises(InputError, match="none of its"):
        enrich_latents(effects, {"toy": sets, "mouse": {"m": ["Foo", "Bar"]}})
    with pytest.raises(InputError, match="no gene set has between"):
        enrich_latents(effects, {"toy": sets}, min_size=50, max_size=60)
    with pytest.raises(InputError, match="unknown enrichment test"):
        enrich_latents(effects, {"toy": sets}, tests=("gsea",))
    with pytest.raises(InputError, match="unknown direction"):
        enrich_latents(effects, {"toy": sets}, directions=("sideways",))
    only_rank = enrich_latents(effects, {"toy": sets}, tests=("rank",), directions=("up", "down"))
    assert set(only_rank["test"]) == {"rank"} and set(only_rank["direction"]) == {"up", "down"}


def test_enrich_latents_ties_put_the_stronger_set_first():
    """Two sets wholly among the drawn genes tie on p-value; the one moved more comes first."""
    genes = [f"G{i:02d}" for i in range(40)]
    values = np.zeros(40)
    values[:5] = [3.0, 3.1, 3.2, 3.3, 3.4]  # strong set
    values[5:10] = [1.0, 1.1, 1.2, 1.3, 1.4]  # weaker set, also in the top 10
    values[10:] = np.linspace(-0.5, 0.5, 30)
    effects = pd.DataFrame([values], index=["L0"], columns=genes)
    sets = {"a_weak": genes[5:10], "b_strong": genes[0:5], "rest": genes[10:40]}
    table = enrich_latents(effects, {"s": sets}, top_n=10, tests=("ora",), directions=("up",))
    assert table.iloc[0]["pvalue"] == table.iloc[1]["pvalue"]
    assert table["gene_set"].tolist()[:2] == ["b_strong", "a_weak"]


# --------------------------------------------------------------------------- perturbations
def test_perturbation_set_enrichment_known_answer():
    universe = [f"P{i}" for i in range(20)]
    groups = {"mediator": ["p0", "P1", "P2", "P3", "OTHER"], "pair": ["P10", "P11"], "single": ["P5"]}
    targets = {"L0": ["P0", "P1", "P2", "P9"], "L1": [], "L2": ["P10"]}
    table = perturbation_set_enrichment(targets, groups, universe, descriptions={"mediator": "Mediator complex"})
    assert list(table.columns) == list(PERTURBATION_ENRICHMENT_COLUMNS)
    assert set(table["group"]) == {"mediator", "pair"}  # 'single' below min_size
    assert list(pd.unique(table["latent"])) == ["L0", "L2"]  # L1 has no target
    row = table[(table.latent == "L0") & (table.group == "mediator")].iloc[0]
    assert (row.overlap, row.n_targets, row.group_size) == (3, 4, 4)
    assert row.pvalue == pytest.approx(stats.hypergeom.sf(2, 20, 4, 4))
    assert row.statistic == pytest.approx((3 / 4) / (4 / 20))
    assert row.perturbations == "P0,P1,P2" and row.description == "Mediator complex"
    l0 = table[table.latent == "L0"]
    np.testing.assert_allclose(l0["fdr"], stats.false_discovery_control(l0["pvalue"]))
    assert l0.iloc[0]["group"] == "mediator"
    with pytest.raises(InputError, match="no perturbation group"):
        perturbation_set_enrichment(targets, {"x": ["A", "B"]}, universe)


# --------------------------------------------------------------------------- real files
def _needs(path: Path):
    if not path.exists():
        pytest.skip(f"shared data file {path} is absent")


def test_real_gene_set_files():
    for name in ("h.all.v7.0.symbols.gmt", "enrichr.GO_Biological_Process_2021.gmt", "enrichr.KEGG_2016.gmt",
                 "CORUM_coreComplexes_PCprophet.txt"):
        _needs(GENESETS / name)
    hallmark = read_gene_sets(GENESETS / "h.all.v7.0.symbols.gmt")
    assert len(hallmark) == 50 and "HALLMARK_INTERFERON_GAMMA_RESPONSE" in hallmark
    assert all(20 <= len(g) <= 210 for g in hallmark.values())
    go = read_gene_sets(GENESETS / "enrichr.GO_Biological_Process_2021.gmt")
    assert len(go) == 6036
    kegg = read_gene_sets(GENESETS / "enrichr.KEGG_2016.gmt")
    assert len(kegg) == 293
    corum = read_gene_sets(GENESETS / "CORUM_coreComplexes_PCprophet.txt")
    assert 1500 < len(corum) < 5000
    mediator = [name for name in corum if "Mediator" in name]
    assert mediator and any("MED12" in corum[m] for m in mediator)
    mouse = read_gene_sets(GENESETS / "CORUM_coreComplexes_PCprophet.txt", organism="Mouse")
    assert 0 < len(mouse) < len(corum)
