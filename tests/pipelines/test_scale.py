"""Out-of-core training (``--backed``) and several processes (``--devices 2 --strategy ddp``).

- A backed file trains from minibatches fetched from disk many at a time (scDataset) and
  gives the in-memory result (the same loader reads both); a held-out split of a backed file is streamed to a training-cells file
  (never read whole) that matches the in-memory subset and disappears with the run.
- Two CPU processes (gloo) train one model through Lightning's DDP; the run folder is
  complete, loadable, and its held-out likelihood matches a single-process run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from typer.testing import CliRunner

from scperturb_vae.data.ondisk import write_rows
from scperturb_vae.data.simulate import simulate_screen
from scperturb_vae.model.runs import load_run
from scvae_cli.main import app

FAST = ["--n-latent", "3", "--no-progress", "--ll-cells", "100"]


@pytest.fixture(scope="module")
def screen(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("scale") / "screen.h5ad"
    adata = simulate_screen(
        preset="paper", n_perturbations=6, n_cells_per_perturbation=60, n_control_cells=60,
        n_genes=30, n_latent=3, n_heldout=0, seed=0,
    )
    adata.X = sp.csr_matrix(adata.X)
    adata.write_h5ad(path)
    return path


def _train(args, out: Path) -> dict:
    result = CliRunner().invoke(app, ["train", *map(str, args), "--out", str(out)])
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return json.loads((out / "run.json").read_text())


def test_write_rows_matches_the_in_memory_subset(screen, tmp_path):
    backed = ad.read_h5ad(screen, backed="r")
    memory = ad.read_h5ad(screen)
    rows = np.flatnonzero(memory.obs["perturbation"].astype(str).to_numpy() != "P001")
    write_rows(backed, rows, tmp_path / "sub.h5ad", block_rows=37)  # blocks that do not divide the rows
    sub = ad.read_h5ad(tmp_path / "sub.h5ad")
    expected = memory[rows].copy()
    assert (sub.X != expected.X).nnz == 0
    assert list(sub.obs_names) == list(expected.obs_names)
    assert "P001" not in sub.obs["perturbation"].cat.categories  # as an in-memory subset
    np.testing.assert_array_equal(sub.obsm["z_true"], expected.obsm["z_true"])
    assert list(sub.var_names) == list(memory.var_names)
    with pytest.raises(ValueError, match="sorted"):
        write_rows(backed, rows[::-1], tmp_path / "bad.h5ad")


def test_backed_training_matches_in_memory(screen, tmp_path):
    args = ["--adata", screen, "--max-epochs", "3", *FAST]
    memory = _train(args, tmp_path / "memory")
    backed = _train([*args, "--backed"], tmp_path / "backed")
    assert backed["settings"]["backed"] is True
    a, b = memory["validation_likelihood"]["nll_mean"], backed["validation_likelihood"]["nll_mean"]
    # one loader reads both (scDataset's fetches): the same cells in the same minibatches
    assert abs(a - b) / a < 1e-6, (a, b)
    la = ad.read_h5ad(tmp_path / "memory" / "latent.h5ad").X
    lb = ad.read_h5ad(tmp_path / "backed" / "latent.h5ad").X
    np.testing.assert_allclose(la, lb, rtol=0, atol=1e-4)


def test_scvi_tools_loader_gives_the_same_fit_from_other_minibatches(screen):
    import scvi

    from scperturb_vae.model.models import SVAEPlus

    fits = {}
    for loader in ("fetch", "scvi"):
        adata = ad.read_h5ad(screen)
        scvi.settings.seed = 0
        SVAEPlus.setup_anndata(adata, perturbation_key="perturbation", control_label="control")
        model = SVAEPlus(adata, n_latent=3)
        model.train(max_epochs=30, loader=loader, enable_progress_bar=False)
        fits[loader] = float(-np.mean(model.get_marginal_ll(indices=model.validation_indices, n_mc_samples=20)))
    assert fits["fetch"] != fits["scvi"]  # other random minibatches
    assert abs(fits["fetch"] - fits["scvi"]) / fits["scvi"] < 0.02, fits
    with pytest.raises(ValueError, match="loader must be one of"):
        model.train(max_epochs=1, loader="torch")


def test_backed_holdout_streams_the_training_cells(screen, tmp_path):
    args = ["--adata", screen, "--max-epochs", "3", *FAST, "--holdout-perturbations", "P001"]
    memory = _train(args, tmp_path / "memory")
    backed = _train([*args, "--backed"], tmp_path / "backed")
    assert memory["resolved"]["n_perturbations"] == backed["resolved"]["n_perturbations"] == 5
    assert memory["holdout"]["n_cells"] == backed["holdout"]["n_cells"]
    assert memory["validation_likelihood"]["nll_mean"] == pytest.approx(backed["validation_likelihood"]["nll_mean"], rel=2e-3)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # the cells' file went with the checkpoint
    run = load_run(tmp_path / "backed")
    assert "P001" not in run.model.perturbations


def test_backed_with_layer_is_refused(screen, tmp_path):
    result = CliRunner().invoke(app, ["train", "--adata", str(screen), "--out", str(tmp_path / "r"), "--backed",
                                      "--layer", "counts", *FAST])
    assert result.exit_code == 2 and "--backed reads the counts from X" in result.stderr


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    # `python -m`: Lightning's DDP launcher starts the other rank by running this command again
    return subprocess.run([sys.executable, "-m", "scvae_cli.main", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600, check=False)


@pytest.mark.slow
def test_two_processes_ddp_match_one(screen, tmp_path):
    common = ["train", "--adata", str(screen), "--max-epochs", "20", *FAST, "--accelerator", "cpu"]
    env = {"OMP_NUM_THREADS": "1"}
    ddp = _cli(*common, "--devices", "2", "--strategy", "ddp", "--out", str(tmp_path / "ddp"), env=env)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single = _cli(*common, "--devices", "1", "--out", str(tmp_path / "single"), env=env)
    assert single.returncode == 0, single.stderr[-3000:]
    assert ddp.stdout.count("wrote ") == 1  # only rank 0 reports and writes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp", "single"]  # no lightning_logs, no leftovers
    s_ddp = json.loads((tmp_path / "ddp" / "run.json").read_text())
    s_one = json.loads((tmp_path / "single" / "run.json").read_text())
    assert s_ddp["settings"]["strategy"] == "ddp" and s_ddp["settings"]["devices"] == "2"
    assert len(pd.read_csv(tmp_path / "ddp" / "history.csv")) == 20
    run = load_run(tmp_path / "ddp")
    assert np.isfinite(run.model.get_latent_representation()).all()
    # each process saw half of every epoch's minibatches (a distributed sampler), with
    # gradients averaged: the same model class of fit, not the same numbers
    a, b = s_ddp["validation_likelihood"]["nll_mean"], s_one["validation_likelihood"]["nll_mean"]
    assert abs(a - b) / b < 0.02, (a, b)


@pytest.mark.slow
def test_two_process_evaluate_matches_one(screen, tmp_path):
    common = ["evaluate", "--adata", str(screen), "--holdout-perturbations", "P001", "--models", "svae+,vae",
              "--n-latent", "3", "--max-epochs", "20", "--n-importance", "20", "--fewshot", "0,all", "--no-progress",
              "--accelerator", "cpu"]
    env = {"OMP_NUM_THREADS": "1"}
    ddp = _cli(*common, "--devices", "2", "--strategy", "ddp", "--out", str(tmp_path / "ddp"), env=env)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single = _cli(*common, "--devices", "1", "--out", str(tmp_path / "single"), env=env)
    assert single.returncode == 0, single.stderr[-3000:]
    assert ddp.stdout.count("wrote ") == 1  # only rank 0 scores, reports and writes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp", "single"]  # no lightning_logs, no leftovers
    info = json.loads((tmp_path / "ddp" / "evaluate.json").read_text())
    assert info["settings"]["strategy"] == "ddp" and info["settings"]["devices"] == "2"
    run = json.loads((tmp_path / "ddp" / "runs" / "svae_plus" / "run.json").read_text())
    assert run["settings"]["strategy"] == "ddp"
    a = pd.read_csv(tmp_path / "ddp" / "nll.csv").set_index(["model", "setting"])["nll"]
    b = pd.read_csv(tmp_path / "single" / "nll.csv").set_index(["model", "setting"])["nll"]
    assert list(a.index) == list(b.index)
    # the train DDP test's tolerance: half of every epoch's minibatches per process, gradients averaged
    assert ((a - b).abs() / b < 0.02).all(), pd.concat([a, b], axis=1)
    split_a = pd.read_csv(tmp_path / "ddp" / "split.csv", index_col=0)["part"]
    split_b = pd.read_csv(tmp_path / "single" / "split.csv", index_col=0)["part"]
    assert split_a.replace("validation", "train").equals(split_b.replace("validation", "train"))


def test_backed_evaluate_predict_matches_in_memory(screen, tmp_path):
    from scperturb_vae.pipelines.evaluate import EvaluateSettings, evaluate

    tables = {}
    for backed in (False, True):
        out = tmp_path / f"ev_{backed}"
        evaluate(EvaluateSettings(out=str(out), adata=str(screen), models=["svae+"], holdout_perturbations=["P001"],
                                  n_latent=3, max_epochs=5, n_importance=10, fewshot=[0, "all"], adapt_steps=50,
                                  heldin_cells=20, predict=True, predict_cells=15, backed=backed),
                 progress_bar=False)
        tables[backed] = pd.read_csv(out / "predict" / "metrics.csv")
    # the same minibatches, the same control samples (read once each from the file), the same scores
    cols = ["ate_pearson", "ate_pearson_top20", "ate_mse"]
    np.testing.assert_allclose(tables[True][cols].to_numpy(float), tables[False][cols].to_numpy(float),
                               rtol=1e-4, atol=1e-6, equal_nan=True)
