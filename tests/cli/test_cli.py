"""Tests of the ``scvae`` command-line program (the ``scvae_cli`` package).

Commands run in-process through ``typer.testing.CliRunner`` (stdout and stderr kept
apart), except the checks that need a fresh interpreter (what ``--help`` imports, the
traceback of ``--debug``).  Models are tiny (a few latents, 1-2 epochs) and trained on
a tiny simulated screen, so the whole file stays fast; the one real-data test is
marked ``slow`` but is still part of the suite.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from helpers import SHARED_DATA, assert_user_error, invoke, leftovers, sha256

REAL_DATA = SHARED_DATA / "datlinger2021_scperturb_testdata.h5ad"
RUN_FILES = ("model", "latent.h5ad", "intervention_graph.csv", "history.csv", "loss_curve.png", "run.json")
# what the tiny trainings share: few latents, no progress bar
FAST = ["--n-latent", "3", "--no-progress"]


# --------------------------------------------------------------------------- helpers


def tiny_counts_adata(*, seed: int = 0, n_genes: int = 10) -> ad.AnnData:
    """60 cells x 10 genes, CSR integer counts (no empty cell or gene), labels control/A/B."""
    rng = np.random.default_rng(seed)
    labels = ["control"] * 20 + ["A"] * 20 + ["B"] * 20
    X = rng.poisson(3.0, size=(len(labels), n_genes)).astype(np.float32)
    X[:, 0] += 1  # no empty cell
    X[0, :] += 1  # no empty gene
    obs = pd.DataFrame({"perturbation": pd.Categorical(labels)},
                       index=[f"cell{i:03d}" for i in range(len(labels))])
    var = pd.DataFrame(index=[f"gene{j:02d}" for j in range(n_genes)])
    return ad.AnnData(X=sp.csr_matrix(X), obs=obs, var=var)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def sim_file(tmp_path_factory) -> Path:
    """A tiny simulated screen: 210 cells x 30 genes, 6 perturbations + control."""
    from scperturb_vae.data.simulate import simulate_screen

    adata = simulate_screen("paper", n_perturbations=6, n_cells_per_perturbation=30, n_latent=4,
                            n_genes=30, n_heldout=1, max_targets=2, seed=0)
    path = tmp_path_factory.mktemp("sim") / "sim.h5ad"
    adata.write_h5ad(path)
    return path


@pytest.fixture(scope="module")
def trained(runner, sim_file, tmp_path_factory):
    """One sVAE+ run (2 epochs, 4 latents) whose outputs several tests check."""
    out = tmp_path_factory.mktemp("trained") / "runs" / "r1"
    result = invoke(runner, "train", "--adata", sim_file, "--out", out, "--max-epochs", 2,
                    "--n-latent", 4, "--no-progress")
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return out, result


@pytest.fixture
def tiny_file(tmp_path) -> Path:
    path = tmp_path / "tiny.h5ad"
    tiny_counts_adata().write_h5ad(path)
    return path


# --------------------------------------------------------------------------- 1. help
def test_help_lists_commands(runner):
    result = invoke(runner, "--help")
    assert result.exit_code == 0, result.stderr
    assert "simulate" in result.stdout
    assert "train" in result.stdout


def test_subcommand_help(runner):
    for command in ("simulate", "train"):
        result = invoke(runner, command, "--help")
        assert result.exit_code == 0, result.stderr
        assert "--out" in result.stdout


def test_version(runner):
    result = invoke(runner, "--version")
    assert result.exit_code == 0
    assert result.stdout.startswith("scvae ")


def test_help_in_subprocess_does_not_import_torch_or_scvi():
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "scvae_cli.main", "--help"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "simulate" in proc.stdout and "train" in proc.stdout

    code = "import sys, scvae_cli.main; print('torch' in sys.modules, 'scvi' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "False"]


MISSING_INPUT_COMMANDS = [
    ["train", "--adata", "/nonexistent/screen.h5ad", "--out", "{tmp}/run"],
    ["evaluate", "--adata", "/nonexistent/screen.h5ad", "--holdout", "cluster0", "--out", "{tmp}/ev"],
    ["evaluate", "--run", "/nonexistent/run", "--out", "{tmp}/ev"],
    ["interpret", "--run", "/nonexistent/run", "--gene-sets", "/nonexistent/sets.gmt", "--out", "{tmp}/in"],
    ["score", "--run", "/nonexistent/run", "--truth", "/nonexistent/sim.h5ad"],
    ["clusters", "--adata", "/nonexistent/screen.h5ad", "--out", "{tmp}/c.csv"],
]


@pytest.mark.parametrize("args", MISSING_INPUT_COMMANDS, ids=lambda a: a[0] + "-" + a[1].lstrip("-"))
def test_a_missing_input_is_reported_before_torch_is_imported(args, tmp_path):
    code = ("import sys, time; from scvae_cli.main import app; start = time.perf_counter()\n"
            "try:\n    app(sys.argv[1:])\nexcept SystemExit as e:\n    code = e.code\n"
            "print(code, 'torch' in sys.modules, round(time.perf_counter() - start, 3))")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    wall = time.perf_counter() - start
    exit_code, torch_loaded, seconds = proc.stdout.split()
    assert exit_code == "2" and torch_loaded == "False", (proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "does not exist" in lines[0], proc.stderr
    # generous bounds (a loaded 2-core machine): the command itself, and the whole process
    assert float(seconds) < 1.0 and wall < 10, (seconds, wall)


# --------------------------------------------------------------------------- 2. simulate
SIM_ARGS = ["--preset", "paper", "--n-perturbations", "5", "--n-cells-per-perturbation", "20",
            "--n-heldout", "1", "--seed", "3",
            # the preset's 15 latents cannot all be targeted by 4 training perturbations
            "--n-latent", "4"]


def test_simulate_writes_ground_truth_and_is_reproducible(runner, tmp_path):
    a, b = tmp_path / "a.h5ad", tmp_path / "b.h5ad"
    for path in (a, b):
        result = invoke(runner, "simulate", "--out", path, *SIM_ARGS)
        assert result.exit_code == 0, (result.stdout, result.stderr)
        assert str(path) in result.stdout
    first, second = ad.read_h5ad(a), ad.read_h5ad(b)
    assert first.n_obs == 6 * 20  # 5 perturbations + as many control cells
    assert "z_true" in first.obsm
    assert first.obsm["z_true"].shape == (first.n_obs, 4)
    assert "simulation" in first.uns
    assert int(first.uns["simulation"]["seed"]) == 3
    x1 = first.X.toarray() if sp.issparse(first.X) else np.asarray(first.X)
    x2 = second.X.toarray() if sp.issparse(second.X) else np.asarray(second.X)
    np.testing.assert_array_equal(x1, x2)
    assert leftovers(tmp_path) == []


def test_simulate_refuses_existing_output_unless_overwrite(runner, tmp_path):
    out = tmp_path / "sim.h5ad"
    assert invoke(runner, "simulate", "--out", out, *SIM_ARGS).exit_code == 0
    before = sha256(out)
    line = assert_user_error(invoke(runner, "simulate", "--out", out, *SIM_ARGS), 3)
    assert "--overwrite" in line
    assert sha256(out) == before

    other_seed = [("4" if a == "3" and SIM_ARGS[i - 1] == "--seed" else a) for i, a in enumerate(SIM_ARGS)]
    result = invoke(runner, "simulate", "--out", out, *other_seed, "--overwrite")
    assert result.exit_code == 0, result.stderr
    assert sha256(out) != before  # replaced (another seed)
    assert ad.read_h5ad(out).uns["simulation"]["seed"] == 4
    assert leftovers(tmp_path) == []


PROGRAM_ARGS = ["--preset", "programs", "--n-latent", "3", "--n-perturbations", "5",
                "--n-cells-per-perturbation", "20", "--n-genes", "40", "--genes-per-program", "5",
                "--n-heldout", "1"]


def test_simulate_programs_writes_gmt(runner, tmp_path):
    out, gmt = tmp_path / "prog.h5ad", tmp_path / "P.gmt"
    result = invoke(runner, "simulate", "--out", out, *PROGRAM_ARGS, "--gmt", gmt)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    lines = gmt.read_text().splitlines()
    assert len(lines) == 3  # one gene set per latent
    adata = ad.read_h5ad(out)
    for line in lines:
        name, _description, *genes = line.split("\t")
        assert len(genes) == 5
        latent = name.replace("_program", "")
        assert set(genes) == set(adata.var_names[adata.var["program"] == latent])


def test_simulate_gmt_needs_programs_preset(runner, tmp_path):
    out, gmt = tmp_path / "sim.h5ad", tmp_path / "P.gmt"
    line = assert_user_error(invoke(runner, "simulate", "--out", out, *SIM_ARGS, "--gmt", gmt), 2)
    assert "--gmt" in line
    assert not out.exists() and not gmt.exists()


def test_simulate_genes_per_program_needs_programs_preset(runner, tmp_path):
    out = tmp_path / "sim.h5ad"
    assert_user_error(invoke(runner, "simulate", "--out", out, *SIM_ARGS, "--genes-per-program", "5"), 2)
    assert not out.exists()


def test_simulate_unknown_preset(runner, tmp_path):
    out = tmp_path / "sim.h5ad"
    line = assert_user_error(invoke(runner, "simulate", "--out", out, "--preset", "nope"), 2)
    assert "nope" in line
    assert not out.exists()


def test_simulate_impossible_sizes(runner, tmp_path):
    # the 'paper' preset's 15 latents with only 4 training perturbations: a clear one-liner
    out = tmp_path / "sim.h5ad"
    assert_user_error(invoke(runner, "simulate", "--out", out, *SIM_ARGS[:-2]), 2)
    assert not out.exists()


# --------------------------------------------------------------------------- 3. train outputs
def test_train_writes_complete_run_folder(trained, sim_file):
    out, result = trained
    for name in RUN_FILES:
        assert (out / name).exists(), name
    assert (out / "model").is_dir()
    assert str(out) in result.stdout
    assert leftovers(out.parent) == []


def test_progress_in_a_log_file_is_plain_lines(sim_file, tmp_path):
    """Not a terminal: a line every 10 epochs (and the first and last) with the losses, no \\r."""
    proc = subprocess.run([sys.executable, "-m", "scvae_cli.main", "train", "--adata", str(sim_file), "--out",
                           str(tmp_path / "r"), "--max-epochs", "12", "--n-latent", "2", "--ll-cells", "0"],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in lines] == ["epoch 1/12", "epoch 10/12", "epoch 12/12"], proc.stderr
    assert all("train loss" in line and "left" in line for line in lines)


def test_report_is_one_page_with_the_graph_in_words_and_warnings(trained):
    out, _ = trained
    report = (out / "report.md").read_text()
    for section in ("## Data", "## Settings", "## Training", "## Graph", "## Warnings", "loss_curve.png"):
        assert section in report
    summary = json.loads((out / "run.json").read_text())
    edges = pd.read_csv(out / "edges.csv")
    drawn = edges[edges["probability"] > 0.5]
    assert f"{len(drawn)} edges with probability > 0.5" in report
    for line in summary["graph"]["edges"][:3]:
        assert line in report
    # two epochs: the report says the graph may not have settled
    assert "Only 2 epochs were trained" in report
    assert summary["training_marks"]["KL warm-up ends"] >= 1


def test_predict_writes_cell_evals_layout(runner, trained, sim_file, tmp_path):
    out, _ = trained
    graph = pd.read_csv(out / "intervention_graph.csv", index_col=0)
    a, b = [str(p) for p in graph.index[:2]]
    result = invoke(runner, "predict", "--run", out, "--perturbations", f"{a},{b},{a}+{b}", "--n-cells", 20,
                    "--out", tmp_path / "pred")
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    pred = ad.read_h5ad(tmp_path / "pred" / "pred.h5ad")
    assert list(pred.obs["target"].cat.categories) == ["control", a, b, f"{a}+{b}"]
    assert (pred.obs["target"].value_counts() == 20).all()
    assert list(pred.var_names) == list(ad.read_h5ad(sim_file, backed="r").var_names)
    totals = np.expm1(pred.X.toarray()).sum(1)
    np.testing.assert_allclose(totals[pred.layers["counts"].sum(1).A1 > 0], 1e4, rtol=1e-3)  # log1p-normalised
    assert pred.uns["scvae_predict"]["control_label"] == "control"
    ate = pd.read_csv(tmp_path / "pred" / "ate.csv", index_col=0)
    assert list(ate.index) == [a, b, f"{a}+{b}"] and np.isfinite(ate.to_numpy()).all()
    bad = invoke(runner, "predict", "--run", out, "--perturbations", "NOPE", "--out", tmp_path / "bad")
    assert "not trained" in assert_user_error(bad, 2) and not (tmp_path / "bad").exists()


def test_readme_notebook_bridge_and_signed_edges(trained, sim_file):
    """The README's "Into a notebook" lines, and the run's edges.csv."""
    import scanpy as sc

    import scperturb_vae as sv

    out, result = trained
    adata = sc.read_h5ad(sim_file)
    sv.tl.embed(adata, str(out))
    np.testing.assert_allclose(adata.obsm["X_svae"], ad.read_h5ad(out / "latent.h5ad").obsm["X_svae"], atol=1e-5)
    sc.pp.neighbors(adata, use_rep="X_svae", n_neighbors=5)
    edges = sv.load_run(out).model.get_signed_graph()
    written = pd.read_csv(out / "edges.csv")
    assert list(written.columns) == ["perturbation", "latent", "probability", "shift_sd", "prior_shift", "n_cells",
                                     "evidence", "direction"]
    assert len(written) == len(edges) == 4 * (adata.obs["perturbation"].nunique() - 1)
    merged = written.merge(edges, on=["perturbation", "latent"], suffixes=("", "_again"))
    np.testing.assert_allclose(merged["probability"], merged["probability_again"], atol=1e-6)
    np.testing.assert_allclose(merged["shift_sd"], merged["shift_sd_again"], atol=1e-3)
    assert set(written["direction"]) <= {"up", "down"}
    assert ((written["shift_sd"] < 0) == (written["direction"] == "down")).all()


def test_train_latent_and_graph(trained, sim_file):
    out, _ = trained
    source = ad.read_h5ad(sim_file)
    latent = ad.read_h5ad(out / "latent.h5ad")
    assert latent.X.shape == (source.n_obs, 4)
    pd.testing.assert_index_equal(latent.obs_names, source.obs_names)
    np.testing.assert_array_equal(latent.obs["perturbation"].astype(str).to_numpy(),
                                  source.obs["perturbation"].astype(str).to_numpy())
    pd.testing.assert_frame_equal(latent.obs, source.obs)

    graph = pd.read_csv(out / "intervention_graph.csv", index_col=0)
    assert list(latent.var_names) == list(graph.columns)
    expected = sorted(set(source.obs["perturbation"].astype(str)) - {"control"})
    assert sorted(graph.index.astype(str)) == expected
    values = graph.to_numpy()
    assert np.isfinite(values).all()
    assert values.min() >= 0.0 and values.max() <= 1.0
    np.testing.assert_allclose(np.asarray(latent.uns["scvae"]["intervention_graph"]), values,
                               rtol=1e-6)
    # scanpy's place and the notebook API's key: sv.tl.embed(adata, run) writes the same
    np.testing.assert_array_equal(latent.obsm["X_svae"], latent.X)
    assert latent.uns["svae"]["obsm_key"] == "X_svae" and latent.uns["svae"]["source"] == "scvae train"
    np.testing.assert_allclose(np.asarray(latent.uns["svae"]["intervention_graph"]), values, rtol=1e-6)
    import scanpy as sc

    sc.pp.neighbors(latent, use_rep="X_svae", n_neighbors=5)
    assert latent.obsp["connectivities"].shape == (latent.n_obs, latent.n_obs)

    history = pd.read_csv(out / "history.csv", index_col=0)
    assert len(history) == 2
    assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_train_run_json(trained, sim_file):
    out, _ = trained
    run = json.loads((out / "run.json").read_text())
    assert run["settings"]["seed"] == 0
    assert run["settings"]["max_epochs"] == 2
    assert run["settings"]["n_latent"] == 4
    assert run["input"]["sha256"] == sha256(sim_file)
    assert Path(run["input"]["path"]) == sim_file.resolve()
    assert "scvi-tools" in run["versions"] and "torch" in run["versions"]
    nll = run["validation_likelihood"]["nll_mean"]
    assert math.isfinite(nll) and nll > 0
    assert run["resolved"]["control_label"] == "control"
    assert run["resolved"]["perturbation_key"] == "perturbation"
    assert run["resolved"]["max_epochs"] == 2


def test_train_model_loads_and_reproduces_latent(trained, sim_file):
    import scperturb_vae

    out, _ = trained
    model = scperturb_vae.SVAEPlus.load(str(out / "model"), adata=ad.read_h5ad(sim_file))
    latent = ad.read_h5ad(out / "latent.h5ad")
    np.testing.assert_allclose(model.get_latent_representation(), latent.X, atol=1e-5)


def test_train_leaves_input_unchanged(trained, sim_file):
    out, _ = trained
    run = json.loads((out / "run.json").read_text())
    assert sha256(sim_file) == run["input"]["sha256"]
    assert sorted(p.name for p in sim_file.parent.iterdir()) == [sim_file.name]


# --------------------------------------------------------------------------- 4. models and options
@pytest.mark.parametrize(
    "extra",
    [["--model", "svae"], ["--model", "ivae"], ["--model", "vae"], ["--model", "vae", "--tc-beta", "2"]],
    ids=["svae", "ivae", "vae", "vae-tc"],
)
def test_train_other_models(runner, sim_file, tmp_path, extra):
    out = tmp_path / "run"
    result = invoke(runner, "train", "--adata", sim_file, "--out", out, "--max-epochs", 1, *FAST, *extra)
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    graph = pd.read_csv(out / "intervention_graph.csv", index_col=0)
    assert graph.shape == (6, 3)
    assert graph.to_numpy().min() >= 0.0 and graph.to_numpy().max() <= 1.0
    run = json.loads((out / "run.json").read_text())
    assert run["settings"]["model"] == extra[1]
    if "--tc-beta" in extra:
        assert run["settings"]["model_kwargs"] == {"tc_beta": 2.0}


@pytest.mark.parametrize(
    "args, code, fragment",
    [
        (["--model", "vae", "--beta-k", "5"], 2, "--beta-k"),
        (["--model", "svae+", "--sparsity-penalty", "5"], 2, "--sparsity-penalty"),
        (["--model", "foo"], 2, "foo"),
        (["--likelihood", "gauss"], 2, "gauss"),
        (["--n-latent", "0"], 2, "--n-latent"),
        (["--max-epochs", "0"], 2, "--max-epochs"),
        (["--batch-size", "1"], 2, "--batch-size"),
    ],
    ids=["beta-k-vae", "sparsity-svae+", "model-foo", "likelihood", "n-latent", "max-epochs", "batch-size"],
)
def test_train_bad_options(runner, sim_file, tmp_path, args, code, fragment):
    out = tmp_path / "run"
    line = assert_user_error(invoke(runner, "train", "--adata", sim_file, "--out", out, *args), code)
    assert fragment in line
    assert not out.exists()


def test_train_typer_usage_errors(runner, sim_file, tmp_path):
    # Typer's own usage errors (missing or unknown options, bad types) also exit 2
    assert invoke(runner, "train", "--adata", sim_file).exit_code == 2
    assert invoke(runner, "train", "--adata", sim_file, "--out", tmp_path / "r", "--nope").exit_code == 2
    assert invoke(runner, "train", "--adata", sim_file, "--out", tmp_path / "r",
                  "--n-latent", "three").exit_code == 2
    assert not (tmp_path / "r").exists()


# --------------------------------------------------------------------------- 5. reproducibility
def test_train_is_reproducible(runner, sim_file, tmp_path):
    def run(name: str, seed: int):
        out = tmp_path / name
        result = invoke(runner, "train", "--adata", sim_file, "--out", out, "--max-epochs", 1,
                        "--seed", seed, *FAST)
        assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
        return (ad.read_h5ad(out / "latent.h5ad").X,
                pd.read_csv(out / "intervention_graph.csv", index_col=0))

    x1, g1 = run("a", 7)
    x2, g2 = run("b", 7)
    x3, _ = run("c", 8)
    np.testing.assert_allclose(x1, x2, atol=1e-6)
    pd.testing.assert_frame_equal(g1, g2, check_exact=False, atol=1e-6)
    assert not np.allclose(x1, x3, atol=1e-3)


# --------------------------------------------------------------------------- 6. bad inputs
def _bad_input(kind: str, tmp_path: Path) -> tuple[Path, list[str]]:
    """Build one faulty input in tmp_path; return it and extra command-line arguments."""
    path = tmp_path / "bad.h5ad"
    if kind == "missing":
        return tmp_path / "missing.h5ad", []
    if kind == "directory":
        path = tmp_path / "folder.h5ad"
        path.mkdir()
        (path / "inside.txt").write_text("x")
        return path, []
    if kind == "text":
        path.write_text("cell,gene,count\nc1,g1,3\n")
        return path, []
    adata = tiny_counts_adata()
    extra: list[str] = []
    if kind == "truncated":
        full = tmp_path / "full.h5ad"
        adata.write_h5ad(full)
        data = full.read_bytes()
        full.unlink()
        path.write_bytes(data[: len(data) // 2])
        return path, []
    if kind == "negative":
        adata.X = adata.X.copy()
        adata.X.data[3] = -2.0
    elif kind == "non-integer":
        adata.X = adata.X.toarray() * 0.5 + 0.1
    elif kind == "perturbation-key":
        extra = ["--perturbation-key", "nope"]
    elif kind == "control":
        extra = ["--control", "nope"]
    elif kind == "no-control":
        adata.obs["perturbation"] = pd.Categorical(["baseline"] * 20 + ["A"] * 20 + ["B"] * 20)
    elif kind == "layer":
        extra = ["--layer", "nope"]
    elif kind == "batch-key":
        extra = ["--batch-key", "nope"]
    else:  # pragma: no cover
        raise AssertionError(kind)
    adata.write_h5ad(path)
    return path, extra


BAD_INPUTS = {
    "missing": "does not exist",
    "directory": "directory",
    "text": "not an HDF5",
    "truncated": "cannot read",
    "negative": "negative",
    "non-integer": "non-integer",
    "perturbation-key": "nope",
    "control": "nope",
    "no-control": "--control",
    "layer": "nope",
}


@pytest.mark.parametrize("kind", list(BAD_INPUTS))
def test_train_bad_input(runner, tmp_path, kind):
    path, extra = _bad_input(kind, tmp_path)
    digest = sha256(path) if path.is_file() else None
    before = sorted(p.name for p in tmp_path.iterdir())
    out = tmp_path / "out"
    result = invoke(runner, "train", "--adata", path, "--out", out, *extra, *FAST)
    line = assert_user_error(result, 2)
    assert BAD_INPUTS[kind] in line
    if digest is not None:
        assert sha256(path) == digest
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing created, nothing left


def test_train_unknown_batch_key(runner, tmp_path):
    path, extra = _bad_input("batch-key", tmp_path)
    out = tmp_path / "out"
    result = invoke(runner, "train", "--adata", path, "--out", out, *extra, *FAST)
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: batch column 'nope'")
    assert not out.exists()


def test_train_bad_input_creates_no_parent_folder(runner, tmp_path):
    out = tmp_path / "runs" / "new" / "r1"
    result = invoke(runner, "train", "--adata", tmp_path / "missing.h5ad", "--out", out)
    assert result.exit_code == 2
    assert not (tmp_path / "runs").exists()


def test_log_lines_go_to_current_stderr(runner, tmp_path):
    path, extra = _bad_input("batch-key", tmp_path)  # logs the data summary, then fails fast
    results = [invoke(runner, "train", "--adata", path, "--out", tmp_path / "out", *extra)
               for _ in range(2)]
    for result in results:
        assert result.exit_code == 2
        assert "Traceback" not in result.stderr
        assert "Logging error" not in result.stderr
        assert "control cells" in result.stderr  # the data summary reached this command's stderr


# --------------------------------------------------------------------------- 7. existing output
def test_train_existing_output(runner, sim_file, tmp_path, monkeypatch):
    import scperturb_vae.pipelines.train

    out = tmp_path / "runs" / "r"
    out.mkdir(parents=True)
    (out / "keep.txt").write_text("precious")

    def must_not_read(*args, **kwargs):  # the refusal must come before the input is read
        raise AssertionError("the input was read although the output exists")

    with monkeypatch.context() as m:
        m.setattr(scperturb_vae.pipelines.train, "open_perturbation_adata", must_not_read)
        line = assert_user_error(
            invoke(runner, "train", "--adata", sim_file, "--out", out, "--max-epochs", 1, *FAST), 3)
    assert "--overwrite" in line
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "precious"

    result = invoke(runner, "train", "--adata", sim_file, "--out", out, "--max-epochs", 1, *FAST,
                    "--overwrite")
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    assert not (out / "keep.txt").exists()
    for name in RUN_FILES:
        assert (out / name).exists(), name
    assert json.loads((out / "run.json").read_text())["settings"]["overwrite"] is True
    assert leftovers(out.parent) == []


# --------------------------------------------------------------------------- 8. unwritable output
@pytest.mark.parametrize("where", ["proc", "under-file"])
def test_train_unwritable_output(runner, sim_file, tmp_path, where):
    if where == "proc":
        if not Path("/proc").is_dir():
            pytest.skip("no /proc on this system")
        out = Path("/proc/forbidden/run")
    else:
        (tmp_path / "afile").write_text("a regular file")
        out = tmp_path / "afile" / "run"
    line = assert_user_error(
        invoke(runner, "train", "--adata", sim_file, "--out", out, "--max-epochs", 1, *FAST), 3)
    assert "output folder" in line
    assert not out.exists()


def test_simulate_unwritable_output(runner, tmp_path):
    (tmp_path / "afile").write_text("a regular file")
    assert_user_error(invoke(runner, "simulate", "--out", tmp_path / "afile" / "sim.h5ad", *SIM_ARGS), 3)


def test_outputs_respect_umask(runner, tmp_path):
    old = os.umask(0o022)
    try:
        out, gmt = tmp_path / "prog.h5ad", tmp_path / "P.gmt"
        result = invoke(runner, "simulate", "--out", out, *PROGRAM_ARGS, "--gmt", gmt)
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.stderr
    assert oct(out.stat().st_mode & 0o777) == oct(0o644)
    assert oct(gmt.stat().st_mode & 0o777) == oct(0o644)


# --------------------------------------------------------------------------- 9. --debug, exit 1, 130
def test_debug_shows_the_exception(runner, tmp_path):
    from scperturb_vae.errors import InputError

    result = invoke(runner, "--debug", "train", "--adata", tmp_path / "missing.h5ad",
                    "--out", tmp_path / "x")
    assert result.exit_code != 0
    assert isinstance(result.exception, InputError)
    assert "does not exist" in str(result.exception)
    assert not (tmp_path / "x").exists()


def test_debug_prints_traceback_in_subprocess(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "scvae_cli.main", "--debug", "train", "--adata",
         str(tmp_path / "missing.h5ad"), "--out", str(tmp_path / "x")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr
    assert "InputError" in proc.stderr


def test_internal_error_exits_1_with_traceback(runner, sim_file, tmp_path, monkeypatch):
    import scperturb_vae.pipelines.train

    def boom(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(scperturb_vae.pipelines.train, "train_run", boom)
    result = invoke(runner, "train", "--adata", sim_file, "--out", tmp_path / "x")
    assert result.exit_code == 1
    assert isinstance(result.exception, RuntimeError)


def test_interrupt_exits_130(runner, sim_file, tmp_path, monkeypatch):
    import scperturb_vae.pipelines.train

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(scperturb_vae.pipelines.train, "train_run", interrupted)
    result = invoke(runner, "train", "--adata", sim_file, "--out", tmp_path / "x")
    assert result.exit_code == 130
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("interrupted: ") and "was not written" in lines[0], result.stderr
    assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------- 10. real data
@pytest.mark.slow
def test_train_real_data(runner, tmp_path):
    if not REAL_DATA.exists():
        pytest.skip(f"real test data not found at {REAL_DATA}")
    digest = sha256(REAL_DATA)
    out = tmp_path / "runs" / "d"
    # --batch-size 1024: one epoch at the default 128 takes ~35 s on 2 CPU cores (53 steps
    # of ~0.6 s each); with 1024 it takes ~5 s and still exercises the whole pipeline
    result = invoke(runner, "train", "--adata", REAL_DATA, "--perturbation-key", "gene",
                    "--control", "control", "--out", out, "--max-epochs", 1, "--no-progress",
                    "--batch-size", 1024)
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    graph = pd.read_csv(out / "intervention_graph.csv", index_col=0)
    assert graph.shape[0] == 20
    assert "control" not in graph.index
    assert graph.to_numpy().min() >= 0.0 and graph.to_numpy().max() <= 1.0
    latent = ad.read_h5ad(out / "latent.h5ad")
    assert latent.n_obs == 7500
    assert sha256(REAL_DATA) == digest
