"""What the latents mean: gene effects through the decoder, gene-set enrichment, and
recovery of a simulation's truth, written into the AnnData.
"""

from __future__ import annotations

import logging
import numbers
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from scperturb_vae.errors import InputError
from scperturb_vae.get.fitted import GENE_EFFECTS_SUFFIX, effects_key, resolve_key
from scperturb_vae.get.fitted import gene_effects as read_gene_effects
from scperturb_vae.get.fitted import graph as read_graph
from scperturb_vae.get.fitted import latent as read_latent
from scperturb_vae.tl.checks import check_adata
from scperturb_vae.tl.store import as_model, key_for_model, with_setup, writable

logger = logging.getLogger("scperturb_vae")


def gene_effects(
    adata,
    model,
    *,
    key_added: str | None = None,
    n_cells: int = 2000,
    seed: int = 0,
    batch_size: int = 256,
    copy: bool = False,
):
    """The change of each gene's decoded log expression per standard deviation of each latent.

    :func:`scperturb_vae.model.interpretability.gene_effects` (see there for the definition) over a
    seeded sample of ``n_cells`` cells of ``adata``.

    Parameters
    ----------
    adata
        The cells to average over, with the model's genes.
    model
        A trained model or a run folder.
    key_added
        The key (default: the key of a model of the same class in ``adata``, else
        :data:`DEFAULT_KEYS`).
    n_cells, seed, batch_size
        Cells sampled (at most), the seed of the sample, cells decoded at once.
    copy
        Work on a copy of ``adata`` and return it with the table.

    Returns
    -------
    pandas.DataFrame, or (adata copy, DataFrame) with ``copy=True``
        Latents x genes, as :func:`scperturb_vae.model.interpretability.gene_effects` (the transpose of
        the ``varm`` entry; ``attrs["latent_sd"]`` and ``attrs["n_cells"]``), ready for
        :func:`scperturb_vae.tl.enrichment.enrich_latents`.

    Writes
    ------
    ``adata.varm[key + "_gene_effects"]``
        Genes x latents DataFrame (columns: the latent names).
    ``adata.uns[key]["gene_effects"]``
        ``n_cells`` (used), ``seed``, ``latent_sd`` (latent -> standard deviation of its
        posterior means over the sampled cells).
    """
    from scperturb_vae.model.interpretability import gene_effects as _gene_effects

    check_adata(adata)
    trained, _ = as_model(model)
    if isinstance(n_cells, bool) or not isinstance(n_cells, numbers.Integral) or n_cells < 1:
        raise InputError(f"n_cells must be a positive integer, not {n_cells!r}")
    key = key_for_model(adata, trained, key_added)
    if copy:
        adata = adata.copy()
    effects = with_setup(
        trained, adata, lambda a: _gene_effects(trained, a, n_cells=int(n_cells), seed=int(seed), batch_size=batch_size)
    )
    table = effects.T.copy()
    table.index = pd.Index(adata.var_names, name=None)
    table.columns = pd.Index([str(c) for c in effects.index], name=None)
    adata.varm[key + GENE_EFFECTS_SUFFIX] = table
    entry = adata.uns.get(key)
    if not isinstance(entry, Mapping):
        entry = {}
    entry = dict(entry)
    entry["gene_effects"] = writable({
        "n_cells": effects.attrs["n_cells"], "seed": int(seed),
        "latent_sd": {str(k): float(v) for k, v in effects.attrs["latent_sd"].items()},
    })
    adata.uns[key] = entry
    return (adata, effects) if copy else effects


def _gene_set_sources(gene_sets, organism) -> dict[str, dict[str, list[str]]]:
    from scperturb_vae.data.genesets import load_gene_sets

    if isinstance(gene_sets, (str, os.PathLike)):
        return load_gene_sets(gene_sets, organism=organism)
    if isinstance(gene_sets, Mapping):
        if not gene_sets:
            raise InputError("gene_sets is empty")
        values = list(gene_sets.values())
        if all(isinstance(v, Mapping) for v in values):
            sources = {str(s): dict(v) for s, v in gene_sets.items()}
        elif not any(isinstance(v, Mapping) for v in values):
            sources = {"gene_sets": dict(gene_sets)}
        else:
            raise InputError("gene_sets mixes sets and sources; give {set: genes} or {source: {set: genes}}")
        for source, sets in sources.items():
            for name, genes in sets.items():
                if isinstance(genes, str) or not isinstance(genes, (Sequence, np.ndarray, set, frozenset)):
                    raise InputError(f"gene set {name!r} of {source!r} must be a list of genes, "
                                     f"not {type(genes).__name__}")
            sources[source] = {str(n): [str(g) for g in genes] for n, genes in sets.items()}
        return sources
    if isinstance(gene_sets, Sequence) and gene_sets and all(isinstance(p, (str, os.PathLike)) for p in gene_sets):
        return load_gene_sets(list(gene_sets), organism=organism)
    raise InputError("gene_sets must be a GMT/CORUM file, a list of them, or a dict {set name: genes}")


def enrich(
    adata,
    gene_sets,
    *,
    key: str | None = None,
    top_n: int = 50,
    min_size: int = 5,
    max_size: int = 500,
    tests: Sequence[str] = ("ora", "rank"),
    directions: Sequence[str] = ("up", "down", "any"),
    organism: str | None = "Human",
    store: bool = True,
) -> pd.DataFrame:
    """Gene-set enrichment of each latent's gene effects (run :func:`gene_effects` first).

    :func:`scperturb_vae.tl.enrichment.enrich_latents` on ``adata.varm[key + "_gene_effects"]``:
    over-representation among each latent's ``top_n`` genes and rank-sum tests, for the
    genes it raises (``up``), lowers (``down``) or moves either way (``any``), with the FDR
    per latent, source and test.

    Parameters
    ----------
    adata
        An AnnData with gene effects.
    gene_sets
        A GMT file or CORUM table (:func:`scperturb_vae.data.genesets.read_gene_sets`), a list
        of them (each file a source named by its stem), a dict ``{set name: genes}`` (one
        source, ``"gene_sets"``), or a dict ``{source: {set name: genes}}``.
    key
        Whose gene effects (default: the only ones in ``adata.varm``).
    top_n, min_size, max_size, tests, directions
        As :func:`scperturb_vae.tl.enrichment.enrich_latents`.
    organism
        Organism kept from CORUM tables (``None``: all).
    store
        Write the table into ``adata.uns``.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`scperturb_vae.tl.enrichment.ENRICHMENT_COLUMNS`, sorted by latent then
        FDR; ``attrs["universe"]`` and ``attrs["n_sets"]`` per source.

    Writes
    ------
    ``adata.uns[key]["enrichment"]``
        The table (with ``store``).
    ``adata.uns[key]["enrichment_params"]``
        ``top_n``, ``min_size``, ``max_size``, ``tests``, ``directions``, and per source the
        ``universe`` size and the number of sets tested (``n_sets``).
    """
    from scperturb_vae.tl.enrichment import enrich_latents

    check_adata(adata)
    key = effects_key(adata, key)
    effects = read_gene_effects(adata, key)
    sources = _gene_set_sources(gene_sets, organism)
    table = enrich_latents(effects, sources, top_n=top_n, min_size=min_size, max_size=max_size,
                           tests=tests, directions=directions)
    if store:
        entry = dict(adata.uns.get(key, {}) if isinstance(adata.uns.get(key), Mapping) else {})
        entry["enrichment"] = table.reset_index(drop=True).copy()
        entry["enrichment_params"] = writable({
            "top_n": top_n, "min_size": min_size, "max_size": max_size, "tests": list(tests),
            "directions": list(directions), "universe": dict(table.attrs.get("universe", {})),
            "n_sets": dict(table.attrs.get("n_sets", {})),
        })
        adata.uns[key] = entry
    return table


def recovery(adata, *, key: str | None = None, truth_key: str = "z_true") -> dict[str, Any]:
    """Recovery of a simulation's true latents and graph by a fitted model.

    :func:`scperturb_vae.tl.metrics.recovery_summary` of ``adata.obsm[truth_key]`` and the
    true graph of ``adata.uns["simulation"]``
    (:func:`scperturb_vae.data.simulate.graph_from_adata`) against the model's latents
    (``obsm["X_" + key]``) and intervention graph (``uns[key]["intervention_graph"]``).

    Returns
    -------
    dict
        ``mcc_pearson``, ``mcc_spearman``, ``r2``, ``mig``, ``n_matched`` and the graph's
        ``graph_precision``, ``graph_recall``, ``graph_f1``, ``graph_tp``, ``graph_fp``,
        ``graph_fn``, ``graph_auroc``, ``graph_average_precision``,
        ``graph_n_perturbations`` (``None`` where undefined).

    Writes
    ------
    ``adata.uns[key]["recovery"]``
        The dict (``None`` values left out).

    Raises
    ------
    InputError
        Without a simulation's truth, or without a fitted model.
    """
    from scperturb_vae.data.simulate import graph_from_adata
    from scperturb_vae.tl.metrics import recovery_summary

    check_adata(adata)
    key = resolve_key(adata, key, "tl.recovery")
    if truth_key not in adata.obsm or "simulation" not in adata.uns:
        raise InputError(
            f"adata has no simulation truth (obsm[{truth_key!r}] and uns['simulation']); "
            "tl.recovery needs a simulated screen (scperturb_vae.simulate_screen)"
        )
    true_graph = graph_from_adata(adata)
    learned_graph = read_graph(adata, key)
    if not learned_graph.index.isin(true_graph.index).any():
        raise InputError(f"none of the perturbations of uns[{key!r}]'s graph is in the simulation's graph")
    result = recovery_summary(np.asarray(adata.obsm[truth_key], dtype=np.float64), read_latent(adata, key),
                              true_graph, learned_graph)
    entry = dict(adata.uns[key])
    entry["recovery"] = writable(result)
    adata.uns[key] = entry
    return result


def graph_vs_data(
    adata,
    *,
    key: str | None = None,
    layer: str | None = None,
    covariate: str | None = None,
    fdr: float = 0.05,
    threshold: float = 0.5,
    min_correlation: float = 0.8,
    seed: int = 0,
    copy: bool = False,
):
    """Check a fitted model's graph against what the counts show, with no ground truth.

    ``covariate`` (default: the model's ``batch_key``) is compared within, so that e.g. an
    uneven share of stimulated cells is not read as an effect.

    :func:`scperturb_vae.tl.graph_data.perturbation_effects` (DE genes against control, the
    pseudobulk shift, the E-distance; from ``adata``'s raw counts, in ``X`` or ``layer``,
    default the layer the model was fitted on) joined to the graph of ``uns[key]`` by
    :func:`scperturb_vae.tl.graph_data.graph_vs_data`, and the correlated pairs of
    :func:`scperturb_vae.tl.graph_data.effect_pairs`.

    Returns
    -------
    pandas.DataFrame, or (adata copy, DataFrame) with ``copy=True``
        One row per perturbation, with its ``verdict`` (``attrs["counts"]``: the verdicts
        counted, ``attrs["pairs"]``: the correlated pairs).

    Writes
    ------
    ``adata.uns[key]["graph_vs_data"]``
        The table (without its attrs); ``uns[key]["graph_vs_data_pairs"]``: the pairs.
    """
    from scperturb_vae.tl.graph_data import effect_pairs, perturbation_effects
    from scperturb_vae.tl.graph_data import graph_vs_data as join

    check_adata(adata)
    key = resolve_key(adata, key, "tl.graph_vs_data")
    entry = adata.uns[key]
    if copy:
        adata = adata.copy()
    effects = perturbation_effects(
        adata, perturbation_key=str(entry["perturbation_key"]), control_label=str(entry["control_label"]),
        layer=layer if layer is not None else entry.get("layer"), fdr=fdr, seed=seed,
        covariate=covariate if covariate is not None else entry.get("batch_key"),
    )
    learned = read_graph(adata, key)
    evidence = entry.get("edge_evidence")
    table = join(effects, learned, evidence=evidence if isinstance(evidence, pd.DataFrame) else None,
                 threshold=threshold)
    pairs = effect_pairs(table, learned, min_correlation=min_correlation, threshold=threshold)
    table.attrs["pairs"] = pairs
    entry = dict(adata.uns[key])
    entry["graph_vs_data"] = pd.DataFrame(table.to_dict("list"))
    entry["graph_vs_data_pairs"] = pairs
    adata.uns[key] = entry
    return (adata, table) if copy else table
