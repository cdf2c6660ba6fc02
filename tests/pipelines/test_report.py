"""report.md's warnings (scperturb_vae.pipelines.report.run_warnings) on hand-made graphs."""

from __future__ import annotations

import pandas as pd

from scperturb_vae.pipelines.report import run_warnings


def _signed(probabilities: dict[tuple[str, str], float]) -> pd.DataFrame:
    return pd.DataFrame([
        {"perturbation": p, "latent": lat, "probability": q, "shift_sd": -1.0, "prior_shift": -1.0, "n_cells": 50,
         "evidence": 5.0, "direction": "down"}
        for (p, lat), q in probabilities.items()
    ])


SUMMARY = {"resolved": {"n_perturbations": 3, "max_epochs": 100, "small_perturbations": []}, "settings": {},
           "graph": {"n_latent": 2}, "diagnostics": {"active_units": 1}, "timing": {}}


def test_dense_column_and_empty_graph_are_warned_about():
    dense = _signed({(p, "l0"): 0.9 for p in "ABC"} | {(p, "l1"): 0.9 if p == "A" else 0.1 for p in "ABC"})
    warnings = run_warnings(SUMMARY, dense)
    assert len(warnings) == 1 and warnings[0].startswith("l0 has edges from 3 of 3 perturbations")
    sparse = _signed({(p, lat): 0.9 if (p, lat) == ("A", "l1") else 0.1 for p in "ABC" for lat in ("l0", "l1")})
    assert run_warnings(SUMMARY, sparse) == []
    empty = _signed({(p, lat): 0.1 for p in "ABC" for lat in ("l0", "l1")})
    assert any(w.startswith("The graph is empty") for w in run_warnings(SUMMARY, empty))
