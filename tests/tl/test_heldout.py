"""Held-out perturbations: the split, the adaptation, the likelihood, and `scvae evaluate`."""

from __future__ import annotations

import hashlib
import math
import types

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from scvi import REGISTRY_KEYS
from typer.testing import CliRunner

from scperturb_vae.data.simulate import simulate_screen
from scperturb_vae.errors import InputError
from scperturb_vae.module.priors import ConditionalGaussianPrior, SparseShiftPrior, StandardNormalPrior
from scperturb_vae.module.vae import PerturbationVAEModule
from scperturb_vae.tl.heldout import (
    HeldoutCells,
    adapt_prior,
    extended_module,
    heldout_cells,
    heldout_log_likelihood,
)
from scperturb_vae.tl.holdout import make_split

runner = CliRunner()


def _sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


# ----------------------------------------------------------------------------- split
def _labels():
    labels = ["control"] * 10 + ["A"] * 9 + ["B"] * 8 + ["C"] * 7 + ["A+C"] * 4
    return pd.Series(labels, index=[f"cell{i}" for i in range(len(labels))])


def test_split_holds_out_every_cell_of_the_held_out_perturbations_and_nothing_else():
    labels = _labels()
    parts = make_split(labels, "control", ["C"], adapt_fraction=0.5, seed=0)
    held = labels.isin(["C", "A+C"])  # combinations holding C are held out too
    assert set(parts[held]) == {"heldout_adapt", "heldout_eval"}
    assert set(parts[~held]) == {"train"}
    assert parts.index.equals(labels.index)  # one part per cell: no cell in two parts
    # each held-out label is split, roughly by the fraction
    assert (parts[labels == "C"] == "heldout_adapt").sum() == 4
    assert (parts[labels == "A+C"] == "heldout_adapt").sum() == 2


def test_split_holds_out_a_combination_alone_when_it_is_named():
    labels = _labels()
    parts = make_split(labels, "control", ["A+C"], adapt_fraction=0.5, seed=0)
    held = labels == "A+C"  # its singles A and C keep training
    assert set(parts[held]) == {"heldout_adapt", "heldout_eval"}
    assert set(parts[~held]) == {"train"}
    # the order of the parts does not matter
    assert make_split(labels, "control", ["C+A"], adapt_fraction=0.5, seed=0).equals(parts)


def test_split_is_seeded():
    labels = _labels()
    a = make_split(labels, "control", ["A", "B"], seed=3)
    b = make_split(labels, "control", ["A", "B"], seed=3)
    c = make_split(labels, "control", ["A", "B"], seed=4)
    assert a.equals(b)
    assert not a.equals(c)


def test_split_refuses_a_perturbation_with_one_cell():
    labels = pd.Series(["control", "control", "A", "A", "B"], index=list("abcde"))
    with pytest.raises(InputError, match="'B' has 1 cell"):
        make_split(labels, "control", ["B"])


def test_split_refuses_nothing_held_out_and_bad_fraction():
    with pytest.raises(InputError, match="no cell"):
        make_split(_labels(), "control", ["Z"])
    with pytest.raises(InputError, match="between 0 and 1"):
        make_split(_labels(), "control", ["A"], adapt_fraction=1.0)


# ----------------------------------------------------------------------------- likelihood of new perturbations
def _one_latent_module(prior):
    torch.manual_seed(0)
    table = torch.tensor([[-1], [0], [1]])  # control, A, B
    module = PerturbationVAEModule(6, table, prior, n_latent=1, n_hidden=16, likelihood="poisson")
    module.eval()
    return module


def _cells(n_new_index: int, n=6, n_genes=6, seed=0) -> HeldoutCells:
    gen = torch.Generator().manual_seed(seed)
    x = torch.poisson(torch.rand(n, n_genes, generator=gen) * 20 + 1).numpy()
    return HeldoutCells(
        obs_names=pd.Index([f"c{i}" for i in range(n)]),
        labels=np.array(["NEW"] * n),
        X=sp.csr_matrix(x.astype(np.float32)),
        pert_idx=torch.full((n, 1), n_new_index, dtype=torch.long),
        batch=torch.zeros((n, 1), dtype=torch.long),
        encoder_label=0,
        new_perturbations=["NEW"],
    )


def _quadrature(module, cells: HeldoutCells) -> torch.Tensor:
    """log p(x | a) by numerical integration over the one latent."""
    grid = torch.linspace(-14, 14, 5001)
    x = torch.as_tensor(cells.X.toarray())
    library = torch.log(x.sum(-1, keepdim=True))
    z = grid.view(-1, 1, 1).expand(-1, x.shape[0], 1)
    lib = library.unsqueeze(0).expand(len(grid), *library.shape)
    with torch.no_grad():
        px = module.generative(z, lib, cells.batch)["px"]
        log_joint = px.log_prob(x).sum(-1) + module.prior.log_prob(z, cells.pert_idx).sum(-1)
    return torch.logsumexp(log_joint, 0) + math.log((grid[1] - grid[0]).item())


@pytest.mark.parametrize("kind", ["svae+", "ivae"])
def test_heldout_likelihood_of_a_new_perturbation_matches_numerical_integration(kind):
    prior = SparseShiftPrior(1, 2) if kind == "svae+" else ConditionalGaussianPrior(1, 2)
    module = extended_module(types.SimpleNamespace(module=_one_latent_module(prior)), 1)
    assert module.prior.n_perturbations == 3
    with torch.no_grad():  # give the new perturbation (index 2) a real effect
        if kind == "svae+":
            module.prior.shift[2] = 2.0
            module.prior.mask_logit[2] = 0.5
        else:
            module.prior.mean[2] = -1.2
            module.prior.log_var[2] = 0.6
    cells = _cells(2)
    ll, se = heldout_log_likelihood(module, cells, n_samples=3000, n_samples_per_pass=500, seed=1)
    exact = _quadrature(module, cells).numpy()
    assert np.all(se > 0)
    assert np.all(np.abs(ll - exact) < 5 * se + 0.02), (ll, exact, se)


def test_new_perturbations_start_at_no_effect():
    """Zero-shot: a new perturbation's prior is the control's N(0, I)."""
    for prior in (SparseShiftPrior(1, 2), ConditionalGaussianPrior(1, 2)):
        module = extended_module(types.SimpleNamespace(module=_one_latent_module(prior)), 1)
        z = torch.linspace(-3, 3, 7).view(-1, 1)
        new = module.prior.log_prob(z, torch.full((7, 1), 2, dtype=torch.long))
        control = module.prior.log_prob(z, torch.full((7, 1), -1, dtype=torch.long))
        torch.testing.assert_close(new, control)


@pytest.mark.parametrize("kind", ["svae+", "ivae"])
def test_adaptation_changes_only_the_new_parameters_and_finds_the_shift(kind):
    prior = SparseShiftPrior(1, 2, beta_k=2.0) if kind == "svae+" else ConditionalGaussianPrior(1, 2)
    base = _one_latent_module(prior)
    module = extended_module(types.SimpleNamespace(module=base), 1)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    cells = _cells(2, n=40)
    # the encoder is frozen: its posterior means are what the new prior should move to
    with torch.inference_mode():
        x = torch.as_tensor(cells.X.toarray())
        tensors = {REGISTRY_KEYS.X_KEY: x, REGISTRY_KEYS.LABELS_KEY: torch.zeros(40, 1, dtype=torch.long),
                   REGISTRY_KEYS.BATCH_KEY: cells.batch}
        q_mean = module.inference(**module._get_inference_input(tensors))["qz"].loc.mean().item()
    info = adapt_prior(module, cells, n_steps=400, lr=0.05, seed=0)
    assert info["adapted"] and info["objective_last"] < info["objective_first"]
    after = module.state_dict()
    for key, old in before.items():
        new = after[key]
        if key in ("prior.shift", "prior.mask_logit", "prior.mean", "prior.log_var"):
            torch.testing.assert_close(new[:2], old[:2])  # trained perturbations untouched
            if not (kind == "ivae" and key == "prior.log_var") and not (kind == "svae+" and key == "prior.mask_logit"):
                assert not torch.allclose(new[2:], old[2:]), key  # the new one moved
        else:
            torch.testing.assert_close(new, old)  # networks, dispersion, buffers
    # the adapted prior's mean sits near the mean of the cells' posterior means
    # (sVAE+: the mixture's mean pi * mu)
    if kind == "svae+":
        moved = (torch.sigmoid(module.prior.mask_logit[2, 0]) * module.prior.shift[2, 0]).item()
    else:
        moved = module.prior.mean[2, 0].item()
    assert abs(moved - q_mean) < 0.25 * max(1.0, abs(q_mean)), (moved, q_mean)


def test_vae_has_nothing_to_adapt():
    module = extended_module(types.SimpleNamespace(module=_one_latent_module(StandardNormalPrior(1, 2))), 1)
    assert adapt_prior(module, _cells(2))["adapted"] is False


# ----------------------------------------------------------------------------- on trained models
@pytest.fixture(scope="module")
def screen(tmp_path_factory):
    d = tmp_path_factory.mktemp("heldout")
    adata = simulate_screen("paper", seed=0, n_latent=3, n_perturbations=8, n_cells_per_perturbation=100,
                            n_genes=30, n_heldout=2, max_targets=2)
    path = d / "sim.h5ad"
    adata.write_h5ad(path)
    return d, path, list(map(str, adata.uns["simulation"]["heldout_perturbations"]))


@pytest.fixture(scope="module")
def holdout_run(screen):
    from scperturb_vae.pipelines.train import TrainSettings, train_run

    d, path, held = screen
    # K = 10: the default K = 100 asks ~100 nats of evidence per edge, more than 90 cells
    # of a 60-epoch model give (see the recovery sweep)
    s = TrainSettings(adata=str(path), out=str(d / "run_svae"), model="svae+", n_latent=3, max_epochs=60,
                      batch_size=64, holdout_perturbations=held, ll_cells=0, seed=0,
                      model_kwargs={"beta_k": 10.0})
    return train_run(s, progress_bar=False)


def test_held_out_perturbations_are_absent_from_training(holdout_run, screen):
    _, _, held = screen
    model = holdout_run.model
    assert not set(held) & set(model.perturbations)
    labels = model.adata.obs["perturbation"].astype(str)
    assert not labels.isin(held).any()
    split = pd.read_csv(holdout_run.out / "split.csv", index_col=0)["part"]
    assert set(split) == {"train", "validation", "heldout_adapt", "heldout_eval"}
    assert set(split[split.str.startswith("heldout")].index) == set(
        holdout_run.data.adata.obs_names[holdout_run.data.adata.obs["perturbation"].isin(held)]
    )
    assert set(model.adata.obs_names) == set(split.index[split.isin(["train", "validation"])])


def test_load_run_restores_the_model_on_its_training_cells(holdout_run):
    from scperturb_vae.model.runs import load_run

    loaded = load_run(holdout_run.out)
    assert loaded.adata.n_obs == holdout_run.model.adata.n_obs
    np.testing.assert_allclose(
        loaded.model.get_latent_representation(), holdout_run.model.get_latent_representation(), atol=1e-5
    )
    assert sorted(loaded.model.validation_indices) == sorted(holdout_run.model.validation_indices)


def test_adapted_model_explains_held_out_cells_better(holdout_run, screen):
    _, _, held = screen
    model, adata = holdout_run.model, holdout_run.data.adata
    parts = holdout_run.split.reindex(adata.obs_names).to_numpy()
    new = sorted(held)
    eval_cells = heldout_cells(model, adata, np.flatnonzero(parts == "heldout_eval"), new)
    adapt_cells = heldout_cells(model, adata, np.flatnonzero(parts == "heldout_adapt"), new)
    assert eval_cells.pert_idx.max().item() == len(model.perturbations) + 1
    zero = extended_module(model, len(new))
    adapted = extended_module(model, len(new))
    adapt_prior(adapted, adapt_cells, n_steps=300, seed=0)
    ll0, _ = heldout_log_likelihood(zero, eval_cells, n_samples=200, seed=0)
    ll1, se1 = heldout_log_likelihood(adapted, eval_cells, n_samples=200, seed=0)
    # the same importance samples for both: the gain is far above Monte Carlo noise (~0.02)
    assert ll1.mean() > ll0.mean() + 0.2, (ll1.mean(), ll0.mean())
    # the model itself is untouched by adaptation
    assert model.module.prior.n_perturbations == len(model.perturbations)


# ----------------------------------------------------------------------------- the command
def test_evaluate_command_end_to_end(screen, tmp_path):
    from scvae_cli.main import app

    d, path, held = screen
    before = _sha(path)
    out = tmp_path / "ev"
    result = runner.invoke(app, [
        "evaluate", "--adata", str(path), "--holdout-perturbations", ",".join(held), "--models", "svae+,vae",
        "--n-latent", "3", "--max-epochs", "15", "--n-importance", "50", "--adapt-steps", "100",
        "--fewshot", "0,5,all", "--out", str(out), "--no-progress",
    ])
    assert result.exit_code == 0, result.output
    assert _sha(path) == before
    for name in ("nll.csv", "nll_per_perturbation.csv", "nll.md", "nll.png", "fewshot.csv", "fewshot.png",
                 "evaluate.json", "split.csv", "adapted_graph.csv", "runs/svae_plus/run.json", "runs/vae/run.json"):
        assert (out / name).exists(), name
    table = pd.read_csv(out / "nll.csv")
    assert list(table.columns) == ["model", "setting", "nll", "stderr", "n_cells"]
    assert set(table["setting"]) == {"heldout_adapted", "heldout_zeroshot", "heldin"}
    assert np.isfinite(table["nll"]).all() and (table["stderr"] >= 0).all()
    vae = table[table["model"] == "vae"].set_index("setting")["nll"]
    assert vae["heldout_adapted"] == vae["heldout_zeroshot"]  # nothing to adapt: the reference
    per = pd.read_csv(out / "nll_per_perturbation.csv")
    assert set(per["perturbation"]) == set(held)
    fs = pd.read_csv(out / "fewshot.csv")
    assert len(fs) == 6
    assert "heldout_adapted" in result.output and "svae+" in result.output

    # reuse the trained run: the same held-out numbers for sVAE+
    again = tmp_path / "ev2"
    result = runner.invoke(app, ["evaluate", "--model", str(out / "runs" / "svae_plus"), "--n-importance", "50",
                                 "--adapt-steps", "100", "--fewshot", "0,5,all", "--out", str(again)])
    assert result.exit_code == 0, result.output
    t2 = pd.read_csv(again / "nll.csv").set_index("setting")["nll"]
    t1 = table[table["model"] == "svae+"].set_index("setting")["nll"]
    np.testing.assert_allclose(t2.loc[list(t1.index)], t1, rtol=1e-4)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--holdout", "cluster99", "--n-clusters", "3"], "unknown cluster 'cluster99'"),
        (["--holdout", "cluster0", "--n-clusters", "1"], "every perturbation"),
        (["--holdout-perturbations", "NOPE"], "not in column"),
        (["--holdout", "cluster0", "--holdout-perturbations", "P000"], "not both"),
        ([], "nothing to hold out"),
        (["--holdout-perturbations", "P000", "--models", "svae+,bogus"], "unknown model"),
    ],
)
def test_evaluate_bad_inputs_give_one_line(screen, tmp_path, args, message):
    from scvae_cli.main import app

    _, path, _ = screen
    before = _sha(path)
    result = runner.invoke(app, ["evaluate", "--adata", str(path), "--out", str(tmp_path / "o"), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "o").exists()
    assert _sha(path) == before


def test_evaluate_refuses_a_run_without_holdout(screen, tmp_path):
    from scvae_cli.main import app

    _, path, _ = screen
    result = runner.invoke(app, ["train", "--adata", str(path), "--n-latent", "2", "--max-epochs", "2",
                                 "--ll-cells", "0", "--out", str(tmp_path / "plain"), "--no-progress"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["evaluate", "--model", str(tmp_path / "plain"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "without a holdout" in result.output


def test_heldout_cells_map_new_perturbations_after_the_models(holdout_run, screen):
    _, _, held = screen
    model, adata = holdout_run.model, holdout_run.data.adata
    rows = np.flatnonzero(adata.obs["perturbation"].isin(held).to_numpy())
    cells = heldout_cells(model, adata, rows, sorted(held))
    n = len(model.perturbations)
    expected = [n + sorted(held).index(lab) for lab in cells.labels]
    assert cells.pert_idx[:, 0].tolist() == expected
    assert cells.X.shape == (len(rows), adata.n_vars)
