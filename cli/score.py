"""``scvae score``: score a run folder against the ground truth of a simulated screen."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ._common import OverwriteOpt, check_inputs_early, setup_logging, user_errors


def score(
    ctx: typer.Context,
    run: Annotated[Path, typer.Option("--run", "-r", help="Run folder written by scvae train.", show_default=False)],
    truth: Annotated[
        Path, typer.Option("--truth", "-t", help="The simulated .h5ad the run was trained on (written by scvae simulate).", show_default=False)
    ],
    out: Annotated[
        Optional[Path], typer.Option("--out", "-o", help="Score file to write [default: RUN/score.json].", show_default=False)
    ] = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Score a trained run against a simulation's true latents and graph.

    Prints MCC (Pearson, Spearman), the linear R^2, MIG, the graph's precision, recall
    and F1 at 0.5, its AUROC and average precision, and the active units; writes them
    all (and run.json's posterior-collapse diagnostics, when present) to score.json.
    Cells are matched by name, learned latents to true ones by the MCC matching.

    Examples:

    \b
      scvae score --run runs/svae --truth sim.h5ad
      scvae score --run runs/svae --truth sim.h5ad --out scores/svae.json
    """
    setup_logging()
    with user_errors(ctx):
        check_inputs_early(h5ad=[truth], folders=[("run folder", run)])
        from scperturb_vae.io import check_output
        from scperturb_vae.pipelines.score import format_score, score_run, write_score

        target = out if out is not None else run / "score.json"
        check_output(target, overwrite)
        result = score_run(run, truth)
        write_score(result, target, overwrite=overwrite)
        for line in format_score(result):
            typer.echo(line)
        typer.echo(f"wrote {target}")
