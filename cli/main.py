"""``scvae``: identifiable latent models of single-cell perturbation screens.

Heavy libraries (torch, scvi-tools) are imported inside the commands, so ``scvae --help``
answers at once.
"""

from __future__ import annotations

from typing import Annotated

import typer

from . import bench as _bench
from . import benchmark as _benchmark
from . import clusters as _clusters
from . import evaluate as _evaluate
from . import interpret as _interpret
from . import predict as _predict
from . import prepare as _prepare
from . import score as _score
from . import simulate as _simulate
from . import train as _train

app = typer.Typer(
    name="scvae",
    help="Identifiable latent models (sVAE+, iVAE, sVAE, VAE) of single-cell perturbation screens.\n\n"
    "Exit codes: 0 success, 1 internal error (a bug), 2 bad usage or bad input, "
    "3 output exists or cannot be written, 130 interrupted.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # plain help: rich markup would swallow the hand-written "[default: ...]" notes
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"scvae {version('scperturb-vae')}")
        except PackageNotFoundError:  # pragma: no cover
            typer.echo("scvae (not installed)")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    ctx.obj = {"debug": debug}


app.command("simulate")(_simulate.simulate)
app.command("prepare")(_prepare.prepare)
app.command("train")(_train.train)
app.command("clusters")(_clusters.clusters)
app.command("interpret")(_interpret.interpret)
app.command("evaluate")(_evaluate.evaluate)
app.command("predict")(_predict.predict)
app.command("score")(_score.score)
app.command("benchmark")(_benchmark.benchmark)
app.command("bench")(_bench.bench)


def main() -> None:  # console-script entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
