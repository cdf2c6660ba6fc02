"""Tables read from a trained model's outputs: the perturbations targeting each latent, the
one-line summary per latent, the latents worth traversing, their top genes, and the match of
latents to the simulation's gene programs.

Pure table computations (pandas / numpy), used by :mod:`scperturb_vae.pipelines.interpret`
(``scvae interpret``), :mod:`scperturb_vae.pl` and the workflows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from scperturb_vae.errors import InputError

__all__ = [
    "describe_edge",
    "signed_edges",
    "with_shifts",
    "ACTIVE_VARIANCE",
    "DENSE_TOP",
    "aligned_graph",
    "default_traversal_latents",
    "fmt_p",
    "parse_latents",
    "perturbation_targets",
    "program_match",
    "summary_lines",
    "top_genes",
]

#: A latent whose posterior means vary less than this across cells is called inactive
#: (as :func:`scperturb_vae.tl.metrics.active_units`).
ACTIVE_VARIANCE = 0.01

#: Targets kept per latent whose graph column is dense (see :func:`perturbation_targets`).
DENSE_TOP = 10


# --------------------------------------------------------------------------- targets
def perturbation_targets(graph: pd.DataFrame, *, threshold: float = 0.5, top: int | None = None) -> pd.DataFrame:
    """The perturbations that move each latent, read from an intervention graph.

    A perturbation targets a latent when its graph probability is above ``threshold``.
    Targets are ranked within each latent by probability (1 = highest; ties by name);
    ``top`` keeps the first ``top`` of each latent.

    Dense columns: when more than half of the perturbations are above the threshold for a
    latent (a graph that is not sparse there, e.g. an iVAE's or a VAE's score, or a
    latent every perturbation shifts), the probability alone no longer singles out
    targets; such a latent keeps only its :data:`DENSE_TOP` most probable targets
    (``top`` when smaller) and its rows are flagged ``dense=True``.

    Parameters
    ----------
    graph
        Perturbations x latents, values in [0, 1] (``intervention_graph.csv``).
    threshold
        Probability above which a perturbation counts as a target.
    top
        Targets kept per latent (all when ``None``).

    Returns
    -------
    pandas.DataFrame
        Columns ``latent``, ``perturbation``, ``probability``, ``rank``, ``dense``, sorted
        by latent (graph column order) then rank.
    """
    if top is not None and top < 1:
        raise InputError(f"top must be at least 1, not {top}")
    if not 0.0 <= threshold < 1.0:
        raise InputError(f"threshold must be in [0, 1), not {threshold}")
    records = []
    n_pert = graph.shape[0]
    for latent in graph.columns:
        column = graph[latent].astype(float)
        above = column[column > threshold]
        dense = bool(n_pert > 0 and len(above) > n_pert / 2)
        frame = pd.DataFrame({"perturbation": above.index.astype(str), "probability": above.to_numpy()})
        frame = frame.sort_values(["probability", "perturbation"], ascending=[False, True], kind="mergesort")
        keep = len(frame)
        if dense:
            keep = min(keep, DENSE_TOP)
        if top is not None:
            keep = min(keep, top)
        for rank, (pert, prob) in enumerate(zip(frame["perturbation"][:keep], frame["probability"][:keep]), start=1):
            records.append({"latent": str(latent), "perturbation": pert, "probability": float(prob),
                            "rank": rank, "dense": dense})
    return pd.DataFrame.from_records(records, columns=["latent", "perturbation", "probability", "rank", "dense"])


def aligned_graph(graph: pd.DataFrame, true_graph: pd.DataFrame, assignment: Mapping[str, Any]) -> pd.DataFrame:
    """The learned graph on the true graph's rows, its columns in the true latents' order
    (by the MCC matching ``assignment``: true latent -> learned latent), the unmatched
    learned latents last."""
    matched = [assignment.get(t) for t in true_graph.columns]
    order = [c for c in matched if c is not None] + [c for c in graph.columns if c not in matched]
    rows = [p for p in true_graph.index if p in graph.index]
    return graph.loc[rows, order]


# --------------------------------------------------------------------------- summary
def describe_edge(row: Mapping[str, Any]) -> str:
    """One signed edge of :meth:`~scperturb_vae.model.base.PerturbationModelBase.get_signed_graph` in words.

    ``"JAK2 lowers latent09 by 1.8 sd (1,024 cells, p 0.97, 9.6 nats)"``; the evidence is
    left out where the model has none.
    """
    verb = "lowers" if float(row["shift_sd"]) < 0 else "raises"
    extra = [f"{int(row['n_cells']):,} cells", f"p {float(row['probability']):.2f}"]
    evidence = row.get("evidence")
    if evidence is not None and np.isfinite(float(evidence)):
        extra.append(f"{float(evidence):.1f} nats")
    return f"{row['perturbation']} {verb} {row['latent']} by {abs(float(row['shift_sd'])):.2f} sd ({', '.join(extra)})"


def with_shifts(targets: pd.DataFrame, signed: pd.DataFrame | None) -> pd.DataFrame:
    """:func:`perturbation_targets` with each target's ``shift_sd`` and ``n_cells`` from a signed graph."""
    if signed is None or not len(targets):
        return targets
    keys = signed[["perturbation", "latent", "shift_sd", "n_cells"]].astype({"perturbation": str, "latent": str})
    return targets.merge(keys, on=["perturbation", "latent"], how="left")


def signed_edges(signed: pd.DataFrame, threshold: float = 0.5) -> pd.DataFrame:
    """The rows of a signed graph whose probability exceeds ``threshold``, strongest first."""
    return signed[signed["probability"] > threshold].reset_index(drop=True)


def fmt_p(value: float) -> str:
    if value is None or not np.isfinite(value):
        return "nan"
    return f"{value:.2g}" if value >= 1e-3 else f"{value:.1e}"


def _target_text(row) -> str:
    """``"JAK2 (0.97, -1.80 sd, 1,024 cells)"``; the probability alone without a signed graph."""
    shift = row.get("shift_sd")
    if shift is None or not np.isfinite(float(shift)):
        return f"{row['perturbation']} ({float(row['probability']):.2f})"
    return f"{row['perturbation']} ({float(row['probability']):.2f}, {float(shift):+.2f} sd, {int(row['n_cells']):,} cells)"


def summary_lines(
    effects: pd.DataFrame,
    enrichment: pd.DataFrame,
    targets: pd.DataFrame,
    *,
    latent_sd: dict[str, float] | None = None,
    n_targets_shown: int = 5,
    n_genes: int = 5,
    n_sets: int = 3,
    fdr_max: float = 0.1,
    test: str | None = None,
) -> list[str]:
    """One line per latent: targets (with probabilities), top genes up and down, top sets.

    A latent whose posterior-mean variance is at most :data:`ACTIVE_VARIANCE` is marked
    ``inactive``.  Only sets with an FDR at most ``fdr_max`` name a latent; without one the
    line says so and gives the best set's FDR.  Sets come from one ``test`` throughout
    (default: ``"ora"`` when tested, else ``"rank"``: the dot plot's default too).
    """
    if test is None and len(enrichment):
        test = "ora" if (enrichment["test"] == "ora").any() else "rank"
    lines = []
    for latent in effects.index.astype(str):
        row = effects.loc[latent].astype(float)
        parts = []
        sd = None if latent_sd is None else latent_sd.get(latent)
        head = latent
        if sd is not None:
            head += f" (sd {sd:.2f}{', inactive' if sd ** 2 <= ACTIVE_VARIANCE else ''})"
        t = targets[targets["latent"] == latent]
        if len(t):
            shown = ", ".join(_target_text(r) for _, r in t.head(n_targets_shown).iterrows())
            more = f" +{len(t) - n_targets_shown} more" if len(t) > n_targets_shown else ""
            dense = " [dense column]" if bool(t["dense"].iloc[0]) else ""
            parts.append(f"targeted by {shown}{more}{dense}")
        else:
            parts.append("no targeting perturbation")
        up = row[row > 0].sort_values(ascending=False, kind="mergesort").index[:n_genes]
        down = row[row < 0].sort_values(ascending=True, kind="mergesort").index[:n_genes]
        parts.append("up: " + (", ".join(f"{g} ({row[g]:+.2f})" for g in up) or "-"))
        parts.append("down: " + (", ".join(f"{g} ({row[g]:+.2f})" for g in down) or "-"))
        e = enrichment[(enrichment["latent"] == latent) & enrichment["fdr"].notna()
                       & ((enrichment["test"] == test) if test is not None else True)]
        e = e.drop_duplicates(subset=["source", "gene_set"])
        significant = e[e["fdr"] <= fdr_max][:n_sets]
        if len(significant):
            parts.append("sets: " + "; ".join(
                f"{s} [{src}, {d} {t_}, FDR {fmt_p(f)}]"
                for s, src, d, t_, f in zip(significant["gene_set"], significant["source"], significant["direction"],
                                            significant["test"], significant["fdr"])
            ))
        elif len(e):
            best = e.sort_values("fdr", kind="mergesort").iloc[0]
            parts.append(f"sets: none at FDR <= {fdr_max:g} (best {best['gene_set']}, FDR {fmt_p(best['fdr'])})")
        else:
            parts.append("sets: -")
        lines.append(f"{head}: " + " | ".join(parts))
    return lines


# --------------------------------------------------------------------------- latents and genes
def parse_latents(latents, names: Sequence[str]) -> list[str] | None:
    if latents is None:
        return None
    if isinstance(latents, str):
        latents = [part.strip() for part in latents.split(",")]
    latents = [str(x).strip() for x in latents if str(x).strip()]
    if not latents:
        raise InputError("--latents is empty; give latent names such as latent03,latent07")
    unknown = [x for x in latents if x not in names]
    if unknown:
        raise InputError(
            f"unknown latent(s) {', '.join(unknown)}; the run's latents are {names[0]} to {names[-1]}"
        )
    return list(dict.fromkeys(latents))


def default_traversal_latents(targets: pd.DataFrame, names: Sequence[str], sd: dict[str, float], n: int = 4) -> list[str]:
    """The ``n`` latents with the most targets; ties (and latents without one) by larger spread."""
    counts = targets.groupby("latent").size() if len(targets) else pd.Series(dtype=int)
    ranked = sorted(names, key=lambda x: (-int(counts.get(x, 0)), -sd.get(x, 0.0), names.index(x)))
    return ranked[: min(n, len(ranked))]


def top_genes(effects: pd.DataFrame, latent: str, n_each: int = 3) -> list[str]:
    row = effects.loc[latent].astype(float)
    up = row[row > 0].sort_values(ascending=False, kind="mergesort").index[:n_each].tolist()
    down = row[row < 0].sort_values(ascending=True, kind="mergesort").index[:n_each].tolist()
    return up + down or row.abs().sort_values(ascending=False).index[: 2 * n_each].tolist()


def program_match(enrichment: pd.DataFrame, truth, latent: np.ndarray, latent_names: Sequence[str],
                  *, active_variance: float = 0.01) -> dict[str, Any]:
    """How many active learned latents have their true gene program as top enriched set.

    For a ``programs`` simulation (``truth``: its AnnData, with ``obsm["z_true"]``): learned
    latents are matched to true latents by the Hungarian MCC assignment; a matched learned
    latent is *active* when the variance of its posterior means exceeds ``active_variance``;
    its top set is the first row of ``enrichment`` (sorted by FDR) for it, and it is correct
    when that set is the true latent's program (``z{j:02d}_program``, as written by
    :func:`scperturb_vae.data.simulate.programs_to_gene_sets`).
    """
    from scperturb_vae.tl.metrics import mean_correlation_coefficient

    latent = np.asarray(latent, dtype=float)
    names = [str(n) for n in latent_names]
    mcc = mean_correlation_coefficient(np.asarray(truth.obsm["z_true"]), latent)
    variance = latent.var(axis=0)
    per_latent, correct, active = [], 0, 0
    for j, column in enumerate(mcc.assignment):
        if column < 0 or variance[column] <= active_variance:
            continue
        active += 1
        rows = enrichment[enrichment["latent"].astype(str) == names[column]]
        top = str(rows.iloc[0]["gene_set"]) if len(rows) else None
        hit = top == f"z{j:02d}_program"
        correct += int(hit)
        per_latent.append({"learned": names[column], "true_program": f"z{j:02d}_program", "top_set": top, "correct": hit})
    return {"n_active": active, "n_correct": correct, "fraction": correct / active if active else 0.0,
            "mcc": mcc.mcc, "latents": per_latent}
