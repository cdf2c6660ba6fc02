"""``scvae predict``: counterfactual expression of trained perturbations and their combinations."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ._common import OverwriteOpt, SeedOpt, check_inputs_early, setup_logging, user_errors


def predict(
    ctx: typer.Context,
    run: Annotated[Path, typer.Option("--run", "-r", help="Run folder made by scvae train.", show_default=False)],
    perturbations: Annotated[
        str, typer.Option("--perturbations", "-p", help="Targets to predict, comma-separated: trained perturbations "
                          "and combinations of them (A,B,A+B).", show_default=False)
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to create (pred.h5ad, means.csv, ate.csv).",
                                      show_default=False)],
    n_cells: Annotated[int, typer.Option("--n-cells", help="Control cells moved to each target (a seeded sample).")] = 1000,
    adata: Annotated[
        Optional[Path], typer.Option("--adata", help="The run's input, if it moved [default: the path in run.json].",
                                     show_default=False)
    ] = None,
    seed: SeedOpt = 0,
    old_run: Annotated[Optional[Path], typer.Option("--model", hidden=True, help="Old spelling of --run.")] = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Predict the expression a perturbation produces: counterfactual control cells.

    Control cells are moved in latent space by the prior's own transport to p(z | a)
    (sVAE+: the expected shift of the masks, a combination A+B adding its parts'; iVAE: its
    Gaussian; VAE: none, it predicts the control), decoded, and counts are sampled at each
    control cell's library size. Writes OUT/pred.h5ad in cell-eval's layout (obs["target"],
    log1p-normalised X, the control label present), OUT/means.csv (normalised means per
    1e4 counts) and OUT/ate.csv (the effect against control). OUT appears only when complete.

    Examples:

    \b
      scvae predict --run runs/svae --perturbations MED12,CCNC,MED12+CCNC --out pred_med
      scvae predict --run runs/svae --perturbations LCK --n-cells 500 --out pred_lck
    """
    setup_logging()
    with user_errors(ctx):
        run = run if old_run is None else old_run
        check_inputs_early(h5ad=[adata], folders=[("run folder", run)])
        from scperturb_vae.pipelines.predict import predict_run
        from scperturb_vae.tl.checks import check_settings

        check_settings(flags=True, n_cells=n_cells, seed=seed)
        result = predict_run(run, perturbations, out, n_cells=n_cells, seed=seed, overwrite=overwrite, adata=adata)
        typer.echo(f"predicted {len(result.targets)} target(s) ({', '.join(result.targets)}) from "
                   f"{result.n_cells} control cells")
        typer.echo(f"wrote {result.out}/ (pred.h5ad, means.csv, ate.csv, predict.json)")
