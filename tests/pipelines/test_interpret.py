"""Tests of :mod:`scperturb_vae.pipelines.interpret` (with :mod:`scperturb_vae.model.interpretability` and
:mod:`scperturb_vae.tl.targets`) and ``scvae interpret``.

The gene effects are checked against a decoder whose answer is known in closed form
(``rho = softmax(W z + b_batch)``), the targets against a hand-made graph, the headline
against the ``programs`` simulation (each latent drives its own gene program), and the
command end to end on a tiny run.
"""

from __future__ import annotations

import json
import time
import types

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import SHARED_DATA, sha256
from scipy.special import logsumexp
from typer.testing import CliRunner

from scperturb_vae.errors import InputError
from scperturb_vae.model.interpretability import gene_effects, latent_traversal
from scperturb_vae.pipelines.interpret import OUTPUT_FILES, interpret_run
from scperturb_vae.tl.enrichment import ENRICHMENT_COLUMNS
from scperturb_vae.tl.targets import DENSE_TOP, perturbation_targets

SHARED = SHARED_DATA


# --------------------------------------------------------------------------- a model with a known decoder
N_GENES, N_LATENT = 40, 3


@pytest.fixture(scope="module")
def tiny_model():
    """An sVAE+ (1 epoch) on 210 cells in two batches; the decoder is replaced per test."""
    from scperturb_vae.data.simulate import simulate_screen
    from scperturb_vae.logs import quiet_third_party
    from scperturb_vae.model.models import SVAEPlus

    quiet_third_party()
    adata = simulate_screen("programs", seed=1, n_latent=N_LATENT, n_perturbations=6, n_cells_per_perturbation=30,
                            n_genes=N_GENES, genes_per_program=8, n_heldout=0)
    adata.obs["batch"] = np.where(np.arange(adata.n_obs) % 3 == 0, "b0", "b1")
    SVAEPlus.setup_anndata(adata, perturbation_key="perturbation", control_label="control", batch_key="batch")
    model = SVAEPlus(adata, n_latent=N_LATENT)
    model.train(max_epochs=1, enable_progress_bar=False)
    return model


@pytest.fixture
def softmax_decoder(tiny_model, monkeypatch):
    """Replace the decoder by ``rho = softmax(W z + b[batch])`` and return ``(model, W, b)``."""
    rng = np.random.default_rng(0)
    W = rng.normal(size=(N_GENES, N_LATENT))
    b = 2.0 * rng.normal(size=(2, N_GENES))  # batch offsets: a decoder that ignores batch would be wrong
    Wt, bt = torch.tensor(W, dtype=torch.float32), torch.tensor(b, dtype=torch.float32)

    def generative(z, library, batch_index):
        logits = z @ Wt.T + bt[batch_index.view(-1).long()]
        return {"px": types.SimpleNamespace(scale=torch.softmax(logits, dim=-1))}

    monkeypatch.setattr(tiny_model.module, "generative", generative)
    return tiny_model, W, b


def _batch_codes(model) -> np.ndarray:
    return (model.adata.obs["batch"] == "b1").to_numpy().astype(int)


def _expected_effects(z, W, b, codes):
    """effect_{i,g} = s_i W_{g,i} - mean_c [lse(W(z_c + s_i e_i) + b_c) - lse(W(z_c - s_i e_i) + b_c)] / 2."""
    s = z.std(axis=0)
    out = np.zeros((z.shape[1], W.shape[0]))
    for i in range(z.shape[1]):
        e = np.zeros(z.shape[1])
        e[i] = s[i]
        plus = logsumexp((z + e) @ W.T + b[codes], axis=1)
        minus = logsumexp((z - e) @ W.T + b[codes], axis=1)
        out[i] = s[i] * W[:, i] - np.mean(plus - minus) / 2.0
    return out, s


def test_gene_effects_match_softmax_decoder(softmax_decoder):
    model, W, b = softmax_decoder
    z = model.get_latent_representation(give_mean=True).astype(np.float64)
    expected, s = _expected_effects(z, W, b, _batch_codes(model))
    # every cell (n_cells above n_obs), decoded in chunks of 64 cells
    effects = gene_effects(model, n_cells=10_000, batch_size=64)
    assert effects.shape == (N_LATENT, N_GENES)
    assert list(effects.index) == model.latent_names
    assert list(effects.columns) == list(model.adata.var_names)
    assert effects.attrs["n_cells"] == model.adata.n_obs
    np.testing.assert_allclose([effects.attrs["latent_sd"][n] for n in model.latent_names], s, rtol=1e-5)
    np.testing.assert_allclose(effects.to_numpy(), expected, atol=2e-5)
    # the softmax normaliser matters: the effect is not just s_i W_gi
    assert np.abs(expected - s[:, None] * W.T).max() > 0.01


def test_gene_effects_cell_sample_is_seeded(softmax_decoder):
    model, W, b = softmax_decoder
    n = 50
    first = gene_effects(model, n_cells=n, seed=3, batch_size=16)
    again = gene_effects(model, n_cells=n, seed=3, batch_size=50)
    other = gene_effects(model, n_cells=n, seed=4)
    np.testing.assert_allclose(first.to_numpy(), again.to_numpy(), atol=1e-6)  # float32 chunking
    assert np.abs(first.to_numpy() - other.to_numpy()).max() > 1e-4
    assert first.attrs["n_cells"] == n
    # the documented sample: sorted np.random.default_rng(seed).choice(n_obs, n_cells, replace=False)
    idx = np.sort(np.random.default_rng(3).choice(model.adata.n_obs, size=n, replace=False))
    z = model.get_latent_representation(indices=idx, give_mean=True).astype(np.float64)
    expected, _ = _expected_effects(z, W, b, _batch_codes(model)[idx])
    np.testing.assert_allclose(first.to_numpy(), expected, atol=2e-5)


def test_latent_traversal_matches_softmax_decoder(softmax_decoder):
    model, W, b = softmax_decoder
    z = model.get_latent_representation(give_mean=True).astype(np.float64)
    codes = _batch_codes(model)
    s = z.std(axis=0)
    genes = [model.adata.var_names[3], model.adata.var_names[10].upper()]  # case-insensitive
    frame = latent_traversal(model, "latent01", values=[-1.0, 0.0, 2.0], genes=genes, n_cells=10_000)
    assert list(frame.index) == [-1.0, 0.0, 2.0]
    assert list(frame.columns) == [model.adata.var_names[3], model.adata.var_names[10]]
    for v in (-1.0, 0.0, 2.0):
        shifted = z.copy()
        shifted[:, 1] += v * s[1]
        logits = shifted @ W.T + b[codes]
        log_rho = logits - logsumexp(logits, axis=1, keepdims=True)
        np.testing.assert_allclose(frame.loc[v].to_numpy(), log_rho[:, [3, 10]].mean(0), atol=2e-5)
    default = latent_traversal(model, 2, n_cells=10_000, n_top_genes=4)
    assert default.shape == (9, 4) and default.attrs["latent"] == "latent02"
    # a given unit (the gene effects' sd, so a report has one sd per latent) scales the shifts
    doubled = latent_traversal(model, "latent01", values=[1.0], genes=genes, n_cells=10_000, latent_sd=2 * s[1])
    assert doubled.attrs["latent_sd"] == pytest.approx(2 * s[1])
    np.testing.assert_allclose(doubled.loc[1.0].to_numpy(), frame.loc[2.0].to_numpy(), atol=1e-6)
    with pytest.raises(InputError, match="unknown latent"):
        latent_traversal(model, "latent99")
    with pytest.raises(InputError, match="not in the model"):
        latent_traversal(model, 0, genes=["NOPE"])


def test_gene_effects_real_decoder_eval_mode_and_restored(tiny_model):
    model = tiny_model
    model.module.train()  # dropout on: effects must still be deterministic
    a = gene_effects(model, n_cells=100)
    assert model.module.training  # mode restored
    b = gene_effects(model, n_cells=100)
    model.module.eval()
    np.testing.assert_array_equal(a.to_numpy(), b.to_numpy())
    # antisymmetry of the central difference: the effect of -z_i is minus the effect of z_i
    # (checked on the decoder itself: log rho(z + s e) - log rho(z - s e) for one cell)
    assert np.isfinite(a.to_numpy()).all() and np.abs(a.to_numpy()).max() > 0


# --------------------------------------------------------------------------- targets
def test_perturbation_targets_threshold_rank_dense():
    graph = pd.DataFrame(
        {
            "latent00": [0.9, 0.2, 0.7, 0.4, 0.1],
            "latent01": [0.1, 0.1, 0.1, 0.1, 0.1],
            "latent02": [0.9, 0.8, 0.95, 0.7, 0.6],  # dense: all 5 above 0.5
        },
        index=pd.Index(["A", "B", "C", "D", "E"], name="perturbation"),
    )
    t = perturbation_targets(graph)
    assert list(t.columns) == ["latent", "perturbation", "probability", "rank", "dense"]
    l0 = t[t.latent == "latent00"]
    assert l0["perturbation"].tolist() == ["A", "C"] and l0["rank"].tolist() == [1, 2]
    assert not l0["dense"].any()
    assert (t.latent == "latent01").sum() == 0
    l2 = t[t.latent == "latent02"]
    assert l2["perturbation"].tolist() == ["C", "A", "B", "D", "E"] and l2["dense"].all()
    assert perturbation_targets(graph, top=2).groupby("latent").size().to_dict() == {"latent00": 2, "latent02": 2}
    assert perturbation_targets(graph, threshold=0.85)["perturbation"].tolist() == ["A", "C", "A"]
    # a dense column keeps only DENSE_TOP targets
    wide = pd.DataFrame({"latent00": np.linspace(0.6, 0.99, 30)}, index=[f"P{i:02d}" for i in range(30)])
    dense = perturbation_targets(wide)
    assert len(dense) == DENSE_TOP and dense["perturbation"].iloc[0] == "P29"
    with pytest.raises(InputError):
        perturbation_targets(graph, threshold=1.5)


# --------------------------------------------------------------------------- headline: programs
#: The programs preset made smaller for speed: 6 latents, 30 perturbations x 60 cells, 300 genes
#: (25 per program), one target per perturbation.  The interpretation can only name what the
#: model recovered: with two targets per perturbation, or sVAE+'s default K = 100 (which
#: switched every edge of this preset's graph off in 100-150 epochs), learned latents mixed
#: two programs in some training seeds.  Measured on this configuration (training seeds
#: 0, 1, 2): MCC 0.75-0.83, graph F1 0.79-0.94, top set = true program for 6/6 latents in each.
HEADLINE = {"n_latent": 6, "n_perturbations": 30, "n_cells_per_perturbation": 60, "n_genes": 300,
            "genes_per_program": 25, "n_heldout": 0, "max_targets": 1}
HEADLINE_TRAINING = {"max_epochs": 100, "lr": 3e-3, "model_kwargs": {"beta_k": 10.0}}


@pytest.mark.slow
def test_programs_top_set_is_the_true_program(tmp_path):
    """For >= 90% of the active learned latents, the top enriched set is its true program."""
    import anndata as ad

    from scperturb_vae.data.genesets import write_gmt
    from scperturb_vae.data.simulate import programs_to_gene_sets, simulate_screen
    from scperturb_vae.pipelines.train import TrainSettings, train_run
    from scperturb_vae.tl.metrics import mean_correlation_coefficient

    adata = simulate_screen("programs", seed=0, **HEADLINE)
    h5, gmt = tmp_path / "sim.h5ad", tmp_path / "programs.gmt"
    adata.write_h5ad(h5)
    write_gmt(programs_to_gene_sets(adata), gmt)
    # one thread: on a loaded 2-core machine two torch threads took 300 s instead of 17 s
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.perf_counter()
        train_run(TrainSettings(adata=str(h5), out=str(tmp_path / "run"), model="svae+", n_latent=HEADLINE["n_latent"],
                                ll_cells=0, **HEADLINE_TRAINING), progress_bar=False)
        train_s = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    result = interpret_run(tmp_path / "run", [gmt], tmp_path / "interp")

    latent = ad.read_h5ad(tmp_path / "run" / "latent.h5ad")
    names = list(latent.var_names)
    mcc = mean_correlation_coefficient(adata.obsm["z_true"], latent.X)
    enrichment = pd.read_csv(tmp_path / "interp" / "enrichment.csv")
    variance = latent.X.var(axis=0)
    n_targets = result["n_targets"]
    checked, hits = 0, 0
    for j, column in enumerate(mcc.assignment):
        learned = names[column]
        if not (variance[column] > 0.01 or n_targets[learned] > 0):
            continue
        checked += 1
        top = enrichment[enrichment["latent"] == learned].iloc[0]
        hits += top["gene_set"] == f"z{j:02d}_program"
        # the true program is significant for its latent
        own = enrichment[(enrichment["latent"] == learned) & (enrichment["gene_set"] == f"z{j:02d}_program")]
        assert own["fdr"].min() < 1e-3
    fraction = hits / checked
    print(f"programs headline: MCC {mcc.mcc:.3f}, {hits}/{checked} active latents' top set is their program "
          f"({fraction:.0%}); training {train_s:.1f} s")
    assert mcc.mcc > 0.6  # the model recovered the latents (else the check below says nothing)
    assert checked >= HEADLINE["n_latent"] - 1
    assert fraction >= 0.9


# --------------------------------------------------------------------------- the command
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A 3-epoch sVAE+ run on a tiny programs screen, its GMT and a cluster table."""
    from scperturb_vae.data.genesets import write_gmt
    from scperturb_vae.data.simulate import programs_to_gene_sets, simulate_screen
    from scperturb_vae.pipelines.train import TrainSettings, train_run

    folder = tmp_path_factory.mktemp("interp_cli")
    adata = simulate_screen("programs", seed=2, n_latent=3, n_perturbations=6, n_cells_per_perturbation=25,
                            n_genes=60, genes_per_program=10, n_heldout=0)
    h5 = folder / "sim.h5ad"
    adata.write_h5ad(h5)
    gmt = folder / "programs.gmt"
    sets = programs_to_gene_sets(adata)
    sets["lower_case_copy"] = [g.lower() for g in sets["z00_program"]]
    write_gmt(sets, gmt)
    clusters = folder / "clusters.tsv"
    pd.DataFrame({"perturbation": ["P000", "P001", "P002", "P003", "P004", "P005"],
                  "cluster": [0, 0, 0, 1, 1, 1]}).to_csv(clusters, sep="\t", index=False)
    train_run(TrainSettings(adata=str(h5), out=str(folder / "run"), model="svae+", n_latent=3, max_epochs=3,
                            ll_cells=0), progress_bar=False)
    return folder


def _invoke(*args):
    from scvae_cli.main import app

    return CliRunner().invoke(app, [str(a) for a in args])


def _user_error(result, code: int) -> str:
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr, result.exception)
    assert isinstance(result.exception, SystemExit)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: ") and sum(line.startswith("error") for line in lines) == 1
    assert "Traceback" not in result.stderr + result.stdout
    return lines[-1]


def test_cli_end_to_end(tiny_run, tmp_path):
    folder = tiny_run
    inputs = [folder / "sim.h5ad", folder / "programs.gmt", folder / "clusters.tsv", folder / "run" / "run.json"]
    before = {p: sha256(p) for p in inputs}
    out = tmp_path / "interp"
    result = _invoke("interpret", "--run", folder / "run", "--gene-sets", folder / "programs.gmt",
                     "--groups", folder / "clusters.tsv", "--top-n", 10, "--min-size", 3,
                     "--latents", "latent02,latent00", "--out", out)
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    lines = result.stdout.splitlines()
    assert [line.split(" ")[0] for line in lines[:3]] == ["latent00", "latent01", "latent02"]
    assert all("up:" in line and "down:" in line and "sets:" in line for line in lines[:3])
    assert lines[-1].startswith(f"wrote {out}")
    for name in OUTPUT_FILES + ("perturbation_enrichment.csv",):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers

    effects = pd.read_csv(out / "gene_effects.csv", index_col=0)
    assert list(effects.index) == ["latent00", "latent01", "latent02"]
    assert effects.shape == (3, 60) and np.isfinite(effects.to_numpy()).all()

    enrichment = pd.read_csv(out / "enrichment.csv")
    assert list(enrichment.columns) == list(ENRICHMENT_COLUMNS)
    assert set(enrichment["test"]) == {"ora", "rank"} and set(enrichment["direction"]) == {"up", "down", "any"}
    assert list(pd.unique(enrichment["latent"])) == ["latent00", "latent01", "latent02"]
    for _, part in enrichment.groupby("latent"):
        assert part["fdr"].dropna().is_monotonic_increasing
    assert (enrichment["pvalue"].between(0, 1)).all() and (enrichment["fdr"] >= enrichment["pvalue"] - 1e-12).all()
    # 3 latents x (3 programs + the lower-case copy of z00_program, matched case-insensitively)
    # x 3 directions x 2 tests
    assert len(enrichment) == 3 * 4 * 3 * 2
    copy = enrichment[enrichment.gene_set == "lower_case_copy"].set_index(["latent", "direction", "test"])["pvalue"]
    original = enrichment[enrichment.gene_set == "z00_program"].set_index(["latent", "direction", "test"])["pvalue"]
    pd.testing.assert_series_equal(copy.sort_index(), original.sort_index())

    targets = pd.read_csv(out / "perturbation_targets.csv")
    assert list(targets.columns) == ["latent", "perturbation", "probability", "rank", "dense", "shift_sd", "n_cells"]
    assert (targets["probability"] > 0.5).all()
    # each target's shift and cells are the run's signed graph's
    edges = pd.read_csv(folder / "run" / "edges.csv").set_index(["perturbation", "latent"])
    for row in targets.itertuples(index=False):
        assert row.shift_sd == pytest.approx(edges.loc[(row.perturbation, row.latent), "shift_sd"])
        assert row.n_cells == edges.loc[(row.perturbation, row.latent), "n_cells"]
    summary_text = (out / "summary.md").read_text()
    assert "sd, " in summary_text and "FDR <= 0.1" in summary_text
    pert = pd.read_csv(out / "perturbation_enrichment.csv")
    assert set(pert["group"]) <= {"cluster0", "cluster1"}

    record = json.loads((out / "interpret.json").read_text())
    assert record["settings"]["traversal_latents"] == ["latent02", "latent00"]
    assert record["gene_sets"]["programs"] == {"n_sets_read": 4, "n_sets_tested": 4, "universe": 30}
    assert record["timing"]["total_s"] > 0 and record["n_cells_used"] == 175  # 6 x 25 + 25 controls
    traversals = pd.read_csv(out / "traversals.csv")
    assert list(pd.unique(traversals["latent"])) == ["latent02", "latent00"]
    summary = (out / "summary.md").read_text()
    latent_part, _, groups_part = summary.partition("## Perturbation groups")
    assert latent_part.count("\n- latent") == 3 and "cluster" in groups_part
    assert all(sha256(p) == h for p, h in before.items())

    # an existing output is refused (exit 3), then replaced with --overwrite; --adata overrides the input path
    line = _user_error(_invoke("interpret", "--run", folder / "run", "--gene-sets", folder / "programs.gmt",
                               "--out", out), 3)
    assert "--overwrite" in line
    moved = tmp_path / "moved.h5ad"
    moved.write_bytes((folder / "sim.h5ad").read_bytes())
    result = _invoke("interpret", "--run", folder / "run", "--gene-sets", folder / "programs.gmt", "--adata", moved,
                     "--min-size", 3, "--out", out, "--overwrite")
    assert result.exit_code == 0, (result.stderr, result.exception)
    assert not (out / "perturbation_enrichment.csv").exists()  # replaced by a run without --groups
    assert all(sha256(p) == h for p, h in before.items())


def test_cli_bad_inputs(tiny_run, tmp_path):
    folder = tiny_run
    gmt = folder / "programs.gmt"
    before = {p: sha256(p) for p in (folder / "sim.h5ad", gmt)}
    out = tmp_path / "never"
    empty = tmp_path / "empty.gmt"
    empty.write_text("")
    mouse = tmp_path / "mouse.gmt"
    mouse.write_text("S\tdesc\tFoo1\tBar2\n")
    foreign = tmp_path / "foreign_clusters.tsv"
    foreign.write_text("perturbation\tcluster\nMED12\t0\nMED13\t0\n")
    cases = [
        (["--run", folder / "run", "--gene-sets", gmt, "--groups", foreign], 2, "no perturbation group has 2"),
        (["--run", tmp_path / "no_run", "--gene-sets", gmt], 2, "does not exist"),
        (["--run", folder / "run", "--gene-sets", tmp_path / "missing.gmt"], 2, "missing.gmt does not exist"),
        (["--run", folder / "run", "--gene-sets", empty], 2, "is empty"),
        (["--run", folder / "run", "--gene-sets", mouse], 2, "is among the model's 60 genes"),
        (["--run", folder / "run", "--gene-sets", gmt, "--latents", "latent07"], 2, "unknown latent(s) latent07"),
        (["--run", folder / "run", "--gene-sets", gmt, "--groups", tmp_path / "nope.tsv"], 2, "does not exist"),
        (["--run", folder / "run", "--gene-sets", gmt, "--top-n", 0], 2, "--top-n"),
    ]
    for args, code, text in cases:
        line = _user_error(_invoke("interpret", *args, "--out", out), code)
        assert text in line, line
        assert not out.exists()
    assert all(sha256(p) == h for p, h in before.items())
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_interpret_run_no_overlap_names_both_sides(tiny_run, tmp_path):
    mouse = tmp_path / "mouse.gmt"
    mouse.write_text("S\tdesc\tFoo1\tBar2\n")
    with pytest.raises(InputError) as err:
        interpret_run(tiny_run / "run", [mouse], tmp_path / "x")
    message = str(err.value)
    assert "'Bar2'" in message and "'gene0000'" in message and "2 genes" in message


# --------------------------------------------------------------------------- real gene sets on real genes
def test_real_gene_sets_overlap_datlinger_genes():
    h5 = SHARED / "datlinger2021_scperturb_testdata.h5ad"
    hallmark = SHARED / "genesets" / "h.all.v7.0.symbols.gmt"
    if not (h5.exists() and hallmark.exists()):
        pytest.skip("shared data files are absent")
    import anndata as ad

    from scperturb_vae.data.genesets import read_gene_sets, restrict_gene_sets

    genes = ad.read_h5ad(h5, backed="r").var_names.astype(str)
    universe, kept = restrict_gene_sets(read_gene_sets(hallmark), list(genes), min_size=5)
    assert 300 < len(universe) < 2000 and len(kept) >= 30


def test_summary_names_latents_only_by_significant_sets():
    from scperturb_vae.tl.targets import summary_lines

    effects = pd.DataFrame({"g1": [1.0, -0.5], "g2": [-0.2, 0.8]}, index=["latent00", "latent01"])
    enrichment = pd.DataFrame({
        "latent": ["latent00", "latent01", "latent01"], "source": ["h", "h", "h"],
        "gene_set": ["SET_A", "SET_B", "SET_C"], "direction": ["up", "up", "up"],
        "test": ["ora", "ora", "rank"], "fdr": [0.01, 0.88, 0.001],
    })
    targets = pd.DataFrame({"latent": ["latent00"], "perturbation": ["JAK2"], "probability": [0.97], "rank": [1],
                            "dense": [False], "shift_sd": [-1.8], "n_cells": [1024]})
    lines = summary_lines(effects, enrichment, targets)
    assert "JAK2 (0.97, -1.80 sd, 1,024 cells)" in lines[0] and "SET_A" in lines[0]
    assert "none at FDR <= 0.1 (best SET_B, FDR 0.88)" in lines[1]  # one test throughout: the rank hit is not mixed in
    assert "SET_C" in summary_lines(effects, enrichment, targets, test="rank")[1]
