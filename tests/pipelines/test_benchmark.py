"""``scvae score`` and ``scvae benchmark`` (scperturb_vae.pipelines.benchmark).

One quick benchmark (2 models x 2 seeds, 5 epochs on 780-cell screens) is run once for
the module; ``score`` is checked on its runs and on hand-made run folders with known
answers.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from helpers import assert_user_error, invoke

from scperturb_vae.data.simulate import graph_from_adata, simulate_screen
from scperturb_vae.errors import InputError
from scperturb_vae.pipelines.benchmark import markdown_summary, summarise_results
from scperturb_vae.pipelines.score import score_run

BENCH_FILES = ("results.csv", "summary.csv", "summary.md", "metrics.png", "graph_seed0.png",
               "data/paper_seed0.h5ad", "data/paper_seed1.h5ad")
RUN_FILES = ("model", "latent.h5ad", "intervention_graph.csv", "run.json", "score.json")
UNIT_METRICS = ("mcc_pearson", "mcc_spearman", "r2", "mig", "graph_precision", "graph_recall", "graph_f1",
                "graph_auroc", "graph_average_precision")
COMPARED = (*UNIT_METRICS, "active_units", "n_matched", "graph_tp", "graph_fp", "graph_fn", "validation_nll")


@pytest.fixture(scope="module")
def bench(runner, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "quick"
    result = invoke(runner, "benchmark", "--quick", "--models", "svae+,vae", "--seeds", "0,1", "--out", out)
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return out, result


# --------------------------------------------------------------------------- benchmark
def test_benchmark_writes_every_output(bench):
    out, result = bench
    for name in BENCH_FILES:
        assert (out / name).is_file(), name
    for model in ("svae+", "vae"):
        for seed in (0, 1):
            run = out / "runs" / f"{model}_seed{seed}"
            for name in RUN_FILES:
                assert (run / name).exists(), (run, name)
            info = json.loads((run / "run.json").read_text())
            # the runs were trained in the temporary folder; run.json names the final one
            assert info["settings"]["adata"] == str(out / "data" / f"paper_seed{seed}.h5ad")
            assert info["settings"]["model"] == model and info["settings"]["seed"] == seed
    # nothing temporary left beside or inside the folder
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []
    assert not any(p.name.startswith(".") for p in out.rglob("*"))
    # a progress line per model x seed on stderr, the table on stdout
    progress = [line for line in result.stderr.splitlines() if line.startswith("[")]
    assert len(progress) == 4 and progress[-1].startswith("[4/4] vae seed 1: MCC")
    assert "| svae+ | 2 |" in result.stdout and "| vae | 2 |" in result.stdout


def test_benchmark_results_are_finite_and_in_range(bench):
    out, _ = bench
    results = pd.read_csv(out / "results.csv")
    assert len(results) == 4
    assert sorted(zip(results["model"], results["seed"])) == [("svae+", 0), ("svae+", 1), ("vae", 0), ("vae", 1)]
    for metric in UNIT_METRICS:
        values = results[metric].to_numpy(float)
        assert np.isfinite(values).all() and (values >= 0).all() and (values <= 1).all(), metric
    assert (results["n_latent"] == 4).all() and (results["n_true_latent"] == 4).all()
    assert (results["epochs"] == 5).all()
    assert results["active_units"].between(0, 4).all()
    assert (results["n_matched"] == 4).all()
    # 780 cells x 40 genes at a library size of 1e6: the NLL is hundreds of nats per cell
    assert results["validation_nll"].between(50, 5000).all()
    assert (results["kl_total"] > 0).all() and (results["mutual_information"] > 0).all()
    assert (results["mutual_information"] <= math.log(780) + 0.05).all()
    assert (results["seconds"] >= results["train_seconds"]).all() and (results["train_seconds"] > 0).all()
    # a trained model is far better than noise: MCC of noise on 780 cells is below ~0.15
    assert results["mcc_pearson"].min() > 0.3
    # tp + fn = the true edges, the same for both models of a seed
    edges = results.assign(e=results["graph_tp"] + results["graph_fn"]).groupby("seed")["e"].nunique()
    assert (edges == 1).all()


def test_benchmark_summary_matches_results(bench):
    out, _ = bench
    results = pd.read_csv(out / "results.csv")
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary["model"]) == ["svae+", "vae"] and (summary["n_seeds"] == 2).all()
    for model in ("svae+", "vae"):
        part = results[results["model"] == model]
        row = summary[summary["model"] == model].iloc[0]
        for metric in ("mcc_pearson", "graph_f1", "validation_nll", "train_seconds"):
            assert row[f"{metric}_mean"] == pytest.approx(part[metric].mean())
            assert row[f"{metric}_sd"] == pytest.approx(part[metric].std(ddof=1))
    md = (out / "summary.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| model")]
    assert [r.split("|")[1].strip() for r in rows] == ["svae+", "vae"]
    mean, sd = summary.loc[0, "mcc_pearson_mean"], summary.loc[0, "mcc_pearson_sd"]
    assert f"{mean:.3f} ± {sd:.3f}" in rows[0]


def test_score_reproduces_the_benchmark(runner, bench, tmp_path):
    out, _ = bench
    run, truth = out / "runs" / "vae_seed1", out / "data" / "paper_seed1.h5ad"
    target = tmp_path / "score.json"
    result = invoke(runner, "score", "--run", run, "--truth", truth, "--out", target)
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    for word in ("MCC", "R^2", "MIG", "precision", "AUROC", "average precision", "active units", str(target)):
        assert word in result.stdout, word
    scored = json.loads(target.read_text())
    row = pd.read_csv(out / "results.csv").set_index(["model", "seed"]).loc[("vae", 1)]
    for metric in COMPARED:
        assert scored[metric] == pytest.approx(row[metric], rel=1e-12, abs=1e-12), metric
    # ... and the score.json the benchmark wrote into the run folder
    assert json.loads((run / "score.json").read_text()) == scored
    assert scored["n_cells"] == scored["n_cells_run"] == scored["n_cells_truth"] == 780
    assert sorted(scored["assignment"]) == ["z00", "z01", "z02", "z03"]


def test_score_default_output_and_overwrite(runner, bench, tmp_path):
    out, _ = bench
    run = tmp_path / "run"
    shutil.copytree(out / "runs" / "svae+_seed0", run)
    (run / "score.json").unlink()
    truth = out / "data" / "paper_seed0.h5ad"
    assert invoke(runner, "score", "--run", run, "--truth", truth).exit_code == 0
    assert json.loads((run / "score.json").read_text())["model"] == "svae+"
    line = assert_user_error(invoke(runner, "score", "--run", run, "--truth", truth), 3)
    assert "--overwrite" in line
    assert invoke(runner, "score", "--run", run, "--truth", truth, "--overwrite").exit_code == 0
    assert [p.name for p in run.iterdir() if p.name.startswith(".")] == []


def test_score_user_errors(runner, bench, tmp_path):
    out, _ = bench
    run, truth = out / "runs" / "svae+_seed0", out / "data" / "paper_seed0.h5ad"
    target = tmp_path / "s.json"
    line = assert_user_error(invoke(runner, "score", "--run", tmp_path / "nope", "--truth", truth), 2)
    assert "does not exist" in line
    assert not (tmp_path / "nope").exists()

    plain = ad.read_h5ad(truth)
    del plain.uns["simulation"], plain.obsm["z_true"]
    plain.write_h5ad(tmp_path / "plain.h5ad")
    line = assert_user_error(invoke(runner, "score", "--run", run, "--truth", tmp_path / "plain.h5ad", "--out", target), 2)
    assert "ground truth" in line

    line = assert_user_error(invoke(runner, "score", "--run", run, "--truth", tmp_path / "missing.h5ad", "--out", target), 2)
    assert "missing.h5ad" in line

    renamed = ad.read_h5ad(truth)
    renamed.obs_names = [f"other{i}" for i in range(renamed.n_obs)]
    renamed.write_h5ad(tmp_path / "renamed.h5ad")
    line = assert_user_error(invoke(runner, "score", "--run", run, "--truth", tmp_path / "renamed.h5ad", "--out", target), 2)
    assert "no cell" in line

    incomplete = tmp_path / "incomplete"
    shutil.copytree(run, incomplete)
    (incomplete / "run.json").unlink()
    line = assert_user_error(invoke(runner, "score", "--run", incomplete, "--truth", truth, "--out", target), 2)
    assert "incomplete" in line and "run.json" in line
    assert not target.exists()


# --------------------------------------------------------------------------- benchmark errors
@pytest.mark.parametrize(
    "args, words",
    [
        (["--models", "svae+,bvae"], "bvae"),
        (["--models", ""], "empty"),
        (["--models", "vae,vae"], "twice"),
        (["--seeds", "0,x"], "--seeds"),
        (["--seeds", "-1"], "--seeds"),
        (["--preset", "nope"], "preset"),
        (["--n-latent", "0"], "--n-latent"),
    ],
)
def test_benchmark_rejects_bad_input(runner, tmp_path, args, words):
    line = assert_user_error(invoke(runner, "benchmark", "--quick", "--out", tmp_path / "b", *args), 2)
    assert words in line
    assert not (tmp_path / "b").exists()


def test_benchmark_refuses_existing_output(runner, tmp_path):
    (tmp_path / "b").mkdir()
    assert "--overwrite" in assert_user_error(invoke(runner, "benchmark", "--quick", "--out", tmp_path / "b"), 3)


# --------------------------------------------------------------------------- known answers
@pytest.fixture(scope="module")
def sim(tmp_path_factory) -> Path:
    adata = simulate_screen("paper", n_latent=3, n_perturbations=8, n_cells_per_perturbation=40, n_genes=20,
                            n_heldout=0, max_targets=2, seed=3)
    path = tmp_path_factory.mktemp("sim") / "sim.h5ad"
    adata.write_h5ad(path)
    return path


def _fake_run(folder: Path, latent: np.ndarray, cells, graph: pd.DataFrame, info: dict) -> Path:
    folder.mkdir()
    names = [f"latent{i:02d}" for i in range(latent.shape[1])]
    ad.AnnData(X=latent.astype(np.float32), obs=pd.DataFrame(index=list(cells)),
               var=pd.DataFrame(index=names)).write_h5ad(folder / "latent.h5ad")
    graph.to_csv(folder / "intervention_graph.csv")
    (folder / "run.json").write_text(json.dumps(info))
    return folder


def test_score_run_on_a_permuted_rescaled_truth_is_perfect(sim, tmp_path):
    truth = ad.read_h5ad(sim)
    z = np.asarray(truth.obsm["z_true"], float)
    true_graph = graph_from_adata(truth)
    perm = np.array([2, 0, 1])  # learned column c holds true latent perm[c]
    rng = np.random.default_rng(0)
    cells = rng.permutation(truth.n_obs)[:200]  # a subset of the cells, in another order
    latent = z[cells][:, perm] * np.array([-2.0, 0.5, 3.0]) + 1.0
    latent = np.hstack([latent, np.full((200, 1), 0.25)])  # an extra, collapsed latent
    graph = pd.DataFrame(0.02, index=true_graph.index, columns=[f"latent{i:02d}" for i in range(4)])
    for c, t in enumerate(perm):
        graph.iloc[:, c] = np.where(true_graph.iloc[:, t] == 1, 0.97, 0.02)
    graph = graph.iloc[::-1]  # rows in another order: matched by name
    diagnostics = {"kl_total": 3.5, "mutual_information": 2.0, "active_units": 3}
    run = _fake_run(tmp_path / "run", latent, truth.obs_names[cells], graph,
                    {"settings": {"model": "ivae"}, "validation_likelihood": {"nll_mean": 12.5},
                     "timing": {"train_seconds": 1.0}, "diagnostics": diagnostics})
    score = score_run(run, sim)
    json.dumps(score, allow_nan=False)
    for metric in ("mcc_pearson", "mcc_spearman", "r2", "graph_f1", "graph_precision", "graph_recall",
                   "graph_auroc", "graph_average_precision"):
        assert score[metric] == pytest.approx(1.0, abs=1e-9), metric
    # MIG is on discretised values (20 bins): its plug-in bias, ~(20 - 1)^2 / (2 * 200) = 0.9 nats
    # per pair on 200 cells, keeps it well below 1 even here; it is computed on the matched cells
    from scperturb_vae.tl.metrics import mutual_information_gap

    expected = mutual_information_gap(z[cells], latent.astype(np.float32)).mig
    assert score["mig"] == pytest.approx(expected, abs=1e-12) and score["mig"] > 0.5
    assert score["assignment"] == {"z00": "latent01", "z01": "latent02", "z02": "latent00"}
    assert score["active_units"] == 3 and score["active_mask"] == [True, True, True, False]
    assert (score["n_cells"], score["n_cells_run"], score["n_cells_truth"]) == (200, 200, truth.n_obs)
    assert (score["n_latent"], score["n_true_latent"], score["n_matched"]) == (4, 3, 3)
    assert score["model"] == "ivae" and score["validation_nll"] == 12.5
    assert score["diagnostics"] == diagnostics


def test_score_run_reads_the_graph_columns_by_name(sim, tmp_path):
    truth = ad.read_h5ad(sim)
    z = np.asarray(truth.obsm["z_true"], float)
    true_graph = graph_from_adata(truth)
    graph = pd.DataFrame(true_graph.to_numpy(float), index=true_graph.index,
                         columns=["latent00", "latent01", "latent02"])
    run = _fake_run(tmp_path / "run", z, truth.obs_names, graph[["latent02", "latent00", "latent01"]], {})
    score = score_run(run, sim)
    assert score["graph_f1"] == 1.0 and score["validation_nll"] is None and "diagnostics" not in score
    bad = _fake_run(tmp_path / "bad", z, truth.obs_names, graph.rename(columns={"latent02": "zz"}), {})
    with pytest.raises(InputError, match="not the latents"):
        score_run(bad, sim)
    other = _fake_run(tmp_path / "other", z, truth.obs_names, graph.set_axis([f"Q{i}" for i in range(8)]), {})
    with pytest.raises(InputError, match="no perturbation"):
        score_run(other, sim)


def test_markdown_summary_with_one_seed():
    results = pd.DataFrame({"model": ["vae"], "mcc_pearson": [0.5], "validation_nll": [None]})
    summary = summarise_results(results)
    assert summary.loc[0, "mcc_pearson_mean"] == 0.5 and np.isnan(summary.loc[0, "mcc_pearson_sd"])
    md = markdown_summary(summary)
    row = md.splitlines()[2]
    assert row.startswith("| vae | 1 | 0.500 |") and "±" not in row and "n/a" in row


def test_quick_realistic_benchmark_reports_the_perturbation_level_graph(runner, tmp_path):
    out = tmp_path / "real"
    result = invoke(runner, "benchmark", "--quick", "--preset", "realistic", "--models", "svae+", "--seeds", "0",
                    "--ll-cells", "0", "--out", out)
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    results = pd.read_csv(out / "results.csv")
    truth = graph_from_adata(ad.read_h5ad(out / "data" / "realistic_seed0.h5ad"))
    learned = pd.read_csv(out / "runs" / "svae+_seed0" / "intervention_graph.csv", index_col=0) > 0.5
    effective = truth.any(axis=1)
    has_edge = learned.loc[truth.index].any(axis=1)
    row = results.iloc[0]
    assert row["graph_perturbation_recall"] == pytest.approx(has_edge[effective].mean())
    assert row["graph_null_specificity"] == pytest.approx((~has_edge[~effective]).mean())
    assert "effects with an edge" in (out / "summary.md").read_text()


def test_data_seed_trains_every_seed_on_one_screen_and_reports_edge_jaccard(runner, tmp_path):
    out = tmp_path / "stable"
    result = invoke(runner, "benchmark", "--quick", "--preset", "realistic", "--models", "svae+", "--seeds", "0,1",
                    "--data-seed", "3", "--ll-cells", "0", "--out", out)
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    assert sorted(p.name for p in (out / "data").iterdir()) == ["realistic_seed3.h5ad"]
    truth = graph_from_adata(ad.read_h5ad(out / "data" / "realistic_seed3.h5ad"))
    named = []
    for seed in (0, 1):
        run = out / "runs" / f"svae+_seed{seed}"
        learned = pd.read_csv(run / "intervention_graph.csv", index_col=0) > 0.5
        assignment = json.loads((run / "score.json").read_text())["assignment"]
        by_learned = {v: k for k, v in assignment.items() if v is not None}
        named.append({(p, by_learned.get(c, "unmatched:" + c)) for p in truth.index for c in learned.columns
                      if learned.loc[p, c]})
    union = len(named[0] | named[1])
    expected = len(named[0] & named[1]) / union if union else 1.0
    results = pd.read_csv(out / "results.csv")
    assert results["edge_jaccard"].tolist() == pytest.approx([expected, expected])
    summary = (out / "summary.md").read_text()
    assert "on the screen of seed 3" in summary and "edge Jaccard across seeds" in summary


def test_data_seed_must_be_a_non_negative_integer(runner, tmp_path):
    result = invoke(runner, "benchmark", "--quick", "--seeds", "0", "--data-seed", "-1", "--out", tmp_path / "b")
    assert "--data-seed" in assert_user_error(result, 2)
