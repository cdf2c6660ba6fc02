"""``scvae simulate``: a synthetic perturbation screen with its ground truth."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ._common import OverwriteOpt, SeedOpt, setup_logging, user_errors


def parse_params(items: list[str]) -> dict:
    """``KEY=VALUE`` strings as a dict (VALUE read as an int, a float, true/false, or kept as text)."""
    from scperturb_vae.errors import InputError

    out: dict = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--param takes KEY=VALUE, not {item!r}")
        value: object = text
        if text.lower() in ("true", "false"):
            value = text.lower() == "true"
        else:
            for kind in (int, float):
                try:
                    value = kind(text)
                    break
                except ValueError:
                    continue
        out[key.strip().replace("-", "_")] = value
    return out


def simulate(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output .h5ad.", show_default=False)],
    preset: Annotated[
        str, typer.Option("--preset", help="'paper' (the sVAE+ paper's design), 'programs' (one gene program per latent) or 'realistic' (shallow negative binomial counts, weak effects, null perturbations, pathway groups).")
    ] = "paper",
    seed: SeedOpt = 0,
    n_latent: Annotated[Optional[int], typer.Option(help="Number of true latents [default: the preset's].", show_default=False)] = None,
    n_perturbations: Annotated[Optional[int], typer.Option(help="Number of perturbations [default: the preset's].", show_default=False)] = None,
    n_cells_per_perturbation: Annotated[Optional[int], typer.Option(help="Cells per perturbation [default: the preset's].", show_default=False)] = None,
    n_control_cells: Annotated[Optional[int], typer.Option(help="Control cells [default: the preset's].", show_default=False)] = None,
    n_genes: Annotated[Optional[int], typer.Option(help="Number of genes [default: the preset's].", show_default=False)] = None,
    min_targets: Annotated[Optional[int], typer.Option(help="Fewest latents a perturbation targets [default: the preset's].", show_default=False)] = None,
    max_targets: Annotated[Optional[int], typer.Option(help="Most latents a perturbation targets [default: the preset's].", show_default=False)] = None,
    shift_mean: Annotated[Optional[float], typer.Option(help="Mean absolute shift of a targeted latent [default: the preset's].", show_default=False)] = None,
    shift_sd: Annotated[Optional[float], typer.Option(help="Standard deviation of the shifts [default: the preset's].", show_default=False)] = None,
    library_size: Annotated[Optional[float], typer.Option(help="(Median) counts per cell [default: the preset's].", show_default=False)] = None,
    n_heldout: Annotated[Optional[int], typer.Option(help="Perturbations marked held-out (the last ones) [default: the preset's].", show_default=False)] = None,
    genes_per_program: Annotated[Optional[int], typer.Option(help="'programs' and 'realistic': genes driven by each latent [default: the preset's].", show_default=False)] = None,
    library_sigma: Annotated[Optional[float], typer.Option(help="Sd of the log library sizes [default: the preset's].", show_default=False)] = None,
    null_fraction: Annotated[Optional[float], typer.Option(help="'realistic': share of perturbations with no effect (0.4) [default: the preset's].", show_default=False)] = None,
    n_pathways: Annotated[Optional[int], typer.Option(help="'realistic': pathway groups whose members share target latents (10) [default: the preset's].", show_default=False)] = None,
    shift_min: Annotated[Optional[float], typer.Option(help="'realistic': weakest effect, in sd of the latent (0.5) [default: the preset's].", show_default=False)] = None,
    shift_max: Annotated[Optional[float], typer.Option(help="'realistic': strongest effect, in sd (3.0) [default: the preset's].", show_default=False)] = None,
    dispersion: Annotated[Optional[float], typer.Option(help="'realistic': median inverse dispersion theta of the negative binomial (3.0) [default: the preset's].", show_default=False)] = None,
    condition_effect: Annotated[Optional[float], typer.Option(help="'realistic': log-fold effect of a stimulation covariate, obs['condition'], unevenly spread over perturbations (0: none) [default: the preset's].", show_default=False)] = None,
    n_combinations: Annotated[Optional[int], typer.Option(help="'realistic': pairs A+B of perturbations (4) [default: the preset's].", show_default=False)] = None,
    param: Annotated[Optional[list[str]], typer.Option("--param", help="Any other parameter of the preset, as KEY=VALUE (repeatable), e.g. --param cells_sigma=0.3 [default: the preset's].", show_default=False)] = None,
    gmt: Annotated[Optional[Path], typer.Option("--gmt", help="'programs' preset: also write the true gene programs as a .gmt file [default: the preset's].", show_default=False)] = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Simulate a perturbation screen with known latents, graph and gene programs.

    The presets' defaults are documented in scperturb_vae.data.simulate; every size is a flag.
    Ground truth goes into the file: obsm['z_true'], uns['simulation'] (the graph, the
    shifts, the held-out perturbations) and, for 'programs', var['program'].

    Examples:

    \b
      scvae simulate --out sim.h5ad --preset paper --seed 0
      scvae simulate --out prog.h5ad --preset programs --gmt programs.gmt
      scvae simulate --out real.h5ad --preset realistic --library-size 500
    """
    setup_logging()
    with user_errors(ctx):
        from scperturb_vae.data.genesets import write_gmt
        from scperturb_vae.data.simulate import programs_to_gene_sets, simulate_screen
        from scperturb_vae.errors import InputError
        from scperturb_vae.io import atomic_path, check_output

        check_output(out, overwrite)
        if gmt is not None:
            if preset == "paper":
                raise InputError("--gmt needs --preset programs or realistic (the paper preset has no gene programs)")
            check_output(gmt, overwrite)
        sizes = {
            "n_latent": n_latent,
            "n_perturbations": n_perturbations,
            "n_cells_per_perturbation": n_cells_per_perturbation,
            "n_control_cells": n_control_cells,
            "n_genes": n_genes,
            "min_targets": min_targets,
            "max_targets": max_targets,
            "shift_mean": shift_mean,
            "shift_sd": shift_sd,
            "library_size": library_size,
            "n_heldout": n_heldout,
        }
        extra = {
            key: value for key, value in {
                "genes_per_program": genes_per_program, "library_sigma": library_sigma,
                "null_fraction": null_fraction, "n_pathways": n_pathways, "shift_min": shift_min,
                "shift_max": shift_max, "dispersion": dispersion, "condition_effect": condition_effect,
                "n_combinations": n_combinations,
            }.items() if value is not None
        }
        for key, value in parse_params(param or []).items():
            (sizes if key in sizes else extra)[key] = value
        adata = simulate_screen(preset, seed=seed, **sizes, **extra)
        with atomic_path(out, overwrite=overwrite) as tmp:
            adata.write_h5ad(tmp)
        if gmt is not None:
            write_gmt(programs_to_gene_sets(adata), gmt)
        sim = adata.uns["simulation"]
        n_edges = int(sim["graph"].sum())
        typer.echo(
            f"wrote {out}: {adata.n_obs} cells x {adata.n_vars} genes, "
            f"{len(sim['perturbations'])} perturbations + {int((adata.obs['perturbation'] == 'control').sum())} control cells, "
            f"{len(sim['latent_names'])} latents, {n_edges} true edges, preset {preset}, seed {seed}"
        )
        if gmt is not None:
            typer.echo(f"wrote {gmt}: the true gene programs")
