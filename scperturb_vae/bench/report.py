"""The bench's summaries and ``bench.md``: medians over rounds, ratios to SCVI, memory checks, markdown."""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import pandas as pd

from scperturb_vae.bench.constants import (
    BACKED_TARGET_MB,
    BACKED_TARGET_RATIO,
    BENCH_COLUMNS,
    MB,
    SCVI_NAME,
    SPARSE_TARGET,
    TARGET_MODELS,
    TARGET_RATIO,
)

logger = logging.getLogger("scperturb_vae")

__all__ = ["backed_summary", "bench_markdown", "log_write", "sparse_summary", "summarise", "with_check_rows"]


def _fmt(value, digits: int = 2) -> str:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return "n/a"
    return f"{value:.{digits}f}" if math.isfinite(value) else "n/a"


def _median(values: list[float]) -> float:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.median(values)) if values else float("nan")


def summarise(runs: dict[str, list[dict[str, Any]]], sizes: dict[str, Any], import_peak: float) -> pd.DataFrame:
    """One row per model: medians over repeats, ratios to SCVI's medians."""
    rows = []
    for name, results in runs.items():
        first = results[0]
        row: dict[str, Any] = {"model": name, "repeats": len(results)}
        for key in ("seconds_per_epoch", "cpu_seconds_per_epoch", "first_epoch_seconds", "train_loop_seconds_per_epoch",
                    "validation_seconds_per_epoch", "post_train_seconds", "is_seconds",
                    "is_cell_samples_per_second", "is_nll_mean", "peak_rss_mb", "train_peak_rss_mb"):
            row[key] = _median([r.get(key, float("nan")) for r in results])
        row["peak_rss_above_imports_mb"] = row["peak_rss_mb"] - import_peak
        for key in ("steps_per_epoch", "param_bytes", "n_train_cells", "is_cells", "is_samples"):
            row[key] = first.get(key)
        row["threads"] = first.get("torch_threads")
        rows.append(row)
    table = pd.DataFrame(rows)
    ref = table.loc[table["model"] == SCVI_NAME].iloc[0]
    table["ratio_to_scvi"] = table["seconds_per_epoch"] / ref["seconds_per_epoch"]
    table["cpu_ratio_to_scvi"] = table["cpu_seconds_per_epoch"] / ref["cpu_seconds_per_epoch"]
    table["is_ratio_to_scvi"] = table["is_seconds"] / ref["is_seconds"]
    for key in ("n_cells", "n_genes", "density", "nnz", "n_perturbations", "n_latent", "n_hidden", "n_layers",
                "batch_size", "warmup_epochs", "epochs"):
        table[key] = sizes[key]
    table["setting"] = "in memory"
    table["reference"] = SCVI_NAME
    table["ratio_to_reference"] = table["ratio_to_scvi"]
    table["train_cells_per_second"] = table["n_train_cells"] / table["train_loop_seconds_per_epoch"]
    return table[list(BENCH_COLUMNS)]


def with_check_rows(table: pd.DataFrame, info: dict[str, Any], import_peak: float) -> pd.DataFrame:
    """``bench.csv``: the speed rows, then the thread check's and the out-of-core check's.

    Thread rows (sVAE+, ``setting`` ``threads=default (N)`` or ``threads=N``) have their time
    relative to the fastest explicit count; the out-of-core rows (``backed`` and ``in memory
    (backed check)``) theirs relative to the in-memory child, ``seconds_per_epoch`` being the
    check's one (possibly shortened) epoch.
    """
    rows = []
    threads = info.get("thread_check") or []
    explicit = [r["seconds_per_epoch"] for r in threads if r["setting"] != "default"]
    for r in threads:
        label = f"threads=default ({r['torch_threads']})" if r["setting"] == "default" else f"threads={r['setting']}"
        rows.append({"model": "svae+", "setting": label, "reference": "fastest explicit thread count",
                     "seconds_per_epoch": r["seconds_per_epoch"], "ratio_to_reference": r["seconds_per_epoch"] / min(explicit),
                     "cpu_seconds_per_epoch": r["cpu_seconds_per_epoch"], "train_loop_seconds_per_epoch":
                     r["train_loop_seconds_per_epoch"], "validation_seconds_per_epoch": r["validation_seconds_per_epoch"],
                     "train_cells_per_second": r["n_train_cells"] / r["train_loop_seconds_per_epoch"],
                     "steps_per_epoch": r["steps_per_epoch"], "n_train_cells": r["n_train_cells"],
                     "peak_rss_mb": r["peak_rss_mb"], "peak_rss_above_imports_mb": r["peak_rss_mb"] - import_peak,
                     "threads": r["torch_threads"]})
    backed = info.get("backed_check")
    if backed:
        for label, r in (("backed", backed), ("in memory (backed check)", backed["in_memory"])):
            steps = r["passes"]["train_steps"]
            rows.append({"model": "svae+", "setting": label, "reference": "in memory (backed check)",
                         "seconds_per_epoch": r["epoch_seconds"],
                         "ratio_to_reference": r["epoch_seconds"] / backed["in_memory"]["epoch_seconds"],
                         "train_loop_seconds_per_epoch": steps["seconds"],
                         "validation_seconds_per_epoch": r["passes"]["validation"]["seconds"],
                         "post_train_seconds": r["passes"]["batch_norm_recalibration"]["seconds"],
                         "train_cells_per_second": steps["cells_per_second"], "steps_per_epoch": r["train_steps"],
                         "peak_rss_mb": r["peak_rss_mb"], "peak_rss_above_imports_mb": r["peak_rss_mb"] - import_peak,
                         "n_cells": r["n_cells"], "n_genes": r["n_genes"], "nnz": r["nnz"], "threads": r["torch_threads"]})
    if not rows:
        return table
    extra = pd.DataFrame(rows)
    return pd.concat([table, extra], ignore_index=True)[list(BENCH_COLUMNS)] if len(table) else extra.reindex(
        columns=list(BENCH_COLUMNS))


def _speed_markdown(table: pd.DataFrame) -> list[str]:
    lines = [
        ("| model | s / epoch | ratio to SCVI | CPU s / epoch | CPU ratio | first epoch s | train loop s "
         "| validation s | post-train s | IS cells x samples / s | IS time ratio | IS NLL | peak RSS MB "
         "| training peak MB | above imports MB |"),
        "|---|" + "---:|" * 14,
    ]
    for _, r in table[table["setting"] == "in memory"].iterrows():
        lines.append(
            f"| {r['model']} | {_fmt(r['seconds_per_epoch'], 3)} | {_fmt(r['ratio_to_scvi'])} | "
            f"{_fmt(r['cpu_seconds_per_epoch'], 3)} | {_fmt(r['cpu_ratio_to_scvi'])} | "
            f"{_fmt(r['first_epoch_seconds'], 3)} | {_fmt(r['train_loop_seconds_per_epoch'], 3)} | "
            f"{_fmt(r['validation_seconds_per_epoch'], 3)} | {_fmt(r['post_train_seconds'], 3)} | "
            f"{_fmt(r['is_cell_samples_per_second'], 0)} | {_fmt(r['is_ratio_to_scvi'])} | "
            f"{_fmt(r['is_nll_mean'], 1)} | {_fmt(r['peak_rss_mb'], 0)} | {_fmt(r['train_peak_rss_mb'], 0)} | "
            f"{_fmt(r['peak_rss_above_imports_mb'], 0)} |"
        )
    return lines


def sparse_summary(result: dict[str, Any], import_peak: float) -> dict[str, Any]:
    """The sparse check's result with its peak against CSR + model bytes (also above the imports)."""
    denominator_mb = (result["csr_bytes"] + result["param_bytes"]) / MB
    peak = result["peak_rss_mb"]
    worst = max(result["stages"], key=lambda s: s["peak_rss_mb"])
    return {
        **result,
        "csr_mb": result["csr_bytes"] / MB,
        "param_mb": result["param_bytes"] / MB,
        "import_peak_rss_mb": import_peak,
        "ratio": peak / denominator_mb,
        "ratio_above_imports": (peak - import_peak) / denominator_mb,
        "target": SPARSE_TARGET,
        "judged_by": "ratio_above_imports",
        "peak_stage": worst["stage"],
    }


def backed_summary(result: dict[str, Any], import_peak: float, screen: dict[str, Any],
                   memory: dict[str, Any]) -> dict[str, Any]:
    """The out-of-core check's result with its sizes on disk, its peak against the target and
    each pass against the in-memory child's (time ratios: above 1, backed is slower)."""
    worst = max(result["stages"], key=lambda s: s["peak_rss_mb"])
    ratios = {name: p["seconds"] / max(memory["passes"][name]["seconds"], 1e-9) for name, p in result["passes"].items()}
    return {
        **result,
        "csr_mb": result["csr_bytes"] / MB,
        "file_mb": screen.get("file_bytes", float("nan")) / MB,
        "import_peak_rss_mb": import_peak,
        "target_mb": BACKED_TARGET_MB,
        "meets_target": result["peak_rss_mb"] < BACKED_TARGET_MB,
        "peak_stage": worst["stage"],
        "in_memory": memory,
        "pass_ratios": ratios,
        "train_steps_ratio": ratios["train_steps"],
        "epoch_ratio": result["epoch_seconds"] / max(memory["epoch_seconds"], 1e-9),
        "target_ratio": BACKED_TARGET_RATIO,
    }


def _backed_markdown(b: dict[str, Any]) -> list[str]:
    steps = b.get("train_steps")
    mem = b["in_memory"]
    lines = [
        (f"sVAE+ trained from a backed (on-disk, read-only) file of {b['n_cells']} cells x {b['n_genes']} genes, "
         f"{b['nnz']} stored counts (CSR {_fmt(b['csr_mb'], 0)} MB on disk), minibatches fetched many at a time "
         f"(scDataset); {steps if steps is not None else '?'} training minibatches, then the validation pass, "
         "the batch-norm recalibration pass over the training cells and the latent pass over every cell; then the "
         f"same in memory (the same minibatches); torch threads {b['torch_threads']} backed, "
         f"{mem['torch_threads']} in memory."),
        "",
        (f"**peak RSS {_fmt(b['peak_rss_mb'], 0)} MB** (stage {b['peak_stage']}; imports alone "
         f"{_fmt(b['import_peak_rss_mb'], 0)} MB); target < {_fmt(b['target_mb'], 0)} MB: "
         f"{'met' if b['meets_target'] else 'NOT met'}. In memory: peak RSS {_fmt(mem['peak_rss_mb'], 0)} MB."),
        "",
        (f"**training steps: {_fmt(b['passes']['train_steps']['cells_per_second'], 0)} cells/s backed, "
         f"{_fmt(mem['passes']['train_steps']['cells_per_second'], 0)} in memory: {_fmt(b['train_steps_ratio'])}x "
         f"the time** (target at most {_fmt(b['target_ratio'])}x: "
         f"{'met' if b['train_steps_ratio'] <= b['target_ratio'] else 'NOT met'}); the whole epoch "
         f"{_fmt(b['epoch_ratio'])}x."),
        "",
        "| pass | cells | backed s | backed cells/s | in memory s | in memory cells/s | ratio |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, p in b["passes"].items():
        m = mem["passes"][name]
        lines.append(f"| {name.replace('_', ' ')} | {p['cells']} | {_fmt(p['seconds'], 2)} | "
                     f"{_fmt(p['cells_per_second'], 0)} | {_fmt(m['seconds'], 2)} | {_fmt(m['cells_per_second'], 0)} | "
                     f"{_fmt(b['pass_ratios'][name])} |")
    lines += ["", "| stage | seconds | peak RSS MB | RSS at end MB |", "|---|---:|---:|---:|"]
    for st in b["stages"]:
        lines.append(f"| {st['stage']} | {_fmt(st['seconds'], 2)} | {_fmt(st['peak_rss_mb'], 0)} | {_fmt(st['rss_mb'], 0)} |")
    return lines


def _thread_markdown(runs: list[dict[str, Any]]) -> list[str]:
    explicit = {r["setting"]: r["seconds_per_epoch"] for r in runs if r["setting"] != "default"}
    best = min(explicit, key=explicit.get)
    default = next(r for r in runs if r["setting"] == "default")
    ratio = default["seconds_per_epoch"] / explicit[best]
    lines = [
        (f"sVAE+ on the speed screen with the commands' own thread setting (the free cores: "
         f"{default['torch_threads']} here) and with each explicit count; **the default takes {_fmt(ratio)}x the "
         f"time of the fastest explicit count ({best})**."),
        "",
        "| threads | torch threads | s/epoch | CPU s/epoch | ratio to fastest |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in runs:
        lines.append(f"| {r['setting']} | {r['torch_threads']} | {_fmt(r['seconds_per_epoch'], 3)} | "
                     f"{_fmt(r['cpu_seconds_per_epoch'], 3)} | {_fmt(r['seconds_per_epoch'] / explicit[best])} |")
    return lines


def _sparse_markdown(s: dict[str, Any]) -> list[str]:
    lines = [
        (f"sVAE+ on {s['n_cells']} cells x {s['n_genes']} genes, {s['nnz']} stored counts: CSR "
         f"{_fmt(s['csr_mb'], 1)} MB, parameters {_fmt(s['param_mb'], 2)} MB; imports alone "
         f"{_fmt(s['import_peak_rss_mb'], 0)} MB."),
        "",
        (f"**peak RSS {_fmt(s['peak_rss_mb'], 0)} MB** (stage {s['peak_stage']}): "
         f"peak / (CSR + model) = {_fmt(s['ratio'])}; "
         f"(peak - imports) / (CSR + model) = **{_fmt(s['ratio_above_imports'])}** "
         f"(target <= {_fmt(s['target'], 1)}, judged on the ratio above the imports: the imports are a "
         "constant of the process, not a cost of the data)."),
        "",
        "| stage | seconds | peak RSS MB | RSS at end MB | of which anonymous | of which files (libraries) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for st in s["stages"]:
        lines.append(f"| {st['stage']} | {_fmt(st['seconds'], 2)} | {_fmt(st['peak_rss_mb'], 0)} | "
                     f"{_fmt(st['rss_mb'], 0)} | {_fmt(st.get('rss_anon_mb'), 0)} | {_fmt(st.get('rss_file_mb'), 0)} |")
    if not s.get("peak_resettable", True):
        lines += ["", "The kernel did not let the peak be reset: stage peaks are cumulative."]
    return lines


def log_write(result: dict[str, Any]) -> None:
    """Log a writer child's screen, speed and peak memory."""
    s = result["screen"]
    logger.info(f"wrote a {s['n_cells']} x {s['n_genes']} screen ({s['nnz']} counts) in {s['seconds']:.1f} s: "
                f"{s['cells_per_second']:.0f} cells/s, writer peak RSS {result['write_peak_rss_mb']:.0f} MB "
                f"(imports {result['import_peak_rss_mb']:.0f} MB)")


def bench_markdown(table: pd.DataFrame, info: dict[str, Any]) -> str:
    """``bench.md`` from ``bench.csv``'s table and ``bench.json``'s info."""
    sz, m = info["sizes"], info["machine"]
    lines = [
        "# scvae bench",
        "",
        (f"{m.get('cpu_model', '?')}, threads {info['threads']} of {m.get('cpus_allowed')} allowed CPUs, "
         f"load average {_fmt(m.get('load_average_1min'))} -> {_fmt(m.get('load_average_1min_end'))}; "
         f"torch {info['versions'].get('torch')}, scvi-tools {info['versions'].get('scvi-tools')}."),
        "",
    ]
    if (table["setting"] == "in memory").any():
        lines += [
            "## Speed against scvi.model.SCVI",
            "",
            (f"{sz['n_cells']} cells x {sz['n_genes']} genes (density {sz['density']}), {sz['n_perturbations']} "
             f"perturbations; {sz['n_latent']} latents, {sz['n_layers']} x {sz['n_hidden']} hidden, batch "
             f"{sz['batch_size']}, {sz['warmup_epochs']} warm-up + {sz['epochs']} timed epochs, validation every "
             f"epoch for all; importance sampling on {sz['is_cells']} cells x {sz['is_samples']} samples. "
             f"Medians over {sz['repeats']} round(s); ratios are time ratios (above 1: slower than SCVI); CPU s "
             f"is the child's CPU time in the epoch (all threads), steadier than wall time when other work "
             f"shares the CPUs. Peak RSS includes the importance sampling ({sz['is_samples_per_pass']} samples "
             f"per pass of {sz['batch_size']} cells); training peak is the training stage's alone. "
             f"Target: {', '.join(TARGET_MODELS)} at most {TARGET_RATIO}x SCVI per epoch."),
            "",
            *_speed_markdown(table),
            "",
        ]
        verdict = []
        for name in TARGET_MODELS:
            row = table[(table["model"] == name) & (table["setting"] == "in memory")]
            if len(row):
                wall, cpu = float(row["ratio_to_scvi"].iloc[0]), float(row["cpu_ratio_to_scvi"].iloc[0])
                above = [kind for kind, r in (("wall", wall), ("CPU", cpu)) if not r <= TARGET_RATIO]
                verdict.append(f"{name} {_fmt(wall)}x wall, {_fmt(cpu)}x CPU ("
                               + (f"ABOVE target in {' and '.join(above)} time" if above else "within target") + ")")
        if verdict:
            lines += ["Per-epoch target: " + "; ".join(verdict) + ".", ""]
    imports = info["import_only"]["peak_rss_mb"]
    lines += [f"Imports alone (python, torch, scvi-tools, the models): peak RSS {_fmt(imports, 0)} MB.", ""]
    for key, w in info.get("writer", {}).items():
        lines += [(f"Synthetic writer ({key}): {w['n_cells']} cells x {w['n_genes']} genes, {w['nnz']} counts, "
                   f"{_fmt(w['seconds'], 2)} s = {_fmt(w['cells_per_second'], 0)} cells/s, chunks of "
                   f"{w['chunk_cells']} cells; peak RSS while writing {_fmt(w['write_peak_rss_mb'], 0)} MB "
                   f"(its imports {_fmt(w['import_peak_rss_mb'], 0)} MB; CSR {_fmt(w['csr_bytes'] / MB, 1)} MB)."),
                  ""]
    if "sparse_check" in info:
        lines += ["## Sparse all the way", "", *_sparse_markdown(info["sparse_check"]), ""]
    if "thread_check" in info:
        lines += ["## Threads", "", *_thread_markdown(info["thread_check"]), ""]
    if "backed_check" in info:
        lines += ["## Out of core", "", *_backed_markdown(info["backed_check"]), ""]
    return "\n".join(lines)

