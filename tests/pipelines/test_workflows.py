"""The worked notebooks of ``workflows/``: each runs as a script in its quick mode and writes its outputs.

Every script is run in a subprocess, as a user would run it (``SCVAE_QUICK=1 python
workflows/0X_....py``), with its outputs sent to a temporary folder; the tests check the
exit status, the files, and the numbers in them against bounds a broken workflow would
miss.  The scripts are also checked to be jupytext "percent" notebooks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / "workflows"
SCRIPTS = ("01_simulate_recover.py", "02_real_screen_interpret.py", "03_heldout_fewshot.py")
REAL_DATA = ROOT.parent / "shared" / "data" / "datlinger2021_scperturb_testdata.h5ad"
PNG = b"\x89PNG\r\n\x1a\n"


def run_workflow(name: str, out: Path, **env) -> tuple[subprocess.CompletedProcess, float]:
    full_env = {
        **os.environ, "SCVAE_QUICK": "1", "SCVAE_WORKFLOW_OUT": str(out), "SCVAE_TORCH_THREADS": "1",
        "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "MPLBACKEND": "Agg", **env,
    }
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(WORKFLOWS / name)], cwd=ROOT, env=full_env, capture_output=True,
                          text=True, timeout=600)
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc, seconds


def assert_png(path: Path) -> None:
    assert path.exists(), f"{path.name} missing"
    assert path.read_bytes()[:8] == PNG and path.stat().st_size > 5000


# --------------------------------------------------------------------------- the notebooks' format
def _cells(text: str) -> list[tuple[str, list[str]]]:
    cells: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith("# %%"):
            cells.append(("markdown" if "[markdown]" in line else "code", []))
        elif cells:
            cells[-1][1].append(line)
    return cells


@pytest.mark.parametrize("name", SCRIPTS)
def test_workflows_are_jupytext_percent_notebooks(name):
    text = (WORKFLOWS / name).read_text()
    header = text.split("# %%", 1)[0]
    assert header.startswith("# ---\n# jupyter:") and "format_name: percent" in header
    cells = _cells(text)
    markdown = [body for kind, body in cells if kind == "markdown"]
    code = [body for kind, body in cells if kind == "code"]
    assert len(markdown) >= 4 and len(code) >= 4
    assert markdown[0][0].startswith("# # ")  # a title
    for body in markdown:  # markdown cells are all comments, with some text
        lines = [line for line in body if line.strip()]
        assert lines and all(line.startswith("#") for line in lines)
    compile(text, name, "exec")
    for variable in ("SCVAE_QUICK", "SCVAE_WORKFLOW_OUT"):
        assert variable in text


def test_workflows_convert_with_jupytext():
    jupytext = pytest.importorskip("jupytext")
    for name in SCRIPTS:
        notebook = jupytext.read(WORKFLOWS / name)
        kinds = [cell.cell_type for cell in notebook.cells]
        assert kinds.count("markdown") >= 4 and kinds.count("code") >= 4


# --------------------------------------------------------------------------- 01
def test_simulate_recover_workflow(tmp_path):
    proc, seconds = run_workflow(SCRIPTS[0], tmp_path)
    out = tmp_path / "01_simulate_recover"
    recovery = json.loads((out / "recovery.json").read_text())
    # sVAE+ finds the simulated latents and ranks true edges above absent ones
    assert recovery["mcc_pearson"] > 0.7 and recovery["graph_auroc"] > 0.7 and recovery["n_matched"] == 4
    assert "MCC" in proc.stdout and f"{recovery['mcc_pearson']:.3f}" in proc.stdout
    for png in ("graph_vs_truth.png", "latents_umap.png", "latents_by_perturbation.png"):
        assert_png(out / png)
    adata = ad.read_h5ad(out / "simulated_fitted.h5ad")
    assert adata.obsm["X_svae"].shape == (adata.n_obs, 4) and adata.obsm["X_umap"].shape == (adata.n_obs, 2)
    assert adata.uns["svae"]["recovery"]["mcc_pearson"] == pytest.approx(recovery["mcc_pearson"])
    assert adata.uns["svae"]["params"]["max_epochs"] == 80
    print(f"01_simulate_recover: {seconds:.1f} s")


# --------------------------------------------------------------------------- 02
def _check_interpretation(out: Path, n_latent: int) -> tuple[dict, pd.DataFrame]:
    info = json.loads((out / "run_info.json").read_text())
    for png in ("graph.png", "enrichment_dotplot.png", "traversal.png"):
        assert_png(out / png)
    top = pd.read_csv(out / "top_sets.csv")
    assert list(top["latent"]) == [f"latent{i:02d}" for i in range(n_latent)]
    assert top["fdr"].between(0, 1).all()
    enrichment = pd.read_csv(out / "enrichment.csv")
    effects = pd.read_csv(out / "gene_effects.csv", index_col=0)
    assert effects.shape[0] == n_latent and np.isfinite(effects.to_numpy()).all()
    adata = ad.read_h5ad(out / "fitted.h5ad")
    assert adata.varm["svae_gene_effects"].shape == (adata.n_vars, n_latent)
    assert len(adata.uns["svae"]["enrichment"]) == len(enrichment)
    lines = (out / "summary.txt").read_text().splitlines()
    assert len(lines) == n_latent and all(line.startswith(f"latent{i:02d}") for i, line in enumerate(lines))
    return info, enrichment


@pytest.mark.skipif(not REAL_DATA.exists(), reason=f"the real screen is not at {REAL_DATA}")
def test_real_screen_workflow(tmp_path):
    proc, seconds = run_workflow(SCRIPTS[1], tmp_path)
    out = tmp_path / "02_real_screen_interpret"
    info, enrichment = _check_interpretation(out, n_latent=10)
    assert info["data"] == str(REAL_DATA) and info["quick"] is True
    assert info["n_cells"] == 200 + 20 * 100  # the controls and 100 cells of each of the 20 targets
    assert set(enrichment["source"]) == {"h.all.v7.0.symbols", "enrichr.KEGG_2016"}
    assert not (out / "programs.gmt").exists()
    assert "HALLMARK_" in proc.stdout
    print(f"02_real_screen_interpret (real data): {seconds:.1f} s")


def test_real_screen_workflow_falls_back_to_a_simulation(tmp_path):
    proc, seconds = run_workflow(SCRIPTS[1], tmp_path, SCVAE_FORCE_SIMULATION="1")
    out = tmp_path / "02_real_screen_interpret"
    info, enrichment = _check_interpretation(out, n_latent=4)
    assert info["data"] == "simulation:programs"
    assert (out / "programs.gmt").read_text().count("\n") == 4 and set(enrichment["source"]) == {"programs"}
    match = info["program_match"]
    # the interpretation names the latents by their own true programs
    assert match["n_active"] >= 3 and match["n_correct"] >= match["n_active"] - 1
    assert "top enriched set = the true program" in proc.stdout
    print(f"02_real_screen_interpret (simulation): {seconds:.1f} s")


# --------------------------------------------------------------------------- 03
def test_heldout_fewshot_workflow(tmp_path):
    proc, seconds = run_workflow(SCRIPTS[2], tmp_path)
    out = tmp_path / "03_heldout_fewshot"
    for png in ("nll.png", "fewshot.png", "adapted_graph.png"):
        assert_png(out / png)
    table = pd.read_csv(out / "nll.csv")
    assert len(table) == 6 and set(table["model"]) == {"svae+", "vae"} and np.isfinite(table["nll"]).all()
    nll = table.set_index(["model", "setting"])["nll"]
    assert nll[("svae+", "heldout_adapted")] < nll[("svae+", "heldout_zeroshot")]
    assert nll[("vae", "heldout_adapted")] == nll[("vae", "heldout_zeroshot")]
    fewshot = pd.read_csv(out / "fewshot.csv")
    assert list(fewshot["adaptation_cells_per_perturbation"].astype(str)[:3]) == ["0", "10", "all"]
    split = pd.read_csv(out / "split.csv", index_col=0)["part"]
    assert set(split) == {"train", "validation", "heldout_adapt", "heldout_eval"}
    assert (split == "heldout_eval").sum() == 150  # half of the 2 held-out perturbations' 2 x 150 cells
    adapted = pd.read_csv(out / "adapted_graph.csv", index_col=0)
    assert list(adapted.index) == ["P010", "P011"]
    summary = json.loads((out / "heldout_summary.json").read_text())
    assert summary["holdout"]["perturbations"] == ["P010", "P011"] and summary["svae_adaptation_gain"] > 0
    assert "heldout_adapted" in proc.stdout
    print(f"03_heldout_fewshot: {seconds:.1f} s")
