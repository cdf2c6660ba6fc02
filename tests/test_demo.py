"""`make demo`'s job in its quick mode: simulate, train sVAE+, score, print."""

from __future__ import annotations

import json

from scperturb_vae.demo import main


def test_demo_quick_runs_end_to_end(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "demo"), "--quick", "--max-epochs", "5"]) == 0
    out = capsys.readouterr().out
    assert "[3/3] results" in out and "MCC (Pearson)" in out
    run = tmp_path / "demo" / "runs" / "svae_plus"
    summary = json.loads((run / "run.json").read_text())
    assert summary["model_class"] == "SVAEPlus" and summary["resolved"]["max_epochs"] == 5
    assert (tmp_path / "demo" / "sim.h5ad").exists() and (run / "loss_curve.png").exists()
