"""``scvae evaluate --predict``: the files in cell-eval's layout and the scores beside the baselines."""

import builtins
import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from scperturb_vae.data.simulate import simulate_screen
from scperturb_vae.pipelines.evaluate import EvaluateSettings, evaluate

SCREEN = dict(n_latent=4, n_pathways=6, n_perturbations=24, n_genes=200, genes_per_program=30,
              n_control_cells=900, n_cells_per_perturbation=160, min_cells=60, n_heldout=4, n_combinations=2,
              n_cells_per_combination=120, condition_genes=0, null_fraction=0.25)


@pytest.fixture(scope="module")
def predicted(tmp_path_factory):
    """A small realistic screen: held-out singles (new perturbations) and held-out combinations of trained singles."""
    tmp = tmp_path_factory.mktemp("predict")
    sim = simulate_screen("realistic", seed=0, **SCREEN)
    sim.write_h5ad(tmp / "screen.h5ad")
    info = sim.uns["simulation"]
    singles, combos = list(info["heldout_perturbations"]), list(info["combinations"])
    settings = EvaluateSettings(out=str(tmp / "ev"), adata=str(tmp / "screen.h5ad"), models=["svae+", "vae"],
                                holdout_perturbations=singles + combos, n_latent=4, max_epochs=40, n_importance=10,
                                fewshot=[0, 10, "all"], adapt_steps=200, heldin_cells=50, predict=True,
                                predict_cells=250)
    result = evaluate(settings, progress_bar=False)
    effective = [p for p in singles if p not in set(info["null_perturbations"])]
    return tmp / "ev", result, singles, combos, effective


def test_files_have_cell_evals_layout_and_no_adaptation_cell(predicted):
    out, result, singles, combos, _ = predicted
    held = singles + combos
    split = pd.read_csv(out / "split.csv", index_col=0)["part"]
    real = ad.read_h5ad(out / "predict" / "real.h5ad")
    cells = real.obs_names.str.split("_", n=1).str[1]
    assert set(real.obs["target"]) == {"control", *held}
    parts = split.reindex(cells[real.obs["target"] != "control"])
    assert (parts == "heldout_eval").all()  # evaluation cells only, never an adaptation cell
    assert set(split.reindex(cells[real.obs["target"] == "control"])) <= {"train", "validation"}
    assert (real.obs["target"] != "control").sum() == (split == "heldout_eval").sum()
    # a combination of trained singles is held out alone: its parts keep training
    labels = ad.read_h5ad(out.parent / "screen.h5ad").obs["perturbation"].astype(str)
    for combo in combos:
        assert set(split[labels[labels == combo].index]) == {"heldout_adapt", "heldout_eval"}
        for part in combo.split("+"):
            assert set(split[labels[labels == part].index]) <= {"train", "validation"}
    names = sorted(p.name for p in (out / "predict").glob("pred_*.h5ad"))
    for k in ("0", "10", "all"):
        assert f"pred_svae_plus_k{k}.h5ad" in names and f"pred_vae_k{k}.h5ad" in names
    assert {"pred_control_k0.h5ad", "pred_training_mean_k0.h5ad", "pred_additive_k0.h5ad", "pred_kcell_mean_k10.h5ad",
            "pred_linear_kall.h5ad"} <= set(names)
    pred = ad.read_h5ad(out / "predict" / "pred_svae_plus_kall.h5ad")
    assert list(pred.var_names) == list(real.var_names)
    assert set(pred.obs["target"]) == {"control", *held}
    # no prediction uses a control cell of the real file (their noise would be shared with the truth)
    real_controls = set(cells[real.obs["target"] == "control"])
    for name in ("pred_svae_plus_kall.h5ad", "pred_control_k0.h5ad", "pred_kcell_mean_k10.h5ad"):
        other = ad.read_h5ad(out / "predict" / name)
        used = set(other.obs_names.str.split("_", n=1).str[1])
        assert not used & real_controls, name
    # real and predicted cells alike: log1p of counts per 1e4 in X, the counts in a layer
    for adata in (real, pred):
        counts = adata.layers["counts"][:5].toarray()
        expected = np.log1p(counts / counts.sum(1, keepdims=True) * 1e4)
        assert np.allclose(adata.X[:5].toarray(), expected, atol=1e-4)
        assert np.allclose(counts, np.round(counts))
    assert pred.uns["scvae_predict"]["pert_col"] == "target"


def _scores(out):
    metrics = pd.read_csv(out / "predict" / "metrics.csv", dtype={"k": str})
    per = pd.read_csv(out / "predict" / "metrics_per_perturbation.csv", dtype={"k": str})
    return metrics, per


def test_adapted_svae_plus_predicts_held_out_singles_better_than_the_baselines(predicted):
    out, result, singles, _, effective = predicted
    _, per = _scores(out)
    per = per[per["perturbation"].isin(effective)].groupby(["method", "k"])["ate_pearson_top20"].mean()
    assert len(effective) >= 2
    svae = per[("svae+", "all")]
    assert svae > 0.75, per
    assert svae > per[("control", "0")] + 0.4 and svae > per[("training_mean", "0")] + 0.2
    assert svae >= per[("kcell_mean", "10")]  # the model beats what 10 cells alone say
    assert per[("svae+", "10")] > per[("control", "0")] + 0.3
    # the VAE has no perturbation parameters: its counterfactual is exactly the control, no effect
    assert np.isnan(per[("vae", "all")])
    assert (out / "predict" / "metrics.png").exists()
    assert result["summary"]["predict"]["perturbations"] == sorted(set(singles) | set(result["summary"]["predict"]["groups"]["combination"]))


def test_held_out_combinations_compose_their_trained_parts(predicted):
    out, _, _, combos, _ = predicted
    metrics, per = _scores(out)
    table = metrics[metrics["group"] == "combination"].set_index(["method", "k"])
    assert table.loc[("svae+", "0"), "n_perturbations"] == len(combos)
    svae = table.loc[("svae+", "0"), "ate_pearson_top20"]
    additive = table.loc[("additive", "0"), "ate_pearson_top20"]
    assert svae > 0.8 and additive > 0.8, table["ate_pearson_top20"]
    assert svae > table.loc[("control", "0"), "ate_pearson_top20"] + 0.5
    # nothing to adapt for a combination of trained singles: every k predicts the same
    assert table.loc[("svae+", "all"), "ate_pearson_top20"] == pytest.approx(svae, abs=1e-9)
    assert set(metrics["group"]) == {"single", "combination", "all"}


def test_without_cell_eval_the_files_are_written_and_the_command_says_how_to_score(tmp_path, monkeypatch, caplog):
    sim = simulate_screen("paper", seed=1, n_latent=2, n_perturbations=6, n_cells_per_perturbation=60,
                          n_genes=20, n_heldout=1, max_targets=1)
    sim.write_h5ad(tmp_path / "s.h5ad")
    real_import = builtins.__import__

    def no_cell_eval(name, *args, **kwargs):
        if name.startswith("cell_eval"):
            raise ImportError("no cell-eval here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_cell_eval)
    settings = EvaluateSettings(out=str(tmp_path / "ev"), adata=str(tmp_path / "s.h5ad"), models=["vae"],
                                holdout_perturbations=list(sim.uns["simulation"]["heldout_perturbations"]),
                                n_latent=2, max_epochs=2, n_importance=5, fewshot=[0, "all"], adapt_steps=5,
                                heldin_cells=10, predict=True, predict_cells=50)
    with caplog.at_level(logging.WARNING, logger="scperturb_vae"):
        evaluate(settings, progress_bar=False)
    metrics = pd.read_csv(tmp_path / "ev" / "predict" / "metrics.csv")
    assert list(metrics.columns) == ["method", "k", "group", "n_perturbations", "ate_pearson", "ate_pearson_top20", "ate_mse"]
    assert "cell-eval run" in caplog.text
    assert (tmp_path / "ev" / "predict" / "real.h5ad").exists()
