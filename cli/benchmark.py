"""``scvae benchmark``: simulate, train every model over seeds, score and summarise."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ._common import OverwriteOpt, quiet_third_party_warnings, setup_logging, user_errors


def benchmark(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option("--out", "-o", help="Benchmark folder to create.", show_default=False)],
    preset: Annotated[str, typer.Option("--preset", help="Simulation preset: 'paper', 'programs' or 'realistic'.")] = "paper",
    models: Annotated[str, typer.Option("--models", "-m", help="Comma-separated models among svae+, svae, ivae, vae.")] = "svae+,svae,ivae,vae",
    seeds: Annotated[str, typer.Option("--seeds", help="Comma-separated seeds: one simulated screen and one training seed each.")] = "0,1,2",
    max_epochs: Annotated[
        Optional[int], typer.Option("--max-epochs", help="Training epochs [default: scvae train's; 5 with --quick].", show_default=False)
    ] = None,
    n_latent: Annotated[
        Optional[int], typer.Option("--n-latent", help="Latents of the models [default: the simulation's true number].", show_default=False)
    ] = None,
    data_seed: Annotated[
        Optional[int], typer.Option("--data-seed", help="Train every seed on the one screen simulated with this seed, and report how the edges agree across seeds (edge Jaccard) [default: one screen per seed].", show_default=False)
    ] = None,
    decoder: Annotated[str, typer.Option("--decoder", help="Comma-separated decoders to train every model with: standard, injective.")] = "standard",
    collapse: Annotated[bool, typer.Option("--collapse", help="The posterior-collapse comparison: every model with the standard and the injective decoder, twice the true latents (unless --n-latent), 2 hidden layers; KL per latent in OUT/kl_per_latent.csv.")] = False,
    quick: Annotated[bool, typer.Option("--quick", help="Small screens (4 latents, 12 perturbations x 60 cells, 40 genes) and 5 epochs.")] = False,
    ll_cells: Annotated[int, typer.Option("--ll-cells", help="Validation cells for each run's importance-sampled likelihood (0 skips it).")] = 1000,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Training progress bars on stderr.")] = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """Benchmark the models on simulated screens with a known truth.

    For each seed: simulate a screen (OUT/data/), train each model on it (OUT/runs/), and
    score the run against the truth (MCC, R^2, MIG, graph precision / recall / F1 / AUROC,
    active units, KL, mutual information, validation NLL). Writes OUT/results.csv (one row per model x seed),
    OUT/summary.csv and OUT/summary.md (mean ± sd per model), OUT/metrics.png and
    OUT/graph_seed<first seed>.png. OUT appears only when complete.

    Examples:

    \b
      scvae benchmark --out bench --seeds 0,1,2 --max-epochs 100
      scvae benchmark --out smoke --quick --models svae+,vae --seeds 0,1
      scvae benchmark --out real --preset realistic --models svae+ --seeds 0,1,2 --max-epochs 100 --ll-cells 0
      scvae benchmark --out stable --preset realistic --models svae+ --seeds 0,1,2 --data-seed 0 --max-epochs 100
      scvae benchmark --out collapse --collapse --models svae+,vae --seeds 0,1,2 --max-epochs 100
    """
    setup_logging()
    with user_errors(ctx):
        from scperturb_vae.io import check_output
        from scperturb_vae.model.registry import parse_models
        from scperturb_vae.pipelines.benchmark import parse_seeds, run_benchmark

        model_list, seed_list = parse_models(models), parse_seeds(seeds)
        decoders = ["standard", "injective"] if collapse else [d.strip() for d in decoder.split(",") if d.strip()]
        check_output(out, overwrite)
        quiet_third_party_warnings()
        result = run_benchmark(
            out, preset=preset, models=model_list, seeds=seed_list, max_epochs=max_epochs,
            n_latent=n_latent, quick=quick, overwrite=overwrite, ll_cells=ll_cells, progress_bar=progress,
            data_seed=data_seed, decoders=decoders, network={"n_layers": 2} if collapse else None,
            latent_factor=2 if collapse else 1,
        )
        typer.echo(result.table, nl=False)
        typer.echo(f"wrote {result.out}/ (data/, runs/, results.csv, summary.csv, summary.md, metrics.png, "
                   f"graph_seed{seed_list[0]}.png)")
