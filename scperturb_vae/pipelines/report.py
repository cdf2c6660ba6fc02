"""``report.md``: one page per run folder, for a reader who was not at the terminal.

Written by ``scvae train`` (:func:`run_report`) from the run's ``run.json`` record and its signed
graph: the data, the settings, the training (epochs, early stop, the loss curve with the KL
warm-up and the alignment marked), the graph in words, the recovery of a simulation's truth,
and the warnings a user should read before trusting the graph.  ``scvae interpret`` adds what
the latents mean by gene sets (its own ``summary.md``).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from scperturb_vae.tl.targets import describe_edge, perturbation_targets, signed_edges

__all__ = ["run_report", "run_warnings"]

#: edges listed in words on the page
MAX_EDGES = 25


def run_warnings(summary: dict[str, Any], signed: pd.DataFrame) -> list[str]:
    """What a user should know before reading the graph of a run."""
    out = []
    resolved = summary["resolved"]
    small = resolved.get("small_perturbations") or []
    if small:
        out.append(f"{len(small)} perturbation(s) have fewer than {summary['settings'].get('min_cells', 20)} cells "
                   f"({', '.join(map(str, small[:10]))}{', ...' if len(small) > 10 else ''}): their edges rest on few cells.")
    edges = signed_edges(signed)
    if not len(edges):
        out.append("The graph is empty: no perturbation gave an edge more than log K nats of evidence. "
                   "`scvae interpret` checks the counts (graph_vs_data.csv); see the README's 'Your own screen'.")
    else:
        # the dense-column rule of perturbation_targets (more than half the perturbations on one latent)
        wide = signed.pivot(index="perturbation", columns="latent", values="probability")
        dense = edges[edges["latent"].isin(perturbation_targets(wide).query("dense")["latent"])]
        for latent, n in dense.groupby("latent").size().items():
            out.append(f"{latent} has edges from {n} of {resolved['n_perturbations']} perturbations: often a "
                       "technical or condition effect (give it as --batch-key).")
    diagnostics = summary.get("diagnostics") or {}
    active, n_latent = diagnostics.get("active_units"), summary["graph"]["n_latent"]
    if active is not None and active == n_latent:
        out.append(f"All {n_latent} latents are active: the screen may have more programs than latents "
                   "(try a larger --n-latent).")
    timing = summary.get("timing") or {}
    if resolved.get("max_epochs", 0) < 50 and not timing.get("stopped_early_after_epoch"):
        out.append(f"Only {resolved.get('max_epochs')} epochs were trained: the graph may not have settled.")
    return out


def _training_lines(summary: dict[str, Any]) -> list[str]:
    timing, resolved = summary["timing"], summary["resolved"]
    lines = [f"- {resolved['max_epochs']} epochs in {timing['train_seconds']:.1f} s "
             f"({timing['seconds_per_epoch']:.2f} s/epoch, {timing.get('torch_threads')} torch threads)"]
    if timing.get("stopped_early_after_epoch"):
        lines.append(f"- stopped early after epoch {timing['stopped_early_after_epoch']}: the validation loss had "
                     f"not improved for {timing['early_stopping_patience']} epochs")
    marks = summary.get("training_marks") or {}
    if marks:
        lines.append("- " + "; ".join(f"{name}: epoch {epoch}" for name, epoch in marks.items()))
    final = summary.get("final_metrics") or {}
    shown = {k: v for k, v in final.items() if k in ("elbo_train", "elbo_validation") and v is not None}
    if shown:
        lines.append("- last epoch: " + ", ".join(f"{k} {float(v):.2f}" for k, v in shown.items()))
    validation = summary.get("validation_likelihood")
    if validation:
        lines.append(f"- validation NLL {validation['nll_mean']:.2f} nats per cell ({validation['n_cells']} cells, "
                     f"{validation['n_importance_samples']} importance samples)")
    return lines


def run_report(summary: dict[str, Any], signed: pd.DataFrame, name: str) -> str:
    """The Markdown page of a run (``report.md``)."""
    resolved, settings = summary["resolved"], summary["settings"]
    edges = signed_edges(signed)
    md = [
        f"# Run {name}",
        "",
        "## Data",
        "",
        f"- `{summary['input']['path']}` (SHA-256 {summary['input']['sha256'][:12]}...)",
        f"- {resolved['n_cells']} cells x {resolved['n_genes']} genes; {resolved['n_perturbations']} perturbations in "
        f"`{resolved['perturbation_key']}`, control `{resolved['control_label']}`, "
        f"{resolved['n_combination_cells']} combination cells",
        "",
        "## Settings",
        "",
        f"- {summary['model_class']}, {settings['n_latent']} latents, {settings['likelihood']} likelihood, seed "
        f"{settings['seed']}" + (f", batch key `{settings['batch_key']}`" if settings.get("batch_key") else ""),
        "- every setting: `run.json`",
        "",
        "## Training",
        "",
        *_training_lines(summary),
        "",
        "![training curves](loss_curve.png)",
        "",
        "## Graph",
        "",
        f"{len(edges)} edges with probability > 0.5 (all {len(signed)} perturbation x latent pairs in `edges.csv`; "
        "shifts are the perturbation's cells against the controls, in control sd).",
        "",
    ]
    md += [f"- {describe_edge(row)}" for _, row in edges.head(MAX_EDGES).iterrows()]
    if len(edges) > MAX_EDGES:
        md.append(f"- ... {len(edges) - MAX_EDGES} more in `edges.csv`")
    recovery = summary.get("recovery")
    if recovery:
        md += ["", "## Recovery of the simulated truth", "",
               f"- MCC {recovery['mcc_pearson']:.3f}; graph precision {recovery['graph_precision']:.3f}, recall "
               f"{recovery['graph_recall']:.3f}, F1 {recovery['graph_f1']:.3f}"]
    warnings = run_warnings(summary, signed)
    md += ["", "## Warnings", ""] + ([f"- {w}" for w in warnings] or ["- none"])
    md += ["", "What the latents mean by gene sets: `scvae interpret --run RUN --gene-sets FILE.gmt --out DIR`."]
    return "\n".join(md) + "\n"
