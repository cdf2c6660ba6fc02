"""Load test: a screen with 2,000 perturbations, most with 5-10 cells and some with 1-3.

``scvae train`` (sVAE+, 1 epoch) must give a graph with one row per perturbation, and
``scvae evaluate`` holding out a handful of perturbations (some with only 2-3 cells) must
finish with finite likelihoods.  Sizes are kept small everywhere else (30 genes, 4
latents, few importance samples and adaptation steps) so that the test measures how the
code scales with the number of perturbations, not the training itself.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest

N_PERTURBATIONS = 2000
N_FEW = 200  # perturbations with 1-3 cells; the others have 5-10
N_CONTROL = 300

pytestmark = pytest.mark.slow


def many_perturbation_screen(seed: int = 0):
    """2,000 perturbations with unequal cell numbers (simulated with 10 cells each, then
    each perturbation keeps its first 1-3 or 5-10 cells)."""
    from scperturb_vae.data.simulate import simulate_screen

    adata = simulate_screen("paper", n_perturbations=N_PERTURBATIONS, n_cells_per_perturbation=10,
                            n_control_cells=N_CONTROL, n_latent=4, n_genes=30, n_heldout=0, max_targets=2,
                            library_size=5000.0, seed=seed)
    rng = np.random.default_rng(seed)
    perturbations = [str(p) for p in adata.uns["simulation"]["perturbations"]]
    wanted = dict(zip(perturbations, np.concatenate([rng.integers(1, 4, N_FEW),
                                                     rng.integers(5, 11, N_PERTURBATIONS - N_FEW)])))
    labels = adata.obs["perturbation"].astype(str).to_numpy()
    rank = pd.Series(labels).groupby(labels).cumcount().to_numpy()  # position of a cell within its label
    limit = np.array([wanted.get(lab, N_CONTROL) for lab in labels])
    adata = adata[rank < limit].copy()
    # genes or cells left without counts would be refused: the library size makes that unlikely
    assert (np.asarray(adata.X.sum(axis=0)).ravel() > 0).all()
    assert (np.asarray(adata.X.sum(axis=1)).ravel() > 0).all()
    return adata, wanted


@pytest.fixture(scope="module")
def screen_file(tmp_path_factory):
    adata, wanted = many_perturbation_screen()
    path = tmp_path_factory.mktemp("many") / "many.h5ad"
    adata.write_h5ad(path)
    return path, wanted


def _invoke(*args):
    from typer.testing import CliRunner

    from scvae_cli.main import app

    start = time.perf_counter()
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result, time.perf_counter() - start


def test_screen_has_unequal_cell_numbers(screen_file):
    import anndata as ad

    path, wanted = screen_file
    counts = ad.read_h5ad(path).obs["perturbation"].astype(str).value_counts()
    assert len(counts) == N_PERTURBATIONS + 1
    assert counts["control"] == N_CONTROL
    per = counts.drop("control")
    assert per.min() == 1 and per.max() == 10
    assert ((per >= 1) & (per <= 3)).sum() == N_FEW
    assert per.to_dict() == {p: int(n) for p, n in wanted.items()}


def test_train_and_evaluate_with_2000_perturbations(screen_file, tmp_path):
    path, wanted = screen_file
    run = tmp_path / "run"
    result, seconds_train = _invoke("train", "--adata", path, "--out", run, "--model", "svae+", "--max-epochs", 1,
                                    "--n-latent", 4, "--batch-size", 512, "--ll-cells", 200, "--min-cells", 5,
                                    "--no-progress")
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    graph = pd.read_csv(run / "intervention_graph.csv", index_col=0)
    assert graph.shape == (N_PERTURBATIONS, 4)
    assert sorted(graph.index.astype(str)) == sorted(wanted)
    assert np.isfinite(graph.to_numpy()).all()
    summary = json.loads((run / "run.json").read_text())
    assert np.isfinite(summary["validation_likelihood"]["nll_mean"])

    # a handful held out: two with 2-3 cells, three with 5-10
    few = [p for p, n in wanted.items() if 2 <= n <= 3][:2]
    many = [p for p, n in wanted.items() if n >= 5][:3]
    held = few + many
    out = tmp_path / "eval"
    result, seconds_eval = _invoke("evaluate", "--adata", path, "--out", out, "--holdout-perturbations", ",".join(held),
                                   "--models", "svae+", "--max-epochs", 1, "--n-latent", 4, "--batch-size", 512,
                                   "--n-importance", 20, "--fewshot", "0,1,all", "--adapt-steps", 20,
                                   "--heldin-cells", 200, "--min-cells", 5, "--no-progress")
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    nll = pd.read_csv(out / "nll.csv")
    assert set(nll["setting"]) == {"heldout_adapted", "heldout_zeroshot", "heldin"}
    assert np.isfinite(nll["nll"]).all() and np.isfinite(nll["stderr"]).all()
    per = pd.read_csv(out / "nll_per_perturbation.csv")
    assert set(per["perturbation"]) == set(held)
    assert np.isfinite(per["nll"]).all()
    fewshot = pd.read_csv(out / "fewshot.csv")
    assert np.isfinite(fewshot["nll"]).all()
    adapted = pd.read_csv(out / "adapted_graph.csv", index_col=0)
    assert sorted(adapted.index.astype(str)) == sorted(held)
    trained = pd.read_csv(out / "runs" / "svae_plus" / "intervention_graph.csv", index_col=0)
    assert len(trained) + len(adapted) == N_PERTURBATIONS
    print(f"\n2,000 perturbations: train {seconds_train:.1f} s, evaluate {seconds_eval:.1f} s")
