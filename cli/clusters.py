"""``scvae clusters``: group the perturbations of a screen into clusters (for held-out sets)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ._common import (
    AdataOpt,
    ControlOpt,
    LayerOpt,
    OverwriteOpt,
    PerturbationKeyOpt,
    check_inputs_early,
    setup_logging,
    user_errors,
)

#: Widths of the summary printed to stdout.
_MEMBERS_WIDTH = 60
_DESCRIPTION_WIDTH = 40


def _truncate(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters, ending in ``...`` when cut."""
    text = str(text)
    return text if len(text) <= width else text[: width - 3] + "..."


def _format_summary(summary) -> list[str]:
    """Lines of a fixed-width table: cluster, size, members (truncated), description."""
    has_description = bool((summary["description"] != "").any())
    rows = [("cluster", "size", "members") + (("description",) if has_description else ())]
    for record in summary.itertuples(index=False):
        row = (record.cluster, str(record.size), _truncate(record.members.replace(",", ", "), _MEMBERS_WIDTH))
        if has_description:
            row += (_truncate(record.description, _DESCRIPTION_WIDTH),)
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [cell.rjust(w) if i == 1 else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
    return lines


def clusters(
    ctx: typer.Context,
    adata: AdataOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output CSV (perturbation, cluster, n_cells, description).", show_default=False)],
    perturbation_key: PerturbationKeyOpt = None,
    control: ControlOpt = None,
    layer: LayerOpt = None,
    n_clusters: Annotated[int, typer.Option("--n-clusters", help="Clusters to compute (fewer when there are fewer perturbations).")] = 8,
    n_genes: Annotated[int, typer.Option("--n-genes", help="Most variable genes of the perturbation profiles used for clustering.")] = 500,
    clusters_file: Annotated[
        Optional[Path],
        typer.Option(
            "--clusters",
            help="Read clusters from this CSV/TSV instead of computing them: a long table "
            "(perturbation/gene/target column + cluster column) or the Replogle 2022 "
            "'members' layout. Only perturbations present in the data are kept.",
            show_default=False,
        ),
    ] = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Cluster the perturbations of a screen, or read a cluster table, for held-out sets.

    Computed clusters: pseudobulk profiles (mean log1p(counts per 10,000) of each single
    perturbation minus the controls), the --n-genes most variable genes, standardised,
    Ward clustering on correlation distance. cluster0 is the largest cluster; equal sizes
    are ordered by their alphabetically first member. Combination labels (A+B) are not
    clustered. n_cells counts the cells labelled with the perturbation alone.

    Examples:

    \b
      scvae clusters --adata screen.h5ad --n-clusters 8 --out clusters.csv
      scvae clusters --adata screen.h5ad --clusters replogle_clusters.txt --out clusters.csv
    """
    setup_logging()
    with user_errors(ctx):
        check_inputs_early(h5ad=[adata], files=[("clusters file", clusters_file)])
        from scperturb_vae.pipelines.clusters import cluster_screen

        result = cluster_screen(
            adata, out, perturbation_key=perturbation_key, control_label=control, layer=layer,
            n_clusters=n_clusters, n_genes=n_genes, clusters_file=clusters_file, overwrite=overwrite,
        )
        table = result.table
        for line in _format_summary(result.summary):
            typer.echo(line)
        typer.echo(
            f"wrote {out}: {table['perturbation'].nunique()} perturbations in {len(result.summary)} clusters "
            f"({result.source}) in {result.seconds:.1f} s"
        )
