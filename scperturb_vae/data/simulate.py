"""Simulated Perturb-seq screens with a known perturbation -> latent graph.

Three presets are available through :func:`simulate_screen`: ``"paper"`` and ``"programs"``
below, and ``"realistic"`` (shallow negative binomial counts, weak effects, null perturbations,
pathway groups; :mod:`scperturb_vae.data.realistic`).

``"paper"``
    The "sparse mechanism shift" simulation of the sVAE+ paper (Lopez et al.,
    CLeaR 2023): ``n_latent`` latents, ``n_perturbations`` perturbations with
    ``n_cells_per_perturbation`` cells each.  Every perturbation targets between
    ``min_targets`` and ``max_targets`` latents (count uniform in that range,
    targets uniform without replacement) and shifts each target's mean by
    ``N(shift_mean, shift_sd) * (+1 or -1, prob. 1/2 each)``.  A cell of
    perturbation ``a`` has ``z ~ N(mu_a, I)``.  The latents are mixed by a
    3-layer leaky-ReLU MLP (``n_latent -> n_hidden -> n_hidden -> n_genes``,
    negative slope ``negative_slope``, no biases); each weight matrix is the
    orthogonal polar factor ``U V^T`` of a Gaussian matrix, so every layer is a
    (semi-)orthogonal linear map.  Counts are
    ``Poisson(library_size_c * softmax_over_genes(logits))``.  The reference
    implementation normalised the softmax over cells; here it is over genes,
    so each cell's total count is ``~ library_size`` (1e6 by default, as in
    the paper).

``"programs"``
    Every latent drives its own, disjoint gene program, so that gene-set
    interpretation has a ground truth.  ``n_latent * genes_per_program`` genes
    are assigned at random (not by position or name) to the programs, the rest
    are background genes.  The log-rate of gene ``g`` in a cell is
    ``base_g + W_g,i * h(z_i)`` for the latent ``i`` whose program holds ``g``
    (just ``base_g`` for background genes), with ``base_g ~ N(0, base_sd)``,
    ``|W_g,i| ~ U(weight_min, weight_max)`` with a random sign (up and down
    genes), and ``h(z) = saturation * tanh(z / saturation)`` (smooth, monotone,
    slope 1 at 0, saturating: a nonlinear map in which each program depends on
    its own latent only).  Counts are ``Poisson(L_c * softmax_over_genes)`` with
    per-cell library sizes ``L_c = library_size * exp(library_sigma * N(0, 1))``
    (median 5,000 UMIs, sigma 0.3).  Shifts are drawn as in the paper preset
    but with a smaller mean (3) for realism.

Both presets add a control group of ``n_control_cells`` cells (default: as
many as a perturbation has) with ``z ~ N(0, I)``, labelled ``"control"``, and
mark the last ``n_heldout`` perturbations as held out (they are still
simulated and stored).  With ``cover_latents=True`` (the default) the graph is
drawn again until every latent is targeted by at least one *non-held-out*
perturbation (rejection sampling, so the graph is uniform given that event).

All randomness comes from ``np.random.default_rng`` streams spawned from one
:class:`numpy.random.SeedSequence` built from ``seed``: the graph, the shifts,
the mixing map, the latents and the counts use separate streams, so for
example the graph and the mixing map of a seed do not depend on cell numbers.

AnnData layout (h5ad-writable):

- ``X``: raw counts, CSR, float32.
- ``obs["perturbation"]`` (categorical, ``"control"`` for controls),
  ``obs["heldout"]`` (bool), ``obsm["z_true"]`` (float32 cells x latents).
- ``uns["simulation"]``: the preset, the seed, every parameter, the names
  (``latent_names``, ``perturbations``, ``heldout_perturbations``), the true
  ``graph`` (int8 P x latents) and ``shifts`` (float32, 0 off-target),
  ``control_label`` and ``perturbation_key``; ``programs`` for the programs
  preset, which also has ``var["program"]`` (latent name or ``"none"``),
  ``var["program_weight"]`` (``W_g,i``, 0 for background) and
  ``var["base_log_rate"]``.

Only numpy, scipy, pandas and anndata are imported, so this module is quick
to load.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from scperturb_vae.data.realistic import REALISTIC_DEFAULTS, simulate_realistic
from scperturb_vae.data.simparams import check_bool, check_float, check_int, lognormal_sizes, names, softmax_rows
from scperturb_vae.errors import InputError

__all__ = [
    "PRESETS",
    "CONTROL_LABEL",
    "PERTURBATION_KEY",
    "simulate_screen",
    "graph_from_adata",
    "programs_to_gene_sets",
]

CONTROL_LABEL = "control"
PERTURBATION_KEY = "perturbation"
BACKGROUND_PROGRAM = "none"
PROGRAM_SUFFIX = "_program"

_COMMON_DEFAULTS: dict[str, Any] = {
    "n_latent": 15,
    "n_perturbations": 100,
    "n_cells_per_perturbation": 250,
    "n_control_cells": None,  # None: as many as n_cells_per_perturbation
    "n_genes": 100,
    "min_targets": 1,
    "max_targets": 3,
    "shift_mean": 5.0,
    "shift_sd": 0.5,
    "library_size": 1e6,
    "library_sigma": 0.0,
    "n_heldout": 20,
    "cover_latents": True,
}

#: Defaults of each preset.  ``n_control_cells=None`` means "as many control
#: cells as a perturbation has".  Keys past the common ones are the
#: preset-specific keyword arguments of :func:`simulate_screen`.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        **_COMMON_DEFAULTS,
        "n_hidden": 40,
        "negative_slope": 0.2,
    },
    "programs": {
        **_COMMON_DEFAULTS,
        "n_latent": 10,
        "n_perturbations": 50,
        "n_cells_per_perturbation": 100,
        "n_genes": 500,
        "min_targets": 1,
        "max_targets": 2,
        "shift_mean": 3.0,
        "shift_sd": 0.5,
        "library_size": 5000.0,
        "library_sigma": 0.3,
        "n_heldout": 10,
        "genes_per_program": 30,
        "weight_min": 0.5,
        "weight_max": 1.0,
        "base_sd": 1.0,
        "saturation": 2.0,
    },
    "realistic": REALISTIC_DEFAULTS,
}

_INT_KEYS = {
    "n_latent": 1,
    "n_perturbations": 1,
    "n_cells_per_perturbation": 1,
    "n_control_cells": 0,
    "n_genes": 1,
    "min_targets": 0,
    "max_targets": 1,
    "n_heldout": 0,
    "n_hidden": 1,
    "genes_per_program": 1,
}
_FLOAT_KEYS = {
    # name: (lower bound, lower bound is strict)
    "shift_mean": (None, False),
    "shift_sd": (0.0, False),
    "library_size": (0.0, True),
    "library_sigma": (0.0, False),
    "negative_slope": (None, False),
    "weight_min": (0.0, False),
    "weight_max": (0.0, False),
    "base_sd": (0.0, False),
    "saturation": (0.0, True),
}
_BOOL_KEYS = {"cover_latents"}

_MAX_GRAPH_DRAWS = 10_000


# --------------------------------------------------------------------------- #
# parameters
# --------------------------------------------------------------------------- #
def _resolve_params(preset: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(preset, str) or preset not in PRESETS:
        raise InputError(
            f"unknown simulation preset {preset!r}; choose one of: {', '.join(sorted(PRESETS))}"
        )
    defaults = PRESETS[preset]
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise InputError(
            f"unknown parameter(s) for preset {preset!r}: {', '.join(unknown)}; "
            f"allowed: {', '.join(sorted(defaults))}"
        )
    params = dict(defaults)
    params.update({k: v for k, v in overrides.items() if v is not None})
    if params["n_control_cells"] is None:
        params["n_control_cells"] = params["n_cells_per_perturbation"]

    for name in params:
        if name in _INT_KEYS:
            params[name] = check_int(name, params[name], _INT_KEYS[name])
        elif name in _FLOAT_KEYS:
            lower, strict = _FLOAT_KEYS[name]
            params[name] = check_float(name, params[name], lower, strict)
        elif name in _BOOL_KEYS:
            params[name] = check_bool(name, params[name])

    p = params
    if p["min_targets"] > p["max_targets"]:
        raise InputError(
            f"min_targets ({p['min_targets']}) must be <= max_targets ({p['max_targets']})"
        )
    if p["max_targets"] > p["n_latent"]:
        raise InputError(
            f"max_targets ({p['max_targets']}) must be <= n_latent ({p['n_latent']})"
        )
    if p["n_heldout"] >= p["n_perturbations"]:
        raise InputError(
            f"n_heldout ({p['n_heldout']}) must be < n_perturbations ({p['n_perturbations']})"
        )
    if p["cover_latents"] and (p["n_perturbations"] - p["n_heldout"]) * p["max_targets"] < p["n_latent"]:
        raise InputError(
            f"{p['n_perturbations'] - p['n_heldout']} training perturbations with at most "
            f"{p['max_targets']} targets cannot target all {p['n_latent']} latents; "
            "add perturbations, raise max_targets or pass cover_latents=False"
        )
    if preset == "programs":
        if p["n_latent"] * p["genes_per_program"] > p["n_genes"]:
            raise InputError(
                f"n_latent * genes_per_program ({p['n_latent']} * {p['genes_per_program']}) "
                f"must be <= n_genes ({p['n_genes']})"
            )
        if p["weight_min"] > p["weight_max"]:
            raise InputError(
                f"weight_min ({p['weight_min']:g}) must be <= weight_max ({p['weight_max']:g})"
            )
    return params


# --------------------------------------------------------------------------- #
# sampling
# --------------------------------------------------------------------------- #
def _draw_graph(rng: np.random.Generator, p: dict[str, Any]) -> np.ndarray:
    """P x L 0/1 graph; rows have a uniform number of uniformly chosen targets."""
    n_pert, n_lat = p["n_perturbations"], p["n_latent"]
    n_train = n_pert - p["n_heldout"]
    for _ in range(_MAX_GRAPH_DRAWS):
        counts = rng.integers(p["min_targets"], p["max_targets"] + 1, size=n_pert)
        # the first k entries of a random permutation = k targets without replacement
        ranks = np.argsort(np.argsort(rng.random((n_pert, n_lat)), axis=1), axis=1)
        graph = (ranks < counts[:, None]).astype(np.int8)
        if not p["cover_latents"] or graph[:n_train].any(axis=0).all():
            return graph
    raise InputError(
        f"could not draw a graph in which every latent is targeted by a training perturbation "
        f"in {_MAX_GRAPH_DRAWS} tries; add perturbations, raise min_targets/max_targets "
        "or pass cover_latents=False"
    )


def _draw_shifts(rng: np.random.Generator, graph: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    magnitude = rng.normal(p["shift_mean"], p["shift_sd"], size=graph.shape)
    sign = np.where(rng.random(graph.shape) < 0.5, -1.0, 1.0)
    return (magnitude * sign * graph).astype(np.float32)


def _semi_orthogonal(rng: np.random.Generator, n_out: int, n_in: int) -> np.ndarray:
    """Orthogonal polar factor U V^T of a Gaussian n_out x n_in matrix."""
    u, _, vt = np.linalg.svd(rng.standard_normal((n_out, n_in)), full_matrices=False)
    return u @ vt


def _leaky_relu(x: np.ndarray, slope: float) -> np.ndarray:
    return np.where(x >= 0, x, slope * x)


def _poisson_counts(
    rng: np.random.Generator, logits: np.ndarray, library: np.ndarray
) -> sp.csr_matrix:
    rates = softmax_rows(logits) * library[:, None]
    counts = rng.poisson(rates).astype(np.float32)
    return sp.csr_matrix(counts)


def _library_sizes(rng: np.random.Generator, n_cells: int, p: dict[str, Any]) -> np.ndarray:
    return lognormal_sizes(rng, n_cells, p["library_size"], p["library_sigma"])


def simulate_screen(
    preset: str = "paper",
    *,
    seed: int = 0,
    n_latent: int | None = None,
    n_perturbations: int | None = None,
    n_cells_per_perturbation: int | None = None,
    n_control_cells: int | None = None,
    n_genes: int | None = None,
    min_targets: int | None = None,
    max_targets: int | None = None,
    shift_mean: float | None = None,
    shift_sd: float | None = None,
    library_size: float | None = None,
    n_heldout: int | None = None,
    **preset_specific: Any,
):
    """Simulate a Perturb-seq screen with a known perturbation -> latent graph.

    ``None`` means the preset's default (see :data:`PRESETS`).  Preset-specific
    keyword arguments: ``library_sigma`` and ``cover_latents`` (both presets),
    ``n_hidden`` and ``negative_slope`` (``"paper"``), ``genes_per_program``,
    ``weight_min``, ``weight_max``, ``base_sd`` and ``saturation``
    (``"programs"``).  Returns an :class:`anndata.AnnData` laid out as
    described in the module docstring.  Raises :class:`InputError` for an
    unknown preset, an unknown parameter or impossible sizes.
    """
    import anndata as ad  # imported here: keeps the module import light

    overrides = dict(
        n_latent=n_latent,
        n_perturbations=n_perturbations,
        n_cells_per_perturbation=n_cells_per_perturbation,
        n_control_cells=n_control_cells,
        n_genes=n_genes,
        min_targets=min_targets,
        max_targets=max_targets,
        shift_mean=shift_mean,
        shift_sd=shift_sd,
        library_size=library_size,
        n_heldout=n_heldout,
    )
    overrides.update(preset_specific)
    if preset == "realistic":
        return simulate_realistic(seed=seed, **{k: v for k, v in overrides.items() if v is not None})
    p = _resolve_params(preset, overrides)
    seed = check_int("seed", seed, 0)

    rng_graph, rng_shift, rng_map, rng_z, rng_counts = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(5)
    )

    n_lat, n_pert, n_genes_ = p["n_latent"], p["n_perturbations"], p["n_genes"]
    n_per, n_ctrl = p["n_cells_per_perturbation"], p["n_control_cells"]
    latent_names = names("z", n_lat, 2)
    pert_names = names("P", n_pert, 3)
    heldout_names = pert_names[n_pert - p["n_heldout"]:]

    graph = _draw_graph(rng_graph, p)
    shifts = _draw_shifts(rng_shift, graph, p)

    # cells: controls first, then each perturbation in order
    labels = np.array([CONTROL_LABEL] * n_ctrl + [n for n in pert_names for _ in range(n_per)])
    means = np.vstack([np.zeros((n_ctrl, n_lat)), np.repeat(shifts.astype(np.float64), n_per, axis=0)])
    n_cells = means.shape[0]
    z = means + rng_z.standard_normal((n_cells, n_lat))

    var = pd.DataFrame(index=pd.Index(names("gene", n_genes_, 3 if preset == "paper" else 4)))
    if preset == "paper":
        dims = [n_lat, p["n_hidden"], p["n_hidden"], n_genes_]
        weights = [_semi_orthogonal(rng_map, dims[i + 1], dims[i]) for i in range(3)]
        h = z
        for i, w in enumerate(weights):
            h = h @ w.T
            if i < len(weights) - 1:
                h = _leaky_relu(h, p["negative_slope"])
        logits = h
    else:
        n_prog_genes = n_lat * p["genes_per_program"]
        order = rng_map.permutation(n_genes_)
        program_of_gene = np.full(n_genes_, -1)
        program_of_gene[order[:n_prog_genes]] = np.repeat(np.arange(n_lat), p["genes_per_program"])
        magnitude = rng_map.uniform(p["weight_min"], p["weight_max"], size=n_genes_)
        sign = np.where(rng_map.random(n_genes_) < 0.5, -1.0, 1.0)
        gene_weight = np.where(program_of_gene >= 0, magnitude * sign, 0.0)
        base = rng_map.normal(0.0, p["base_sd"], size=n_genes_)
        s = p["saturation"]
        hz = s * np.tanh(z / s)
        driver = hz[:, np.maximum(program_of_gene, 0)]  # cells x genes
        logits = base[None, :] + driver * gene_weight[None, :]
        var["program"] = np.array(
            [latent_names[i] if i >= 0 else BACKGROUND_PROGRAM for i in program_of_gene], dtype=object
        )
        var["program_weight"] = gene_weight.astype(np.float32)
        var["base_log_rate"] = base.astype(np.float32)

    library = _library_sizes(rng_counts, n_cells, p)
    X = _poisson_counts(rng_counts, logits, library)

    categories = ([CONTROL_LABEL] if n_ctrl > 0 else []) + pert_names
    obs = pd.DataFrame(index=pd.Index(names("cell", n_cells, 5)))
    obs[PERTURBATION_KEY] = pd.Categorical(labels, categories=categories)
    obs["heldout"] = np.isin(labels, heldout_names)

    info: dict[str, Any] = {"preset": preset, "seed": seed}
    for key, value in p.items():
        info[key] = value
    info.update(
        {
            "n_cells": int(n_cells),
            "latent_names": np.array(latent_names, dtype=str),
            "perturbations": np.array(pert_names, dtype=str),
            "graph": graph.astype(np.int8),
            "shifts": shifts.astype(np.float32),
            "heldout_perturbations": np.array(heldout_names, dtype=str),
            "control_label": CONTROL_LABEL,
            "perturbation_key": PERTURBATION_KEY,
        }
    )
    if preset == "programs":
        info["programs"] = np.array(latent_names, dtype=str)

    adata = ad.AnnData(X=X, obs=obs, var=var)
    adata.obsm["z_true"] = z.astype(np.float32)
    adata.uns["simulation"] = info
    return adata


# --------------------------------------------------------------------------- #
# ground truth accessors
# --------------------------------------------------------------------------- #
def _simulation_info(adata) -> Mapping[str, Any]:
    info = getattr(adata, "uns", {}).get("simulation")
    if not isinstance(info, Mapping):
        raise InputError("the file has no simulation ground truth (uns['simulation'] is missing)")
    return info


def _str_list(values: Any) -> list[str]:
    if isinstance(values, str):
        return [values]
    return [str(v) for v in np.asarray(values).ravel().tolist()]


def graph_from_adata(adata) -> pd.DataFrame:
    """The true perturbation x latent 0/1 graph stored by :func:`simulate_screen`."""
    info = _simulation_info(adata)
    for key in ("graph", "perturbations", "latent_names"):
        if key not in info:
            raise InputError(f"uns['simulation'] has no {key!r} entry")
    graph = np.asarray(info["graph"])
    rows = _str_list(info["perturbations"])
    cols = _str_list(info["latent_names"])
    if graph.ndim != 2 or graph.shape != (len(rows), len(cols)):
        raise InputError(
            f"uns['simulation']['graph'] has shape {graph.shape}, expected {(len(rows), len(cols))}"
        )
    return pd.DataFrame(
        graph.astype(np.int8),
        index=pd.Index(rows, name="perturbation"),
        columns=pd.Index(cols, name="latent"),
    )


def programs_to_gene_sets(adata) -> dict[str, list[str]]:
    """Ground-truth gene programs of a ``programs`` simulation as gene sets.

    Returns ``{"z00_program": [genes...], ...}`` in latent order.
    """
    info = _simulation_info(adata)
    if "programs" not in info or "program" not in adata.var.columns:
        raise InputError(
            "the file has no gene programs (simulate it with preset='programs' to get them)"
        )
    programs = _str_list(info["programs"])
    gene_program = adata.var["program"].astype(str).to_numpy()
    genes = adata.var_names.astype(str).to_numpy()
    return {f"{name}{PROGRAM_SUFFIX}": genes[gene_program == name].tolist() for name in programs}
