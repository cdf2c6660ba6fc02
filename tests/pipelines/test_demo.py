"""`make demo`'s job in its quick mode: simulate, train, score, evaluate held-out perturbations, interpret."""

from __future__ import annotations

import json

import pandas as pd

from scperturb_vae.pipelines.demo import main


def test_demo_quick_runs_end_to_end(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "demo"), "--quick", "--max-epochs", "5"]) == 0
    out = capsys.readouterr().out
    for step in ("[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]"):
        assert step in out
    assert "MCC" in out and "heldout_adapted" in out and "top enriched set" in out
    assert "graph against the data" in out
    assert "predicted effects" in out and "kcell_mean" in out
    demo = tmp_path / "demo"
    run = demo / "evaluation" / "runs" / "svae_plus"
    summary = json.loads((run / "run.json").read_text())
    assert summary["model_class"] == "SVAEPlus" and summary["resolved"]["max_epochs"] == 5
    assert summary["holdout"]["perturbations"] and summary["recovery"]["mcc_pearson"] > 0
    table = pd.read_csv(demo / "evaluation" / "nll.csv")
    assert set(table["model"]) == {"svae+", "vae"} and table["nll"].notna().all()
    assert (demo / "evaluation" / "predict" / "metrics.csv").exists()
    assert (demo / "interpretation" / "summary.md").exists()
    assert (demo / "interpretation" / "enrichment.csv").exists()
    assert (demo / "interpretation" / "graph_vs_data.csv").exists()
