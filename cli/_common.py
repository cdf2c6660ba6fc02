"""What every command shares: option types, logging to stderr, one-line user errors."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated, Optional

import typer

# ---------------------------------------------------------------- shared options
AdataOpt = Annotated[
    Path,
    typer.Option(
        "--adata",
        help="Input .h5ad with raw counts (read only; never written).",
        show_default=False,
    ),
]
PerturbationKeyOpt = Annotated[
    Optional[str],
    typer.Option(
        "--perturbation-key",
        "-p",
        help="obs column with one perturbation label per cell [default: detected among "
        "perturbation, gene, target_gene, ...].",
        show_default=False,
    ),
]
ControlOpt = Annotated[
    Optional[str],
    typer.Option(
        "--control",
        "--control-label",
        "-c",
        help="Label of control cells [default: detected among non-targeting, control, ctrl, NT, ...].",
        show_default=False,
    ),
]
LayerOpt = Annotated[
    Optional[str],
    typer.Option("--layer", help="Layer holding the raw counts [default: X].", show_default=False),
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed; it fixes every number.")]
OverwriteOpt = Annotated[
    bool, typer.Option("--overwrite", help="Replace an existing output (only once the new one is complete).")
]


# ---------------------------------------------------------------- logging and errors
def setup_logging(verbose: bool = True) -> None:
    """Log lines to stderr (see :mod:`scperturb_vae.logs`)."""
    from scperturb_vae.logs import setup_logging as _setup

    _setup(verbose)


def _debug_enabled(ctx: typer.Context | None) -> bool:
    return bool(ctx is not None and (ctx.find_root().obj or {}).get("debug"))


@contextlib.contextmanager
def user_errors(ctx: typer.Context | None = None):
    """Turn a user's mistake into one line on stderr and the error's exit code.

    Errors of type :class:`scperturb_vae.errors.ScvaeError` print ``error: <message>``;
    Ctrl-C prints ``interrupted`` and exits 130.  With ``scvae --debug`` the traceback is
    shown instead.
    """
    from scperturb_vae.errors import ScvaeError

    try:
        yield
    except ScvaeError as err:
        if _debug_enabled(ctx):
            raise
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(err.exit_code) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130) from None


def check_inputs_early(*, h5ad=(), folders=(), files=()) -> None:
    """Missing inputs reported before torch and scvi-tools are imported (in well under a second).

    ``h5ad``: ``.h5ad`` files (existence and HDF5 signature); ``folders``: ``(label, path)``
    of folders that must exist (a run, a model); ``files``: ``(label, path)`` of other input
    files.  ``None`` paths (options left unset) are skipped.  The full checks still run later.
    """
    from scperturb_vae.data.reading import check_h5ad_file
    from scperturb_vae.errors import InputError

    for path in h5ad:
        if path is not None:
            check_h5ad_file(path)
    for label, path in folders:
        if path is not None and not Path(path).expanduser().is_dir():
            raise InputError(f"{label} {path} does not exist" if not Path(path).exists() else f"{label} {path} is not a folder")
    for label, path in files:
        if path is not None and not Path(path).expanduser().exists():
            raise InputError(f"{label} {path} does not exist")


ThreadsOpt = Annotated[
    Optional[int],
    typer.Option("--threads", help="CPU threads of torch [default: $SCVAE_THREADS, else the cores this process "
                 "may use less the other processes' load, at least 1].", show_default=False),
]


# ---------------------------------------------------------------- Lightning: devices and processes
AcceleratorOpt = Annotated[str, typer.Option("--accelerator", help="Lightning accelerator: auto, cpu, gpu, mps.")]
DevicesOpt = Annotated[
    str,
    typer.Option("--devices", help="Lightning devices: auto, or a number (with --strategy ddp: processes on CPU, GPUs otherwise)."),
]
StrategyOpt = Annotated[
    Optional[str],
    typer.Option("--strategy", help="Lightning strategy, e.g. ddp to train on --devices N processes [default: Lightning's choice].", show_default=False),
]
NumNodesOpt = Annotated[
    int,
    typer.Option("--num-nodes", help="Machines of a multi-node run (Lightning's num_nodes, started by SLURM or torchrun; with --strategy ddp)."),
]


def use_threads(threads: int | None) -> None:
    """Set torch's thread count (:mod:`scperturb_vae.threads`); run.json records it."""
    from scperturb_vae.threads import set_torch_threads

    set_torch_threads(threads)


def quiet_third_party_warnings() -> None:
    """Hide Lightning / scvi-tools noise (see :mod:`scperturb_vae.logs`)."""
    from scperturb_vae.logs import quiet_third_party

    quiet_third_party()


# ---------------------------------------------------------------- held-out split options
HoldoutOpt = Annotated[
    Optional[str],
    typer.Option(
        "--holdout",
        help="Hold out a cluster of perturbations by name (cluster0, cluster1, ...: from --clusters FILE, "
        "or computed from the data as scvae clusters does) [default: none held out].",
        show_default=False,
    ),
]
HoldoutPerturbationsOpt = Annotated[
    Optional[str],
    typer.Option("--holdout-perturbations", help="Hold out these perturbations (comma-separated) [default: none].", show_default=False),
]
ClustersOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--clusters",
        help="Perturbation -> cluster table (CSV/TSV long table, or the Replogle 2022 'members' layout) "
        "[default: clusters computed from the data].",
        show_default=False,
    ),
]
NClustersOpt = Annotated[
    int, typer.Option("--n-clusters", help="Number of computed clusters (without --clusters).")
]
AdaptFractionOpt = Annotated[
    float,
    typer.Option("--adapt-fraction", help="Fraction of each held-out perturbation's cells used for adaptation; the rest evaluate."),
]


def split_list(value: str | None) -> list[str] | None:
    """``"a, b,c"`` -> ``["a", "b", "c"]``; ``None`` stays ``None``."""
    if value is None:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]
