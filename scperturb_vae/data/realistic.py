r"""The ``"realistic"`` simulation preset: a screen that looks like a real Perturb-seq experiment.

The paper preset shifts latents by 5 sd and draws ~1e6 counts per cell; on it every true edge
is easy.  Real screens are shallow, most effects are weak, many guides do nothing, and
perturbations of one pathway move the same programs.  This preset is the development set for
the graph on real screens:

- **Latents and programs.**  ``n_latent`` latents, each driving its own disjoint program of
  ``genes_per_program`` genes (assigned at random), the rest background genes.  The log-rate
  of gene ``g`` is ``base_g + W_g h(z_i)`` for its latent ``i`` (``h(z) = s tanh(z / s)``,
  ``s = saturation``), ``base_g ~ N(0, base_sd)``, ``|W_g| ~ U(weight_min, weight_max)`` with
  a random sign.  Control cells have ``z ~ N(0, I)``: the latents also vary between cells
  without any perturbation, as cell states do.
- **Pathways.**  ``n_pathways`` pathways, each moving its target latents with a fixed sign.
  The first ``n_latent`` move one latent each (every latent is moved alone by one pathway,
  so the graph is identifiable by its sparsity); the others move ``min_targets``-
  ``max_targets`` latents at random, shared with those.  A fraction ``null_fraction`` of the perturbations does
  nothing; every other one belongs to a pathway and shifts all of the pathway's latents by
  its own effect size, log-uniform in ``[shift_min, shift_max]`` sd (times a +-20% jitter
  per latent), so members of one pathway correlate.
- **Cells.**  Cells per perturbation are lognormal around ``n_cells_per_perturbation``
  (``cells_sigma``), clipped to ``[min_cells, max_cells]``; ``n_control_cells`` controls;
  ``n_combinations`` pairs ``A+B`` of effective training perturbations of different
  pathways, ``n_cells_per_combination`` cells each, whose shifts add.
- **Counts.**  Negative binomial (gamma-Poisson) with gene-wise inverse dispersion
  ``theta_g`` lognormal around ``dispersion`` (sd 0.5 on the log scale) and per-cell
  library sizes lognormal around ``library_size`` (``library_sigma``).  ``library_size=500``
  is a shallow screen; the default 3,000 a typical 10x one.
- **Condition.**  With ``condition_effect > 0`` each cell is ``"stimulated"`` or
  ``"unstimulated"`` (``obs["condition"]``), with a stimulated fraction that differs by
  perturbation (Beta(2, 2); controls 0.5), as ``tcr_stim`` does in the Datlinger screen.
  Stimulation multiplies ``condition_genes`` background genes by ``exp(+-condition_effect *
  U(0.5, 1))``: it moves expression without moving any latent.

The perturbations are shuffled before naming (``P00``, ``P01``, ...), so the last ``n_heldout``
(held out) mix null and effective ones.  The ground truth is stored as for the other presets
(``uns["simulation"]``: ``graph``, ``shifts``, ``programs``; ``var["program"]``), with
``null_perturbations``, ``pathway`` (per perturbation, ``"none"`` for nulls), ``effect_size``
and ``combinations`` in addition.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from scperturb_vae.data.simparams import check_bool, check_float, check_int, lognormal_sizes, names
from scperturb_vae.errors import InputError

__all__ = ["REALISTIC_DEFAULTS", "simulate_realistic"]

CONTROL_LABEL = "control"
PERTURBATION_KEY = "perturbation"
CONDITION_KEY = "condition"
NO_PATHWAY = "none"
BACKGROUND = "none"  # var["program"] of genes outside every program, as in the programs preset

#: defaults of the ``"realistic"`` preset; every key is a keyword of :func:`simulate_realistic`
REALISTIC_DEFAULTS: dict[str, Any] = {
    "n_latent": 10,
    "n_pathways": 14,
    "min_targets": 2,
    "max_targets": 2,
    "n_perturbations": 60,
    "null_fraction": 0.4,
    "n_cells_per_perturbation": 150,
    "cells_sigma": 0.6,
    "min_cells": 20,
    "max_cells": 600,
    "n_control_cells": 1500,
    "n_genes": 1000,
    "genes_per_program": 40,
    "shift_min": 0.5,
    "shift_max": 3.0,
    "library_size": 3000.0,
    "library_sigma": 0.5,
    "dispersion": 3.0,
    "weight_min": 0.3,
    "weight_max": 0.8,
    "base_sd": 1.5,
    "saturation": 2.5,
    "condition_effect": 0.0,
    "condition_genes": 50,
    "n_combinations": 4,
    "n_cells_per_combination": 60,
    "n_heldout": 6,
    "cover_latents": True,
}

_INTS = {
    "n_latent": 1, "n_pathways": 1, "min_targets": 1, "max_targets": 1, "n_perturbations": 1,
    "n_cells_per_perturbation": 1, "min_cells": 1, "max_cells": 1, "n_control_cells": 0,
    "n_genes": 1, "genes_per_program": 1, "condition_genes": 0, "n_combinations": 0,
    "n_cells_per_combination": 1, "n_heldout": 0,
}
_FLOATS = {  # name: (lower bound, strict)
    "null_fraction": (0.0, False), "cells_sigma": (0.0, False), "shift_min": (0.0, True),
    "shift_max": (0.0, True), "library_size": (0.0, True), "library_sigma": (0.0, False),
    "dispersion": (0.0, True), "weight_min": (0.0, False), "weight_max": (0.0, False),
    "base_sd": (0.0, False), "saturation": (0.0, True), "condition_effect": (0.0, False),
}
_MAX_DRAWS = 10_000


def _resolve(overrides: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(overrides) - set(REALISTIC_DEFAULTS))
    if unknown:
        raise InputError(
            f"unknown parameter(s) for preset 'realistic': {', '.join(unknown)}; "
            f"allowed: {', '.join(sorted(REALISTIC_DEFAULTS))}"
        )
    p = {**REALISTIC_DEFAULTS, **{k: v for k, v in overrides.items() if v is not None}}
    for name, minimum in _INTS.items():
        p[name] = check_int(name, p[name], minimum)
    for name, (lower, strict) in _FLOATS.items():
        p[name] = check_float(name, p[name], lower, strict)
    p["cover_latents"] = check_bool("cover_latents", p["cover_latents"])
    for low, high in (("min_targets", "max_targets"), ("shift_min", "shift_max"),
                      ("min_cells", "max_cells"), ("weight_min", "weight_max")):
        if p[low] > p[high]:
            raise InputError(f"{low} ({p[low]:g}) must be <= {high} ({p[high]:g})")
    if p["null_fraction"] > 1:
        raise InputError(f"null_fraction must be <= 1, got {p['null_fraction']:g}")
    if p["max_targets"] > p["n_latent"]:
        raise InputError(f"max_targets ({p['max_targets']}) must be <= n_latent ({p['n_latent']})")
    if p["n_heldout"] >= p["n_perturbations"]:
        raise InputError(f"n_heldout ({p['n_heldout']}) must be < n_perturbations ({p['n_perturbations']})")
    n_program = p["n_latent"] * p["genes_per_program"]
    if n_program + p["condition_genes"] > p["n_genes"]:
        raise InputError(
            f"n_latent * genes_per_program + condition_genes ({n_program} + {p['condition_genes']}) "
            f"must be <= n_genes ({p['n_genes']})"
        )
    return p


def _pathway_targets(rng: np.random.Generator, p: dict[str, Any], covered_by: np.ndarray) -> np.ndarray:
    """``(n_pathways, n_latent)`` signed targets (+-1, 0 off); every latent covered when asked.

    The first ``min(n_pathways, n_latent)`` pathways each move one latent of their own (a random
    permutation), so that every latent is moved alone by some pathway and the graph is
    identifiable by its sparsity; the other pathways move ``min_targets``-``max_targets``
    latents drawn at random (sharing them with the single-latent pathways).  Without the
    single-latent pathways, a latent that only ever moves together with another one cannot
    be told apart from it: the sparsest basis is then not the true one.
    """
    n_path, n_lat = p["n_pathways"], p["n_latent"]
    n_pure = min(n_path, n_lat)
    for _ in range(_MAX_DRAWS):
        counts = rng.integers(p["min_targets"], p["max_targets"] + 1, size=n_path)
        counts[:n_pure] = 1
        scores = rng.random((n_path, n_lat))
        primary = rng.permutation(n_lat)[:n_pure]
        scores[np.arange(n_pure), primary] = -1.0  # ranked first
        ranks = np.argsort(np.argsort(scores, axis=1), axis=1)
        on = ranks < counts[:, None]
        if not p["cover_latents"] or on[covered_by].any(axis=0).all():
            sign = np.where(rng.random((n_path, n_lat)) < 0.5, -1.0, 1.0)
            return on * sign
    raise InputError(
        "could not draw pathways whose training members target every latent; add pathways, "
        "raise max_targets or pass cover_latents=False"
    )


def _perturbation_design(rng: np.random.Generator, p: dict[str, Any]):
    """Which perturbations are null, their pathways (-1: none), effect sizes, and shifts."""
    n_pert, n_path = p["n_perturbations"], p["n_pathways"]
    n_null = int(round(p["null_fraction"] * n_pert))
    n_eff = n_pert - n_null
    pathway = np.full(n_pert, -1)
    members = rng.permutation(np.arange(n_eff) % n_path) if n_eff >= n_path else rng.integers(0, n_path, n_eff)
    pathway[:n_eff] = members
    order = rng.permutation(n_pert)  # shuffle so that the held-out tail mixes nulls and effects
    pathway = pathway[order]
    training = np.arange(n_pert) < n_pert - p["n_heldout"]
    covered_by = np.unique(pathway[training & (pathway >= 0)])
    if p["cover_latents"] and covered_by.size == 0:
        raise InputError("no effective training perturbation: lower null_fraction or n_heldout")
    targets = _pathway_targets(rng, p, covered_by)
    log_lo, log_hi = np.log(p["shift_min"]), np.log(p["shift_max"])
    effect = np.where(pathway >= 0, np.exp(rng.uniform(log_lo, log_hi, n_pert)), 0.0)
    jitter = rng.uniform(0.8, 1.2, size=(n_pert, p["n_latent"]))
    shifts = np.where(pathway[:, None] >= 0, targets[np.maximum(pathway, 0)], 0.0) * effect[:, None] * jitter
    return pathway, effect, shifts


def _cells(rng: np.random.Generator, p: dict[str, Any], shifts: np.ndarray, pert_names: list[str]):
    """Labels and latent means of every cell: controls, singles, then combinations."""
    n_pert = len(pert_names)
    sizes = lognormal_sizes(rng, n_pert, p["n_cells_per_perturbation"], p["cells_sigma"])
    sizes = np.clip(np.round(sizes), p["min_cells"], p["max_cells"]).astype(int)
    labels = [CONTROL_LABEL] * p["n_control_cells"]
    means = [np.zeros((p["n_control_cells"], shifts.shape[1]))]
    for name, n, shift in zip(pert_names, sizes, shifts):
        labels += [name] * n
        means.append(np.repeat(shift[None], n, axis=0))
    effective = np.flatnonzero(np.abs(shifts).sum(1) > 0)
    effective = effective[effective < n_pert - p["n_heldout"]]
    combos: list[str] = []
    for _ in range(p["n_combinations"] if effective.size >= 2 else 0):
        a, b = np.sort(rng.choice(effective, size=2, replace=False))
        label = f"{pert_names[a]}+{pert_names[b]}"
        if label in combos:
            continue
        combos.append(label)
        labels += [label] * p["n_cells_per_combination"]
        means.append(np.repeat((shifts[a] + shifts[b])[None], p["n_cells_per_combination"], axis=0))
    return np.array(labels), np.vstack(means), combos, sizes


def _gene_programs(rng: np.random.Generator, p: dict[str, Any]):
    n_genes, n_lat = p["n_genes"], p["n_latent"]
    order = rng.permutation(n_genes)
    n_program = n_lat * p["genes_per_program"]
    program = np.full(n_genes, -1)
    program[order[:n_program]] = np.repeat(np.arange(n_lat), p["genes_per_program"])
    condition_genes = order[n_program:n_program + p["condition_genes"]]
    weight = rng.uniform(p["weight_min"], p["weight_max"], n_genes) * np.where(rng.random(n_genes) < 0.5, -1.0, 1.0)
    weight = np.where(program >= 0, weight, 0.0)
    base = rng.normal(0.0, p["base_sd"], n_genes)
    return program, weight, base, condition_genes


def _condition(rng: np.random.Generator, p: dict[str, Any], labels: np.ndarray, condition_genes: np.ndarray):
    """Per-cell stimulation (or None) and its log-rate effect, ``(cells, genes)`` or 0."""
    if p["condition_effect"] == 0.0 or condition_genes.size == 0:
        return None, 0.0
    uniq, codes = np.unique(labels, return_inverse=True)
    fraction = rng.beta(2.0, 2.0, size=len(uniq))
    fraction[uniq == CONTROL_LABEL] = 0.5
    stimulated = rng.random(len(labels)) < fraction[codes]
    effect = np.zeros(p["n_genes"])
    size = rng.uniform(0.5, 1.0, condition_genes.size) * np.where(rng.random(condition_genes.size) < 0.5, -1.0, 1.0)
    effect[condition_genes] = p["condition_effect"] * size
    return stimulated, stimulated[:, None] * effect[None, :]


def _nb_counts(rng: np.random.Generator, p: dict[str, Any], logits: np.ndarray) -> tuple[sp.csr_matrix, np.ndarray]:
    logits = logits - logits.max(axis=1, keepdims=True)
    rate = np.exp(logits)
    rate /= rate.sum(axis=1, keepdims=True)
    rate *= lognormal_sizes(rng, logits.shape[0], p["library_size"], p["library_sigma"])[:, None]
    theta = p["dispersion"] * np.exp(0.5 * rng.standard_normal(logits.shape[1]))
    lam = rng.gamma(theta[None, :], rate / theta[None, :])  # gamma-Poisson = NB(rate, theta)
    return sp.csr_matrix(rng.poisson(lam).astype(np.float32)), theta


def simulate_realistic(seed: int = 0, **params: Any):
    """Simulate a realistic screen (see the module docstring); ``params`` override
    :data:`REALISTIC_DEFAULTS`.  Returns an :class:`anndata.AnnData` with raw counts in ``X``."""
    import anndata as ad

    p = _resolve(params)
    seed = check_int("seed", seed, 0)
    rng_design, rng_cells, rng_map, rng_z, rng_counts = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(5)
    )
    latent_names = names("z", p["n_latent"], 2)
    pert_names = names("P", p["n_perturbations"], 2)
    pathway, effect, shifts = _perturbation_design(rng_design, p)
    labels, means, combos, sizes = _cells(rng_cells, p, shifts, pert_names)
    z = means + rng_z.standard_normal(means.shape)
    program, weight, base, condition_genes = _gene_programs(rng_map, p)
    s = p["saturation"]
    hz = s * np.tanh(z / s)
    logits = base[None, :] + hz[:, np.maximum(program, 0)] * weight[None, :]
    stimulated, condition_shift = _condition(rng_map, p, labels, condition_genes)
    X, theta = _nb_counts(rng_counts, p, logits + condition_shift)

    categories = ([CONTROL_LABEL] if p["n_control_cells"] else []) + pert_names + combos
    heldout_names = pert_names[p["n_perturbations"] - p["n_heldout"]:]
    obs = pd.DataFrame(index=pd.Index(names("cell", len(labels), 5)))
    obs[PERTURBATION_KEY] = pd.Categorical(labels, categories=categories)
    obs["heldout"] = np.isin(labels, heldout_names)
    if stimulated is not None:
        obs[CONDITION_KEY] = pd.Categorical(np.where(stimulated, "stimulated", "unstimulated"))
    var = pd.DataFrame(index=pd.Index(names("gene", p["n_genes"], 4)))
    var["program"] = np.array([latent_names[i] if i >= 0 else BACKGROUND for i in program], dtype=object)
    var["program_weight"] = weight.astype(np.float32)
    var["base_log_rate"] = base.astype(np.float32)
    var["nb_theta"] = theta.astype(np.float32)
    var["condition_gene"] = np.isin(np.arange(p["n_genes"]), condition_genes) & (stimulated is not None)

    graph = (np.abs(shifts) > 0).astype(np.int8)
    info: dict[str, Any] = {"preset": "realistic", "seed": seed, **p}
    info.update(
        n_cells=len(labels),
        latent_names=np.array(latent_names, dtype=str),
        perturbations=np.array(pert_names, dtype=str),
        graph=graph,
        shifts=shifts.astype(np.float32),
        heldout_perturbations=np.array(heldout_names, dtype=str),
        control_label=CONTROL_LABEL,
        perturbation_key=PERTURBATION_KEY,
        programs=np.array(latent_names, dtype=str),
        null_perturbations=np.array([n for n, r in zip(pert_names, graph) if not r.any()], dtype=str),
        pathway=np.array([f"pathway{k}" if k >= 0 else NO_PATHWAY for k in pathway], dtype=str),
        effect_size=effect.astype(np.float32),
        cells_per_perturbation=sizes.astype(np.int64),
        combinations=np.array(combos, dtype=str),
    )
    adata = ad.AnnData(X=X, obs=obs, var=var)
    adata.obsm["z_true"] = z.astype(np.float32)
    adata.uns["simulation"] = info
    return adata
