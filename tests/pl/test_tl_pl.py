"""Tests of the notebook API: :mod:`scperturb_vae.tl` (scanpy-style tools) and :mod:`scperturb_vae.pl` (plots).

One tiny simulated screen (the paper's generative process: 3 latents, 8 perturbations,
720 cells) is fitted once; the tools are checked against the library functions they wrap
(numbers equal), against the simulation's truth (bounds a wrong wiring would miss), for
what survives ``write_h5ad``, and the plots for their panels, titles, labels and files.
"""

from __future__ import annotations

import subprocess
import sys

import matplotlib

matplotlib.use("Agg")

import anndata as ad  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import scperturb_vae as sv  # noqa: E402
from scperturb_vae import pl, tl  # noqa: E402
from scperturb_vae.data.genesets import write_gmt  # noqa: E402
from scperturb_vae.data.simulate import graph_from_adata, simulate_screen  # noqa: E402
from scperturb_vae.errors import InputError  # noqa: E402
from scperturb_vae.get import fitted as sv_get  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"
N_LATENT = 3
EPOCHS = 40


@pytest.fixture(scope="module", autouse=True)
def _quiet():
    from scperturb_vae.logs import quiet_third_party

    quiet_third_party()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sim():
    return simulate_screen("paper", seed=0, n_latent=N_LATENT, n_perturbations=8, n_cells_per_perturbation=80,
                           n_genes=30, n_heldout=2, max_targets=2)


@pytest.fixture(scope="module")
def fitted(sim):
    adata = sim.copy()
    model = tl.fit(adata, n_latent=N_LATENT, max_epochs=EPOCHS, seed=0)
    return adata, model


@pytest.fixture(scope="module")
def with_effects(fitted):
    adata, model = fitted
    adata = adata.copy()
    effects = tl.gene_effects(adata, model, n_cells=300, seed=1)
    return adata, model, effects


@pytest.fixture(scope="module")
def heldout(sim):
    held = list(sim.uns["simulation"]["heldout_perturbations"])
    adata = sim.copy()
    result = tl.heldout_nll(adata, holdout_perturbations=held, models=("svae+", "vae"), n_latent=N_LATENT,
                            max_epochs=25, n_importance=20, adapt_steps=60, fewshot=(0, 5, "all"), heldin_cells=100,
                            seed=0)
    return adata, result


# =========================================================================== tl.fit / tl.embed
def test_fit_writes_latents_graph_and_settings(fitted, sim):
    adata, model = fitted
    assert type(model).__name__ == "SVAEPlus"
    z = adata.obsm["X_svae"]
    assert z.shape == (sim.n_obs, N_LATENT) and z.dtype == np.float32
    np.testing.assert_allclose(z, model.get_latent_representation(), rtol=1e-5, atol=1e-6)
    entry = adata.uns["svae"]
    graph = entry["intervention_graph"]
    assert list(graph.index) == [f"P{i:03d}" for i in range(8)]  # every perturbation, held-out ones included
    assert list(graph.columns) == list(model.latent_names) == list(entry["latent_names"])
    np.testing.assert_allclose(graph.to_numpy(), model.get_intervention_graph().to_numpy())
    assert ((graph.to_numpy() >= 0) & (graph.to_numpy() <= 1)).all()
    assert entry["model"] == "svae+" and entry["model_class"] == "SVAEPlus" and entry["obsm_key"] == "X_svae"
    assert entry["perturbation_key"] == "perturbation" and entry["control_label"] == "control"
    assert "layer" not in entry and "batch_key" not in entry  # None values are left out
    p = entry["params"]
    assert p["n_latent"] == N_LATENT and p["max_epochs"] == EPOCHS and p["seed"] == 0 and p["lr"] == 1e-3
    assert p["init_params"]["beta_k"] == 100.0 and p["init_params"]["kl_estimator"] == "shared"
    # every epoch, or those up to the early stop (a plateau of the validation loss)
    stopped = entry["training"].get("stopped_early_after_epoch")
    assert entry["training"]["epochs"] == (EPOCHS if stopped is None else stopped) == len(model.history["elbo_train"])
    assert entry["training"]["n_train_cells"] + entry["training"]["n_validation_cells"] == sim.n_obs
    assert np.isfinite(entry["training"]["final_metrics"]["train_loss"])
    assert entry["versions"]["scvi-tools"].startswith("1.") and entry["source"] == "tl.fit"


def test_fit_recovers_the_simulated_truth_and_recovery_matches_the_metrics(fitted):
    from scperturb_vae.tl.metrics import recovery_summary

    adata, _ = fitted
    adata = adata.copy()
    result = tl.recovery(adata)
    direct = recovery_summary(adata.obsm["z_true"], adata.obsm["X_svae"].astype(float), graph_from_adata(adata),
                              adata.uns["svae"]["intervention_graph"])
    assert result == direct
    # the fitted latents track the true ones; shuffled cells would not
    assert result["mcc_pearson"] > 0.6 and result["n_matched"] == N_LATENT
    assert result["graph_auroc"] > 0.6
    assert adata.uns["svae"]["recovery"]["mcc_pearson"] == result["mcc_pearson"]
    shuffled = adata.copy()
    shuffled.obsm["X_svae"] = adata.obsm["X_svae"][np.random.default_rng(0).permutation(adata.n_obs)]
    assert tl.recovery(shuffled)["mcc_pearson"] < 0.3


def test_fit_with_copy_leaves_the_input_alone_and_is_seeded(sim):
    original = sim.copy()
    a, model = tl.fit(original, n_latent=2, max_epochs=3, seed=5, copy=True, key_added="mine", model="vae")
    assert "X_mine" not in original.obsm and "mine" not in original.uns
    assert not any(str(c).startswith("_scvi") for c in original.obs.columns)
    assert a.obsm["X_mine"].shape == (sim.n_obs, 2) and a.uns["mine"]["model"] == "vae"
    assert type(model).__name__ == "VAE" and model.adata is a  # the model is registered with the copy
    b, _ = tl.fit(original, n_latent=2, max_epochs=3, seed=5, copy=True, model="vae")
    c, _ = tl.fit(original, n_latent=2, max_epochs=3, seed=6, copy=True, model="vae")
    assert "X_vae" in b.obsm  # the default key of the VAE
    np.testing.assert_array_equal(a.obsm["X_mine"], b.obsm["X_vae"])
    assert not np.allclose(a.obsm["X_mine"], c.obsm["X_vae"])
    # the VAE's graph is computed from the data: control-vs-perturbation shift scores
    assert a.uns["mine"]["intervention_graph"].shape == (8, 2)


def test_fit_output_survives_h5ad_and_feeds_scanpy(fitted, tmp_path):
    sc = pytest.importorskip("scanpy")
    adata, _ = fitted
    adata = adata.copy()
    tl.recovery(adata)
    path = tmp_path / "fitted.h5ad"
    adata.write_h5ad(path)
    back = ad.read_h5ad(path)
    entry = back.uns["svae"]
    pd.testing.assert_frame_equal(sv_get.graph(back, "svae"), sv_get.graph(adata, "svae"))
    assert [str(x) for x in entry["latent_names"]] == list(adata.uns["svae"]["latent_names"])
    assert entry["params"]["n_latent"] == N_LATENT and entry["params"]["init_params"]["beta_k"] == 100.0
    assert entry["recovery"]["mcc_pearson"] == pytest.approx(adata.uns["svae"]["recovery"]["mcc_pearson"])
    assert tl.recovery(back) == tl.recovery(adata)
    threads = torch.get_num_threads()
    try:
        sc.pp.neighbors(back, use_rep="X_svae")
        sc.tl.umap(back, random_state=0)
    finally:
        # numba's OpenMP layer resets the OpenMP thread count torch uses; the two pools then
        # oversubscribe the CPU and later torch code runs ~10x slower
        torch.set_num_threads(threads)
    assert back.obsm["X_umap"].shape == (adata.n_obs, 2) and np.isfinite(back.obsm["X_umap"]).all()
    # neighbours in the UMAP are cells of the same perturbation more often than chance
    labels = back.obs["perturbation"].astype(str).to_numpy()
    dist = back.obsp["distances"].tocsr()
    same = np.mean([labels[i] == labels[dist.indices[dist.indptr[i]]] for i in range(back.n_obs)])
    assert same > 2.0 / 9.0


@pytest.mark.slow
def test_scanpy_neighbors_at_screen_size(fitted):
    """Above ~4,000 cells scanpy switches to pynndescent: the pinned stack must read its output.

    (pynndescent 0.7 returns sparse arrays that scanpy 1.11 cannot read; constraints.txt
    pins it below 0.7.)  The fitted latents are tiled to 5,000 cells with a little noise.
    """
    sc = pytest.importorskip("scanpy")
    adata, _ = fitted
    z = np.asarray(adata.obsm["X_svae"])
    reps = int(np.ceil(5000 / len(z)))
    rng = np.random.default_rng(0)
    big = ad.AnnData(obs=pd.DataFrame(index=[f"c{i}" for i in range(len(z) * reps)]))
    big.obsm["X_svae"] = np.tile(z, (reps, 1)) + 0.01 * rng.standard_normal((len(z) * reps, z.shape[1]))
    threads = torch.get_num_threads()
    try:
        sc.pp.neighbors(big, use_rep="X_svae", random_state=0)
    finally:
        torch.set_num_threads(threads)
    assert big.obsp["connectivities"].shape == (big.n_obs, big.n_obs)
    assert big.obsp["distances"].nnz >= big.n_obs * 10  # 14 neighbours each, self excluded


def test_embed_repeats_fit_and_loads_run_folders(fitted, sim, tmp_path):
    from scperturb_vae.model.runs import load_run
    from scperturb_vae.pipelines.train import TrainSettings, train_run

    adata, model = fitted
    other = sim.copy()
    assert tl.embed(other, model) is None
    np.testing.assert_allclose(other.obsm["X_svae"], adata.obsm["X_svae"], rtol=1e-5, atol=1e-6)
    pd.testing.assert_frame_equal(sv_get.graph(other, "svae"), sv_get.graph(adata, "svae"))
    assert other.uns["svae"]["source"] == "tl.embed" and "training" not in other.uns["svae"]
    copied = tl.embed(other, model, key_added="again", copy=True)
    assert "X_again" in copied.obsm and "X_again" not in other.obsm

    path = tmp_path / "sim.h5ad"
    sim.write_h5ad(path)
    run = train_run(TrainSettings(adata=str(path), out=str(tmp_path / "run"), n_latent=2, max_epochs=2, ll_cells=0),
                    progress_bar=False)
    target = ad.read_h5ad(path)
    tl.embed(target, run.out)
    entry = target.uns["svae"]
    assert entry["run_dir"] == str(run.out.resolve()) and entry["params"]["run_settings"]["model"] == "svae+"
    assert entry["params"]["run_settings"]["max_epochs"] == 2
    loaded = load_run(run.out)
    np.testing.assert_allclose(target.obsm["X_svae"], loaded.model.get_latent_representation(), rtol=1e-5, atol=1e-6)


# =========================================================================== interpretation
def test_gene_effects_are_the_library_effects_in_varm(with_effects):
    from scperturb_vae.model.interpretability import gene_effects

    adata, model, effects = with_effects
    direct = gene_effects(model, adata, n_cells=300, seed=1)
    np.testing.assert_allclose(effects.to_numpy(), direct.to_numpy())
    stored = adata.varm["svae_gene_effects"]
    assert isinstance(stored, pd.DataFrame) and stored.shape == (adata.n_vars, N_LATENT)
    assert list(stored.index) == list(adata.var_names) and list(stored.columns) == list(model.latent_names)
    np.testing.assert_allclose(stored.to_numpy(), direct.to_numpy().T)
    record = adata.uns["svae"]["gene_effects"]
    assert record["n_cells"] == 300 and record["seed"] == 1
    assert record["latent_sd"]["latent00"] == pytest.approx(direct.attrs["latent_sd"]["latent00"])
    # the latents move genes: not all effects vanish
    assert np.abs(stored.to_numpy()).max(axis=0).min() > 0.01


def test_predict_writes_the_effects_and_returns_cells_in_cell_evals_layout(fitted):
    adata, model = fitted
    adata = adata.copy()
    labels = adata.obs["perturbation"].astype(str)
    a, b = [p for p in model.perturbations][:2]
    cells = tl.predict(adata, model, [a, b, f"{a}+{b}"], n_cells=60, seed=3)
    ate = adata.varm["svae_predicted_ate"]
    assert list(ate.columns) == [a, b, f"{a}+{b}"] and list(ate.index) == list(adata.var_names)
    assert adata.uns["svae"]["prediction"]["n_cells"] == 60
    assert cells.shape == (4 * 60, adata.n_vars)
    assert list(cells.obs["target"].cat.categories) == ["control", a, b, f"{a}+{b}"]
    counts = cells.layers["counts"].toarray()
    assert np.allclose(cells.X.toarray(), np.log1p(counts / counts.sum(1, keepdims=True) * 1e4), atol=1e-4)
    # the predicted effect of a trained perturbation follows its observed one (normalised means)
    x = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
    norm = x / x.sum(1, keepdims=True) * 1e4
    observed = norm[(labels == a).to_numpy()].mean(0) - norm[(labels == "control").to_numpy()].mean(0)
    assert np.corrcoef(ate[a], observed)[0, 1] > 0.8
    again = tl.predict(adata.copy(), model, [a], n_cells=60, seed=3)
    assert (again.layers["counts"] != cells[cells.obs["target"].isin(["control", a])].layers["counts"]).nnz == 0
    with pytest.raises(sv.InputError, match="not trained"):
        tl.predict(adata, model, ["NOT_A_PERTURBATION"])


def _effect_sets(effects: pd.DataFrame) -> dict[str, list[str]]:
    """Per latent the 6 genes it raises most, plus decoy sets of the genes no latent ranks high."""
    sets = {f"up_{lat}": effects.loc[lat].sort_values(ascending=False).index[:6].tolist() for lat in effects.index}
    top = {g for genes in sets.values() for g in genes}
    rest = [g for g in effects.columns if g not in top]
    sets.update({f"decoy{i}": rest[i::3][:6] for i in range(3)})
    return sets


def test_enrich_finds_each_latents_own_set(with_effects, tmp_path):
    adata, _, effects = with_effects
    adata = adata.copy()
    sets = _effect_sets(effects)
    table = tl.enrich(adata, sets, top_n=6, min_size=3)
    ora_up = table[(table["test"] == "ora") & (table["direction"] == "up")]
    for latent in effects.index:
        best = ora_up[ora_up["latent"] == latent].iloc[0]
        assert best["gene_set"] == f"up_{latent}" and best["overlap"] == 6 and best["pvalue"] < 1e-3
    stored = adata.uns["svae"]["enrichment"]
    pd.testing.assert_frame_equal(stored.reset_index(drop=True), table.reset_index(drop=True))
    assert adata.uns["svae"]["enrichment_params"]["universe"]["gene_sets"] == table.attrs["universe"]["gene_sets"]
    # a GMT file gives the same numbers (source named by the file's stem), and the table survives h5ad
    gmt = tmp_path / "mine.gmt"
    write_gmt(sets, gmt)
    from_file = tl.enrich(adata, gmt, top_n=6, min_size=3, store=False)
    assert set(from_file["source"]) == {"mine"}
    np.testing.assert_allclose(from_file["pvalue"].to_numpy(), table["pvalue"].to_numpy())
    adata.write_h5ad(tmp_path / "e.h5ad")
    back = ad.read_h5ad(tmp_path / "e.h5ad")
    assert list(back.uns["svae"]["enrichment"]["gene_set"]) == list(table["gene_set"])
    again = tl.enrich(back, {"src": sets}, top_n=6, min_size=3, store=False)
    np.testing.assert_allclose(again["pvalue"].to_numpy(), table["pvalue"].to_numpy())


def test_user_mistakes_are_one_line_input_errors(fitted, sim):
    adata, model = fitted
    bad = [
        lambda: tl.fit(sim.copy(), model="pca"),
        lambda: tl.fit(sim.copy(), n_latent=0),
        lambda: tl.fit(sim.copy(), max_epochs=0),
        lambda: tl.fit(sim.copy(), max_epochs=1, beta=3.0),  # a VAE option given to sVAE+
        lambda: tl.fit(sim.copy(), max_epochs=1, batch_key="nope"),
        lambda: tl.fit(sim.copy(), key_added=""),
        lambda: tl.fit(sim.X),
        lambda: tl.fit(sim.copy(), perturbation_key="nope"),
        lambda: tl.recovery(sim.copy()),  # nothing fitted
        lambda: tl.recovery(adata, key="nope"),
        lambda: tl.enrich(adata.copy(), {"a": ["gene000"]}),  # no gene effects yet
        lambda: tl.gene_effects(adata.copy(), model, n_cells=0),
        lambda: tl.gene_effects(adata.copy(), "no/such/run"),
        lambda: tl.embed(adata.copy(), object()),
        lambda: tl.embed(adata[:, :10].copy(), model),  # other genes
        lambda: tl.heldout_nll(sim.copy(), holdout_perturbations=["P999"], max_epochs=1),
        lambda: tl.heldout_nll(sim.copy(), holdout_perturbations=["P007"], fewshot=(0, -1)),
        lambda: tl.heldout_nll(sim.copy(), holdout_perturbations=["P007"], models=("vae", "vae")),
        lambda: tl.heldout_nll(sim.copy()),  # nothing held out
    ]
    for call in bad:
        with pytest.raises(InputError) as info:
            call()
        assert "\n" not in str(info.value) and str(info.value)
    two = adata.copy()
    two.uns["other"] = dict(two.uns["svae"], obsm_key="X_other")
    two.obsm["X_other"] = two.obsm["X_svae"]
    with pytest.raises(InputError, match="several fitted models"):
        tl.recovery(two)
    assert tl.recovery(two, key="other")["mcc_pearson"] == tl.recovery(two, key="svae")["mcc_pearson"]


# =========================================================================== held-out likelihood
def test_heldout_nll_scores_the_held_out_perturbations(heldout, sim):
    from scperturb_vae.tl.holdout import make_split

    adata, result = heldout
    assert "heldout" not in adata.uns and "heldout_part" not in adata.obs  # nothing written without key_added
    assert not any(str(c).startswith("_scvi") for c in adata.obs.columns)
    held = ["P006", "P007"]
    assert result.holdout["perturbations"] == held
    expected = make_split(sim.obs["perturbation"], "control", held, adapt_fraction=0.5, seed=0)
    split = result.split
    assert split.index.equals(sim.obs_names)
    pd.testing.assert_series_equal(split.where(split != "validation", "train"), expected, check_names=False)
    counts = split.value_counts()
    assert counts["heldout_adapt"] == 80 and counts["heldout_eval"] == 80 and counts["validation"] > 0

    t = result.table.set_index(["model", "setting"])
    assert list(result.table["model"]) == ["svae+"] * 3 + ["vae"] * 3
    assert list(result.table["setting"][:3]) == ["heldout_adapted", "heldout_zeroshot", "heldin"]
    assert (result.table["nll"] > 0).all() and (result.table["stderr"] >= 0).all()
    assert t.loc[("svae+", "heldout_adapted"), "n_cells"] == 80
    assert t.loc[("svae+", "heldin"), "n_cells"] == min(100, counts["validation"])
    # the VAE has no perturbation parameters: adapting changes nothing
    assert t.loc[("vae", "heldout_adapted"), "nll"] == t.loc[("vae", "heldout_zeroshot"), "nll"]
    # sVAE+ learns the new perturbations' shifts from the adaptation cells (shifts of ~5 sd)
    assert t.loc[("svae+", "heldout_adapted"), "nll"] < t.loc[("svae+", "heldout_zeroshot"), "nll"]

    f = result.fewshot
    assert list(f["adaptation_cells_per_perturbation"][f["model"] == "svae+"]) == [0, 5, "all"]
    assert list(f["n_adaptation_cells"][f["model"] == "svae+"]) == [0, 10, 80]
    svae = f[f["model"] == "svae+"].set_index("adaptation_cells_per_perturbation")
    assert svae.loc[0, "nll"] == t.loc[("svae+", "heldout_zeroshot"), "nll"]
    assert svae.loc["all", "nll"] == t.loc[("svae+", "heldout_adapted"), "nll"]
    per = result.per_perturbation
    assert set(per["perturbation"]) == set(held) and (per.groupby(["model", "setting"])["n_cells"].sum() == 80).all()
    assert list(result.adapted_graph.index) == held and set(result.adapted_graph["model"]) == {"svae+"}
    assert set(result.models) == {"svae+", "vae"} and result.models["vae"].adata.n_obs == counts["train"] + counts[
        "validation"]


def test_heldout_nll_can_store_its_tables(sim, tmp_path):
    adata = sim.copy()
    result = tl.heldout_nll(adata, holdout_perturbations="P007", models="vae", n_latent=2, max_epochs=2,
                            n_importance=5, adapt_steps=2, fewshot=(0, "all"), heldin_cells=20, key_added="ho")
    assert list(adata.uns["ho"]["table"]["setting"]) == ["heldout_adapted", "heldout_zeroshot", "heldin"]
    assert list(adata.obs["ho_part"].cat.categories) == ["train", "validation", "heldout_adapt", "heldout_eval"]
    assert (adata.obs["ho_part"].astype(str) == result.split.to_numpy()).all()
    adata.write_h5ad(tmp_path / "ho.h5ad")
    back = ad.read_h5ad(tmp_path / "ho.h5ad")
    np.testing.assert_allclose(back.uns["ho"]["table"]["nll"].to_numpy(), result.table["nll"].to_numpy())
    assert [str(p) for p in back.uns["ho"]["holdout"]["perturbations"]] == ["P007"]


def test_import_stays_light():
    code = ("import sys, scperturb_vae as sv; sv.tl; sv.pl; "
            "heavy = [m for m in ('torch', 'scvi', 'lightning', 'matplotlib.pyplot') if m in sys.modules]; "
            "assert not heavy, heavy; print(sv.tl.DEFAULT_KEYS['svae+'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "svae"
    assert "tl" in dir(sv) and "pl" in dir(sv)


# =========================================================================== plots
def _texts(labels) -> list[str]:
    return [t.get_text() for t in labels]


def _is_png(path) -> bool:
    return path.exists() and path.read_bytes()[:8] == PNG


def test_graph_heatmap_alone_and_beside_the_truth(fitted, tmp_path):
    import matplotlib.pyplot as plt

    adata, model = fitted
    fig = pl.graph(adata, save=tmp_path / "graph.png", signed=False)
    assert len(fig.axes) == 2  # the heatmap and its colour bar
    ax = fig.axes[0]
    assert ax.get_title().startswith("intervention graph (svae)")
    assert ax.get_xlabel() == "latent" and ax.get_ylabel() == "perturbation"
    assert sorted(_texts(ax.get_yticklabels())) == [f"P{i:03d}" for i in range(8)]
    assert sorted(_texts(ax.get_xticklabels())) == list(model.latent_names)
    # the drawn values are the graph's, in the plotted order
    rows, cols = _texts(ax.get_yticklabels()), _texts(ax.get_xticklabels())
    graph = adata.uns["svae"]["intervention_graph"]
    np.testing.assert_allclose(ax.images[0].get_array(), graph.loc[rows, cols].to_numpy())
    assert _is_png(tmp_path / "graph.png")

    # by default the probabilities carry the direction of each shift (diverging colours)
    fig = pl.graph(adata)
    ax = fig.axes[0]
    rows, cols = _texts(ax.get_yticklabels()), _texts(ax.get_xticklabels())
    shifts = adata.uns["svae"]["edge_shift_sd"].loc[rows, cols].to_numpy()
    expected = graph.loc[rows, cols].to_numpy() * np.sign(shifts)
    np.testing.assert_allclose(ax.images[0].get_array(), expected)
    assert ax.images[0].get_cmap().name == "RdBu_r" and ax.images[0].get_clim() == (-1.0, 1.0)
    assert (expected < -0.5).any() or (expected > 0.5).any()
    assert "signed" in fig.axes[1].get_ylabel()
    # a true graph given as a table is drawn unsigned beside the learned one
    fig = pl.graph(adata, truth=graph_from_adata(adata))
    assert fig.axes[0].images[0].get_cmap().name == "viridis"

    fig = pl.graph(adata, truth=True)
    assert len(fig.axes) == 4
    learned_ax, true_ax = fig.axes[0], fig.axes[1]
    assert "matched to the truth" in learned_ax.get_title() and true_ax.get_title() == "true graph"
    truth = graph_from_adata(adata)
    rows = _texts(learned_ax.get_yticklabels())
    assert sorted(rows) == sorted(truth.index)
    assert _texts(true_ax.get_xticklabels()) == list(truth.columns)
    np.testing.assert_array_equal(true_ax.images[0].get_array(), truth.loc[rows].to_numpy())
    from scperturb_vae.tl.metrics import mean_correlation_coefficient

    assignment = mean_correlation_coefficient(adata.obsm["z_true"], adata.obsm["X_svae"]).assignment
    assert _texts(learned_ax.get_xticklabels()) == [model.latent_names[c] for c in assignment]

    fig, axes = plt.subplots(1, 2)
    assert pl.graph(adata, truth=True, ax=axes) is fig
    with pytest.raises(InputError, match="2 Axes"):
        pl.graph(adata, truth=True, ax=axes[0])
    plt.close(fig)
    with pytest.raises(InputError):
        pl.graph(adata, save=tmp_path / "graph.nope")


def test_latent_panels_on_an_embedding(fitted, tmp_path):
    adata, model = fitted
    adata = adata.copy()
    with pytest.raises(InputError, match="X_umap"):
        pl.latents(adata)
    adata.obsm["X_umap"] = np.asarray(adata.obsm["z_true"][:, :2], dtype=float)  # any 2-d embedding
    fig = pl.latents(adata, basis="umap", ncols=2, save=tmp_path / "latents.png")
    panels = [a for a in fig.axes if a.get_title()]
    assert len(fig.axes) == 2 * N_LATENT and len(panels) == N_LATENT  # one colour bar per panel
    assert [a.get_title() for a in panels] == list(model.latent_names)
    assert panels[0].get_xlabel() == "UMAP1" and panels[0].get_ylabel() == "UMAP2"
    colours = np.sort(np.asarray(panels[1].collections[0].get_array(), dtype=float))
    np.testing.assert_allclose(colours, np.sort(adata.obsm["X_svae"][:, 1].astype(float)), rtol=1e-6)
    assert _is_png(tmp_path / "latents.png")
    fig = pl.latents(adata, latents=["latent02"])
    assert [a.get_title() for a in fig.axes if a.get_title()] == ["latent02"]
    with pytest.raises(InputError, match="unknown latent"):
        pl.latents(adata, latents=["latent09"])


def test_latents_by_perturbation_shows_group_means(fitted, tmp_path):
    adata, _ = fitted
    fig = pl.latents_by_perturbation(adata, save=tmp_path / "means.png")
    ax = fig.axes[0]
    labels = _texts(ax.get_yticklabels())
    assert labels == ["control"] + [f"P{i:03d}" for i in range(8)]
    assert len(fig.axes) == 2 and ax.get_xlabel() == "latent" and "mean latent" in ax.get_title()
    cells = (adata.obs["perturbation"] == "P003").to_numpy()
    np.testing.assert_allclose(ax.images[0].get_array()[4], adata.obsm["X_svae"][cells].mean(0), rtol=1e-5)
    assert _is_png(tmp_path / "means.png")


def test_traversal_panels(with_effects, tmp_path):
    adata, model, effects = with_effects
    fig = pl.traversal(adata, model, ["latent00", "latent02"], n_genes=4, save=tmp_path / "trav.png")
    assert len(fig.axes) == 2
    assert [a.get_title() for a in fig.axes] == ["latent00", "latent02"]
    ax = fig.axes[0]
    assert ax.get_xlabel().startswith("latent00 shift (sd units") and ax.get_ylabel() == "change in decoded log expression"
    lines = [line for line in ax.get_lines() if line.get_label() in set(adata.var_names)]
    assert len(lines) == 4
    row = effects.loc["latent00"]
    expected = row[row > 0].sort_values(ascending=False).index[:2].tolist() + \
        row[row < 0].sort_values().index[:2].tolist()
    assert [line.get_label() for line in lines] == expected  # the strongest genes up, then down
    for line in lines:
        x, y = line.get_data()
        assert y[np.argmin(np.abs(x))] == 0.0  # drawn as the change from the cells' own latents
        assert (line.get_linestyle() == "-") == (row[line.get_label()] >= 0)
    assert _is_png(tmp_path / "trav.png")
    default = pl.traversal(adata, model, n_genes=2)  # the latents with the most targets: all 3 here
    assert sorted(a.get_title() for a in default.axes) == list(model.latent_names)


def test_enrichment_dot_plot(with_effects, tmp_path):
    adata, _, effects = with_effects
    adata = adata.copy()
    table = tl.enrich(adata, _effect_sets(effects), top_n=6, min_size=3)
    fig = pl.enrichment(adata, per_latent=2, save=tmp_path / "dots.png")
    ax = fig.axes[0]
    assert len(fig.axes) == 2  # the dots and the colour bar
    assert _texts(ax.get_xticklabels()) == list(effects.index)
    ylabels = _texts(ax.get_yticklabels())
    for latent in effects.index:
        assert f"up_{latent} [gene_sets]" in ylabels
    assert "(ora)" in ax.get_title() and ax.get_xlabel() == "latent" and ax.get_ylabel() == "gene set"
    assert _is_png(tmp_path / "dots.png")
    rank = pl.enrichment(table, test="rank", latents=["latent01"])
    assert _texts(rank.axes[0].get_xticklabels()) == ["latent01"] and "(rank)" in rank.axes[0].get_title()
    with pytest.raises(InputError, match="tl.enrich"):
        pl.enrichment(with_effects[0])


def test_heldout_plots(heldout, tmp_path):
    _, result = heldout
    fig = pl.heldout_nll(result, save=tmp_path / "nll.png")
    ax = fig.axes[0]
    assert len(fig.axes) == 1
    assert _texts(ax.get_xticklabels()) == ["svae+", "vae"]
    assert ax.get_ylabel() == "NLL per cell (nats, lower is better)" and ax.get_title() == "held-out perturbations: custom"
    assert _texts(ax.get_legend().get_texts()) == ["heldout adapted", "heldout zeroshot", "heldin"]
    heights = [p.get_height() for p in ax.patches]
    expected = [result.table.set_index(["model", "setting"]).loc[(m, s), "nll"]
                for s in ("heldout_adapted", "heldout_zeroshot", "heldin") for m in ("svae+", "vae")]
    np.testing.assert_allclose(heights, expected)
    assert _is_png(tmp_path / "nll.png")

    fig = pl.fewshot(result, save=tmp_path / "fewshot.svg")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "adaptation cells (all held-out perturbations)"
    assert ax.get_ylabel() == "held-out NLL per cell (nats)" and ax.get_title() == "few-shot adaptation"
    assert _texts(ax.get_legend().get_texts()) == ["svae+", "vae"]
    assert [t.get_text() for t in ax.texts][:3] == ["0", "5", "all"]
    assert (tmp_path / "fewshot.svg").read_text().lstrip().startswith("<?xml")
    # the plain tables work too, and draw into given axes
    from matplotlib.figure import Figure

    given = Figure().subplots(1, 2)
    assert pl.heldout_nll(result.table, ax=given[0]) is given[0].figure
    assert pl.fewshot(result.fewshot, ax=given[1]) is given[1].figure
    with pytest.raises(InputError):
        pl.fewshot(result.table)  # not the few-shot table
    assert isinstance(sv.pl.heldout_nll(result), Figure)


def test_graph_vs_data_in_the_anndata_and_its_plot(fitted, tmp_path):
    adata, model = fitted
    work = adata.copy()
    table = tl.graph_vs_data(work)
    graph = work.uns["svae"]["intervention_graph"]
    assert sorted(table["perturbation"]) == sorted(graph.index)  # one row per perturbation of the screen
    assert set(table["verdict"]) <= {"agree", "effect without edge", "edge without effect", "not in graph"}
    # the paper design's 5-sd shifts are visible in the counts of every perturbation
    assert table["has_effect"].all() and (table["n_de"] > 0).all()
    on = table.set_index("perturbation")["n_edges"] > 0
    verdict = table.set_index("perturbation")["verdict"]
    assert ((verdict == "agree") == on).all()
    stored = work.uns["svae"]["graph_vs_data"]
    assert list(stored["perturbation"]) == list(table["perturbation"])
    evidence = work.uns["svae"]["edge_evidence"]
    assert evidence.shape == graph.shape  # sVAE+'s log Bayes factors beside the probabilities
    fig = pl.graph_vs_data(work, save=tmp_path / "gvd.png")
    ax = fig.axes[0]
    assert ax.get_ylabel() == "strongest edge probability" and _is_png(tmp_path / "gvd.png")
    assert sum(len(c.get_offsets()) for c in ax.collections) == len(table)
    with pytest.raises(InputError, match="graph_vs_data"):
        pl.graph_vs_data(adata)  # not computed on this AnnData


def test_a_notebook_cell_shows_every_figure_it_draws(fitted, monkeypatch):
    """scanpy's convention: in a kernel each pl call shows its figure; scripts get the figure back."""
    from matplotlib.figure import Figure

    import scperturb_vae.pl.base as base

    adata, _ = fitted
    shown = []
    monkeypatch.setattr(base, "display_figure", shown.append)
    # a script: nothing shown, the figure returned
    assert isinstance(sv.pl.graph(adata), Figure) and shown == []
    monkeypatch.setattr(base, "in_notebook", lambda: True)
    # a notebook cell with two calls shows two figures
    assert sv.pl.graph(adata) is None
    assert sv.pl.latents_by_perturbation(adata) is None
    assert len(shown) == 2 and all(isinstance(f, Figure) for f in shown)
    assert isinstance(sv.pl.graph(adata, return_fig=True), Figure) and len(shown) == 3
    assert isinstance(sv.pl.graph(adata, show=False), Figure) and len(shown) == 3
    # drawing into given axes composes a figure: not shown panel by panel
    fig, axes = base.new_figure(1, 1, (4, 3))
    assert sv.pl.graph(adata, ax=axes[0, 0]) is fig and len(shown) == 3
