"""``scvae prepare``: turn a published screen's .h5ad into the file scvae train expects."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ._common import AdataOpt, ControlOpt, LayerOpt, OverwriteOpt, setup_logging, user_errors


def prepare(
    ctx: typer.Context,
    adata: AdataOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="Prepared .h5ad to write.", show_default=False)],
    layout: Annotated[
        str,
        typer.Option(
            "--layout",
            help="Source layout: auto (detected from the obs columns), replogle (Replogle 2022 "
            "figshare files), scperturb (scPerturb harmonised files) or generic.",
        ),
    ] = "auto",
    perturbation_key: Annotated[
        Optional[str],
        typer.Option(
            "--perturbation-key",
            "-p",
            help="obs column with the perturbation labels in the input [default: gene (replogle), "
            "perturbation (scperturb), detected among perturbation, gene, target_gene, ... (generic)].",
            show_default=False,
        ),
    ] = None,
    control: ControlOpt = None,
    gene_names: Annotated[
        Optional[str],
        typer.Option(
            "--gene-names",
            help="var column of gene symbols to use as gene names [default: gene_name (replogle); "
            "otherwise a symbol column when the gene names are Ensembl IDs].",
            show_default=False,
        ),
    ] = None,
    layer: LayerOpt = None,
    keep_unassigned: Annotated[
        bool,
        typer.Option(
            "--keep-unassigned",
            help="Keep cells without a perturbation label, labelled 'unassigned' (default: drop them).",
        ),
    ] = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """Prepare a published screen (Replogle 2022, scPerturb, ...) for scvae train.

    Writes OUT with one obs column 'perturbation' (control cells labelled 'control',
    combinations 'A+B'), raw counts as a CSR matrix of integers in X, unique gene symbols
    as gene names (original names in var['gene_id']), obs['batch'] from the GEM group, and
    a record of every mapping and drop in uns['scvae_prepare']. Cells without a label and
    cells or genes without counts are dropped. The input is only read; nothing is
    downloaded. Prints a summary and the scvae train line to run next. See data/README.md.

    Examples:

    \b
      scvae prepare --adata K562_essential_raw_singlecell_01.h5ad --out k562_essential.h5ad
      scvae prepare --adata NormanWeissman2019_filtered.h5ad --layout scperturb --out norman.h5ad
    """
    setup_logging()
    with user_errors(ctx):
        import time

        from scperturb_vae.io import check_output
        from scperturb_vae.pipelines.prepare import prepare_screen

        check_output(out, overwrite)
        start = time.perf_counter()
        result = prepare_screen(
            adata, out, layout=layout, perturbation_key=perturbation_key, control_label=control,
            gene_names=gene_names, layer=layer, keep_unassigned=keep_unassigned, overwrite=overwrite,
        )
        typer.echo(result.summary())
        typer.echo(f"wrote {result.out} in {time.perf_counter() - start:.1f} s; train it with:")
        typer.echo(f"  {result.train_command}")
