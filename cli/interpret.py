"""``scvae interpret``: name a run's latents by the genes they move and the perturbations that move them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ._common import (
    OverwriteOpt,
    SeedOpt,
    ThreadsOpt,
    check_inputs_early,
    quiet_third_party_warnings,
    setup_logging,
    use_threads,
    user_errors,
)


def interpret(
    ctx: typer.Context,
    run: Annotated[Path, typer.Option("--run", "-r", help="Run folder made by scvae train (e.g. runs/NAME).", show_default=False)],
    gene_sets: Annotated[
        list[Path],
        typer.Option("--gene-sets", "-g", help="Gene sets: a GMT file or a CORUM complex table; repeat for several.",
                     show_default=False),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder to create.", show_default=False)],
    groups: Annotated[
        Optional[Path],
        typer.Option("--groups", help="Perturbation groups for the perturbation side: a cluster table "
                     "(long or 'members' layout), a CORUM complex table, or a GMT file [default: none, the "
                     "perturbation side is skipped].", show_default=False),
    ] = None,
    adata: Annotated[
        Optional[Path],
        typer.Option("--adata", help="The run's input .h5ad, when it moved [default: the path in run.json].",
                     show_default=False),
    ] = None,
    top_n: Annotated[int, typer.Option("--top-n", help="Genes per latent and direction for over-representation.")] = 50,
    n_cells: Annotated[int, typer.Option("--n-cells", help="Cells averaged over for the gene effects.")] = 2000,
    latents: Annotated[
        Optional[str],
        typer.Option("--latents", help="Latents to traverse, comma-separated (e.g. latent03,latent07) "
                     "[default: the 4 with the most targeting perturbations].", show_default=False),
    ] = None,
    min_size: Annotated[int, typer.Option("--min-size", help="Smallest gene set tested (genes within the model's).")] = 5,
    max_size: Annotated[int, typer.Option("--max-size", help="Largest gene set tested.")] = 500,
    threshold: Annotated[float, typer.Option("--threshold", help="Graph probability above which a perturbation targets a latent.")] = 0.5,
    seed: SeedOpt = 0,
    overwrite: OverwriteOpt = False,
    threads: ThreadsOpt = None,
) -> None:
    """Interpret a trained run: gene effects per latent, gene-set enrichment, targets, plots.

    Writes OUT/gene_effects.csv (latents x genes: change of decoded log expression per
    latent standard deviation), OUT/enrichment.csv (over-representation and rank-sum
    tests, up and down, sorted by latent then FDR), OUT/perturbation_targets.csv,
    OUT/perturbation_enrichment.csv (with --groups), OUT/traversals.csv, OUT/summary.md,
    OUT/interpret.json and four plots. It also checks the graph against the data:
    OUT/graph_vs_data.csv (per perturbation: DE genes against control from the counts
    alone, within the run's batches; pseudobulk shift; E-distance; its edges; a verdict),
    OUT/graph_vs_data_pairs.csv (correlated perturbations and whether they share a latent)
    and OUT/graph_vs_data.png. OUT appears only when complete. The summary lines are
    printed on stdout.

    Examples:

    \b
      scvae interpret --run runs/svae --gene-sets h.all.v7.0.symbols.gmt --out runs/svae/interpret
      scvae interpret --run runs/svae --gene-sets h.all.gmt --gene-sets GO_BP.gmt --groups clusters.tsv --out interp
    """
    setup_logging()
    with user_errors(ctx):
        check_inputs_early(h5ad=[adata], folders=[("run folder", run)],
                           files=[*(("gene-set file", g) for g in (gene_sets if isinstance(gene_sets, list) else [gene_sets])),
                                  ("groups file", groups)])
        from scperturb_vae.pipelines.interpret import interpret_run

        use_threads(threads)
        quiet_third_party_warnings()
        result = interpret_run(
            run, gene_sets, out, groups=groups, adata=adata, top_n=top_n, n_cells=n_cells, latents=latents,
            overwrite=overwrite, seed=seed, min_size=min_size, max_size=max_size, threshold=threshold,
        )
        for line in result["summary_lines"]:
            typer.echo(line)
        typer.echo(f"wrote {result['out']}/ ({', '.join(result['files'])})")
