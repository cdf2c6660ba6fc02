"""Name the latents of a trained run: the genes each one moves, the perturbations that move it.

An identifiable latent becomes useful once a biologist can name it.  Two views do:

- the perturbations that move it, read from the learned intervention graph
  (:func:`scperturb_vae.tl.targets.perturbation_targets`: "latent07 is shifted by knockouts
  of MED12, MED13, CCNC"), and tested for enrichment of perturbation groups (clusters,
  complexes);
- the genes it moves, its decoder effects
  (:func:`scperturb_vae.model.interpretability.gene_effects`), tested for enrichment of gene
  sets (:func:`scperturb_vae.tl.enrichment.enrich_latents`: "Mediator complex",
  "interferon-gamma response").

:func:`interpret_run` does both for a run folder (``scvae train``'s output) and writes
one output folder (built under a temporary name, renamed when complete):

``gene_effects.csv``
    Latents (named as in ``latent.h5ad``) x genes: the gene effects.
``enrichment.csv``
    Gene-set enrichment, sorted by latent then FDR (columns: see
    :data:`scperturb_vae.tl.enrichment.ENRICHMENT_COLUMNS`).
``perturbation_targets.csv``
    :func:`scperturb_vae.tl.targets.perturbation_targets` of the run's intervention graph.
``perturbation_enrichment.csv``
    With ``groups``: enrichment of perturbation groups among each latent's targets.
``traversals.csv``
    :func:`scperturb_vae.model.interpretability.latent_traversal` of the plotted latents
    (long table).
``graph_vs_data.csv``, ``graph_vs_data_pairs.csv``, ``graph_vs_data.png``
    The graph against the data (:mod:`scperturb_vae.tl.graph_data`): per perturbation its
    effect measured from the counts alone (DE genes against control, pseudobulk shift,
    E-distance), its edges and evidence, and a verdict (``agree``, ``effect without edge``,
    ``edge without effect``); the pairs of perturbations whose shifts correlate, and whether
    they share a latent.
``summary.md``
    One line per latent: its top targeting perturbations, top genes up and down, top
    gene sets.
``interpret.json``
    Settings, gene-set counts and universe sizes per source, the latents' spreads,
    timings.
``graph_heatmap.png``, ``gene_effects_heatmap.png``, ``enrichment_dotplot.png``, ``traversals.png``
    The plots (:func:`scperturb_vae.pl.interpret.interpret_figures`).

The computations live in their layers (:mod:`scperturb_vae.model.interpretability`,
:mod:`scperturb_vae.tl.targets`, :mod:`scperturb_vae.tl.enrichment`, :mod:`scperturb_vae.pl`);
this module reads the inputs, runs them and writes the folder.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from scperturb_vae.data.genesets import load_gene_sets, read_groups, restrict_gene_sets
from scperturb_vae.errors import InputError
from scperturb_vae.io import atomic_dir, check_output, write_json
from scperturb_vae.tl.targets import (
    ACTIVE_VARIANCE,
    default_traversal_latents,
    fmt_p,
    parse_latents,
    perturbation_targets,
    summary_lines,
    top_genes,
    with_shifts,
)

logger = logging.getLogger("scperturb_vae")

__all__ = ["OUTPUT_FILES", "interpret_run"]

#: Files every interpretation folder holds (``perturbation_enrichment.csv`` only with groups).
OUTPUT_FILES = (
    "gene_effects.csv", "enrichment.csv", "perturbation_targets.csv", "traversals.csv",
    "graph_vs_data.csv", "graph_vs_data_pairs.csv", "graph_vs_data.png",
    "summary.md", "interpret.json", "graph_heatmap.png", "gene_effects_heatmap.png",
    "enrichment_dotplot.png", "traversals.png",
)


def _check_settings(top_n: int, n_cells: int, min_size: int, max_size: int, threshold: float) -> None:
    if top_n < 1:
        raise InputError(f"--top-n must be at least 1, not {top_n}")
    if n_cells < 1:
        raise InputError(f"the number of cells must be at least 1, not {n_cells}")
    if min_size < 1 or max_size < min_size:
        raise InputError(f"gene-set sizes need 1 <= --min-size <= --max-size, got {min_size} and {max_size}")
    if not 0.0 <= threshold < 1.0:
        raise InputError(f"--threshold must be in [0, 1), not {threshold}")


def _read_groups(groups, organism: str | None):
    """``(group sets, descriptions, kind)`` of the perturbation groups file, or Nones."""
    if groups is None:
        return None, None, None
    group_sets, descriptions, group_kind = read_groups(groups, organism=organism)
    logger.info(f"read {len(group_sets)} perturbation groups ({group_kind}) from {groups}")
    return group_sets, descriptions, group_kind


def _load(run_dir, adata, latents, gene_sets: dict):
    """The run (its latents checked against the model's), the latents chosen, the genes;
    the gene sets are restricted to the run's genes."""
    from scperturb_vae.model.runs import load_run

    run = load_run(run_dir, adata=adata)
    names = [str(x) for x in run.latent.var_names]
    if names != [str(x) for x in run.model.latent_names]:
        raise InputError(f"{run_dir}: latent.h5ad's latents differ from the model's; is the run folder intact?")
    chosen = parse_latents(latents, names)
    genes = run.adata.var_names.astype(str)
    for source, sets in gene_sets.items():
        restrict_gene_sets(sets, genes, source=f"gene-set file {source!r}")
    return run, names, chosen, genes


def _traversals(model, adata, chosen: Sequence[str], effects: pd.DataFrame, n_cells: int, seed: int) -> dict:
    """Latent -> traversal of its top genes (at most 500 cells)."""
    from scperturb_vae.model.interpretability import latent_traversal

    # in the gene effects' sd units: one sd per latent across the summary, the tables and the plots
    sd = effects.attrs["latent_sd"]
    return {latent: latent_traversal(model, latent, genes=top_genes(effects, latent), n_cells=min(500, n_cells),
                                     seed=seed, adata=adata, latent_sd=sd[latent])
            for latent in chosen}


def _record(settings: dict, run, names, genes, effects, enrichment, targets, gene_sets, group_sets) -> dict:
    """The content of ``interpret.json`` (without the timing)."""
    latent_sd = effects.attrs["latent_sd"]
    return {
        "settings": settings,
        "model": run.summary.get("model_class"),
        "n_cells_used": effects.attrs["n_cells"],
        "n_genes": len(genes),
        "latent_sd": latent_sd,
        "active_latents": [x for x in names if latent_sd[x] ** 2 > ACTIVE_VARIANCE],
        "gene_sets": {
            source: {"n_sets_read": len(sets), "n_sets_tested": int(enrichment.attrs["n_sets"].get(source, 0)),
                     "universe": int(enrichment.attrs["universe"].get(source, 0))}
            for source, sets in gene_sets.items()
        },
        "n_targets": {x: int((targets["latent"] == x).sum()) for x in names},
        "n_groups": None if group_sets is None else len(group_sets),
    }


def _graph_check(run, threshold: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The graph against the counts of the run's cells: the table and the correlated pairs."""
    from scperturb_vae.tl.graph_data import effect_pairs, graph_vs_data, perturbation_effects

    model = run.model
    setup = model.adata_manager.registry["setup_args"]
    effects = perturbation_effects(  # within the batches the model was trained with, if any
        run.adata, perturbation_key=model.perturbation_key, control_label=model.control_label,
        layer=setup.get("layer"), covariate=setup.get("batch_key"), seed=seed,
    )
    table = graph_vs_data(effects, run.graph, evidence=model.get_edge_evidence(), threshold=threshold)
    return table, effect_pairs(table, run.graph, threshold=threshold)


def _graph_check_md(table: pd.DataFrame, pairs: pd.DataFrame) -> list[str]:
    counts = table.attrs["counts"]
    n_effect = int(table["has_effect"].sum())
    md = ["", "## The graph against the data", "",
          (f"{n_effect} of {len(table)} perturbations have a measurable effect on the counts "
           f"(at least {table.attrs['min_de']} gene DE against control at FDR {table.attrs['fdr']:g}). "
           f"Graph and data agree on {counts['agree']}; {counts['effect without edge']} have an effect "
           f"but no edge, {counts['edge without effect']} an edge but no measurable effect"
           + (f", {counts['not in graph']} are not in the graph (held out)." if counts["not in graph"] else ".")),
          ""]
    for row in table[table["verdict"].isin(["effect without edge", "edge without effect"])].itertuples(index=False):
        md.append(f"- {row.perturbation}: {row.verdict} ({row.n_de} DE genes, {row.n_cells} cells, "
                  f"strongest edge probability {row.max_probability:.2f})")
    for row in pairs.head(10).itertuples(index=False):
        shared = f"share {row.shared_latents}" if row.share_latent else "share no latent"
        md.append(f"- {row.a} and {row.b}: shifts correlate {row.correlation:.2f} over {row.n_genes} genes; {shared}")
    return md


def _traversal_table(traversals: dict) -> pd.DataFrame:
    """The traversals as one long table: ``latent``, ``value``, ``gene``, ``log_expression``."""
    long = [
        frame.rename_axis(index="value").reset_index().melt(id_vars="value", var_name="gene",
                                                              value_name="log_expression").assign(latent=latent)
        for latent, frame in traversals.items()
    ]
    columns = ["latent", "value", "gene", "log_expression"]
    return pd.concat(long, ignore_index=True)[columns] if long else pd.DataFrame(columns=columns)


def _summary_md(run_dir, run, names, genes, effects, record, threshold, lines, pert_enrichment, check) -> str:
    title = f"Interpretation of run {Path(run_dir).name}"
    sources = ", ".join(f"{s} ({v['n_sets_tested']} sets, universe {v['universe']})"
                        for s, v in record["gene_sets"].items())
    md = [
        f"# {title}",
        "",
        (f"{run.summary.get('model_class', 'model')} with {len(names)} latents, {len(run.graph)} perturbations, "
         f"{len(genes)} genes; gene effects over {effects.attrs['n_cells']} cells; gene sets: {sources}"),
        "",
        ("Effects are changes of the decoded log expression per standard deviation of the latent; "
         f"targets are perturbations with graph probability > {threshold:g} (with the shift of their cells "
         "in control sd, and their cells); a latent is named by gene sets only at FDR <= 0.1, by one test "
         "throughout (over-representation among its top genes, as in the dot plot; the rank test when "
         "no ORA was run); enrichment.csv holds both tests."),
        "",
    ]
    md += _universe_warnings(record["gene_sets"], len(genes))
    md += [f"- {line}" for line in lines]
    if pert_enrichment is not None and len(pert_enrichment):
        best = pert_enrichment.drop_duplicates("latent")
        md += ["", "## Perturbation groups (best per latent)", ""]
        md += [f"- {r.latent}: {r.group}{' (' + r.description + ')' if r.description else ''}: "
               f"{r.overlap} of {r.n_targets} targets ({r.perturbations}), FDR {fmt_p(r.fdr)}"
               for r in best.itertuples(index=False)]
    md += _graph_check_md(*check)
    return "\n".join(md) + "\n"


#: below this share of the genes in any set of a collection, the summary warns that enrichment has little power
SMALL_UNIVERSE = 0.5


def _universe_warnings(sources: dict, n_genes: int) -> list[str]:
    """A warning line for each gene-set collection that covers few of the run's genes."""
    lines = []
    for source, info in sources.items():
        universe = int(info.get("universe", 0))
        if universe < SMALL_UNIVERSE * n_genes:
            lines.append(f"**Warning:** only {universe} of the {n_genes} genes are in any set of {source}: its "
                         "enrichment has little power here (a larger collection, or more genes in the run, helps).")
    return lines + ([""] if lines else [])


def _signed_graph(run, run_dir) -> pd.DataFrame | None:
    """The run's ``edges.csv`` (runs from before it existed: computed from the model)."""
    path = Path(run_dir) / "edges.csv"
    if path.exists():
        return pd.read_csv(path)
    return run.model.get_signed_graph(run.adata)


def _write_tables(tmp: Path, effects, enrichment, targets, pert_enrichment, traversals, check, summary: str) -> None:
    from scperturb_vae.pl.base import save
    from scperturb_vae.pl.graph_data import graph_vs_data

    table, pairs = check
    table.to_csv(tmp / "graph_vs_data.csv", index=False)
    pairs.to_csv(tmp / "graph_vs_data_pairs.csv", index=False)
    save(graph_vs_data(table, threshold=table.attrs["threshold"]), tmp / "graph_vs_data.png")
    effects.to_csv(tmp / "gene_effects.csv")
    enrichment.to_csv(tmp / "enrichment.csv", index=False)
    targets.to_csv(tmp / "perturbation_targets.csv", index=False)
    if pert_enrichment is not None:
        pert_enrichment.to_csv(tmp / "perturbation_enrichment.csv", index=False)
    _traversal_table(traversals).to_csv(tmp / "traversals.csv", index=False)
    (tmp / "summary.md").write_text(summary, encoding="utf-8")


def _write_plots(tmp: Path, run_dir, graph, effects, enrichment, names, traversals) -> None:
    from scperturb_vae.pl.base import save
    from scperturb_vae.pl.interpret import interpret_figures

    for name, fig in interpret_figures(graph, effects, enrichment, names, traversals, Path(run_dir).name).items():
        save(fig, tmp / name)


def _as_list(paths) -> list:
    if isinstance(paths, (str, os.PathLike)):
        return [paths]
    return list(paths)


def interpret_run(
    run_dir: str | os.PathLike,
    gene_set_paths: str | os.PathLike | Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    groups: str | os.PathLike | None = None,
    adata: str | os.PathLike | None = None,
    top_n: int = 50,
    n_cells: int = 2000,
    latents: Sequence[str] | str | None = None,
    overwrite: bool = False,
    seed: int = 0,
    min_size: int = 5,
    max_size: int = 500,
    threshold: float = 0.5,
    organism: str | None = "Human",
) -> dict[str, Any]:
    """Interpret a run folder: gene effects, gene-set enrichment, targets, plots.

    Writes the folder ``out`` described in the module docstring, atomically (it appears
    complete or not at all; an existing one is replaced only with ``overwrite``, once the
    new one is complete).

    Parameters
    ----------
    run_dir
        A run folder made by ``scvae train`` (:func:`scperturb_vae.pipelines.train.train_run`).
    gene_set_paths
        One or more GMT files or CORUM tables (:func:`scperturb_vae.data.genesets.read_gene_sets`).
    out
        The folder to write.
    groups
        Perturbation groups for the perturbation side (:func:`read_groups`: a cluster
        table, a CORUM table, or a GMT file).
    adata
        The input .h5ad when it moved since training (default: the path in run.json).
    top_n
        Genes per latent and direction for the over-representation test.
    n_cells
        Cells averaged over for the gene effects (traversals use at most 500 of them).
    latents
        Latents to traverse (names, or one comma-separated string); default: the 4 with
        the most targeting perturbations.
    overwrite
        Replace an existing ``out``.
    seed
        Seed of the cell samples.
    min_size, max_size
        Gene-set size filter (within each source's universe).
    threshold
        Graph probability above which a perturbation targets a latent.
    organism
        Organism kept from CORUM tables.

    Returns
    -------
    dict
        ``out`` (Path), ``summary_lines``, ``files``, and the content of
        ``interpret.json`` (``settings``, ``gene_sets``, ``latent_sd``, ``timing``, ...).

    Raises
    ------
    InputError
        Missing or incomplete run folder, unreadable or empty gene-set or groups file, a
        gene-set file without a gene of the model, an unknown latent, bad settings.
    OutputError
        ``out`` exists (without ``overwrite``) or cannot be written.
    """
    from scperturb_vae.model.interpretability import gene_effects
    from scperturb_vae.model.runs import read_run_summary
    from scperturb_vae.tl.enrichment import enrich_latents, perturbation_set_enrichment

    start = time.perf_counter()
    timing: dict[str, float] = {}
    _check_settings(top_n, n_cells, min_size, max_size, threshold)
    out = check_output(out, overwrite)
    read_run_summary(run_dir)
    gene_sets = load_gene_sets(gene_set_paths, organism=organism)
    group_sets, descriptions, group_kind = _read_groups(groups, organism)
    timing["read_inputs_s"] = time.perf_counter() - start

    t = time.perf_counter()
    run, names, chosen, genes = _load(run_dir, adata, latents, gene_sets)
    timing["load_run_s"] = time.perf_counter() - t

    if group_sets is not None:  # no group among the screen's perturbations: fail before the long part
        perturbation_set_enrichment({}, group_sets, [str(p) for p in run.graph.index])
    t = time.perf_counter()
    logger.info(f"gene effects of {len(names)} latents on {len(genes)} genes over {min(n_cells, run.adata.n_obs)} cells")
    effects = gene_effects(run.model, run.adata, n_cells=n_cells, seed=seed)
    effects.index = pd.Index(names, name="latent")
    latent_sd = effects.attrs["latent_sd"]
    timing["gene_effects_s"] = time.perf_counter() - t

    t = time.perf_counter()
    enrichment = enrich_latents(effects, gene_sets, top_n=top_n, min_size=min_size, max_size=max_size)
    timing["enrichment_s"] = time.perf_counter() - t

    targets = with_shifts(perturbation_targets(run.graph, threshold=threshold), _signed_graph(run, run_dir))
    pert_enrichment = None
    if group_sets is not None:
        target_lists = {lat: targets.loc[targets["latent"] == lat, "perturbation"].tolist() for lat in names}
        pert_enrichment = perturbation_set_enrichment(
            target_lists, group_sets, [str(p) for p in run.graph.index], descriptions=descriptions
        )

    t = time.perf_counter()
    if chosen is None:
        chosen = default_traversal_latents(targets, names, latent_sd)
    traversals = _traversals(run.model, run.adata, chosen, effects, n_cells, seed)
    timing["traversals_s"] = time.perf_counter() - t

    t = time.perf_counter()
    check = _graph_check(run, threshold, seed)
    timing["graph_vs_data_s"] = time.perf_counter() - t

    lines = summary_lines(effects, enrichment, targets, latent_sd=latent_sd)
    settings = {
        "run": str(Path(run_dir).resolve()), "gene_sets": [str(Path(p).resolve()) for p in _as_list(gene_set_paths)],
        "groups": None if groups is None else str(Path(groups).resolve()), "groups_kind": group_kind,
        "adata": None if adata is None else str(Path(adata).resolve()), "top_n": top_n, "n_cells": n_cells,
        "traversal_latents": chosen, "seed": seed, "min_size": min_size, "max_size": max_size,
        "threshold": threshold, "organism": organism,
    }
    record = _record(settings, run, names, genes, effects, enrichment, targets, gene_sets, group_sets)
    record["graph_vs_data"] = {**check[0].attrs["counts"], "n_with_effect": int(check[0]["has_effect"].sum()),
                               "n_correlated_pairs": len(check[1]),
                               "n_pairs_sharing_a_latent": int(check[1]["share_latent"].sum())}

    t = time.perf_counter()
    with atomic_dir(out, overwrite=overwrite) as tmp:
        summary = _summary_md(run_dir, run, names, genes, effects, record, threshold, lines, pert_enrichment, check)
        _write_tables(tmp, effects, enrichment, targets, pert_enrichment, traversals, check, summary)
        _write_plots(tmp, run_dir, run.graph, effects, enrichment, names, traversals)
        timing["write_s"] = time.perf_counter() - t
        timing["total_s"] = time.perf_counter() - start
        record["timing"] = {k: round(v, 3) for k, v in timing.items()}
        write_json(record, tmp / "interpret.json")
        files = sorted(p.name for p in tmp.iterdir())
    logger.info(f"interpretation written in {timing['total_s']:.1f} s")
    return {"out": out, "summary_lines": lines, "files": files, **record}
