"""``scvae bench``: speed and memory of the models against scvi-tools' SCVI."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ._common import OverwriteOpt, SeedOpt, setup_logging, user_errors


def bench(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to create (bench.csv, bench.json, bench.md).", show_default=False)],
    n_cells: Annotated[int, typer.Option("--n-cells", help="Cells of the generated screen.")] = 20_000,
    n_genes: Annotated[int, typer.Option("--n-genes", help="Genes of the generated screen.")] = 2_000,
    density: Annotated[float, typer.Option("--density", help="Fraction of non-zero counts.")] = 0.1,
    n_perturbations: Annotated[int, typer.Option("--n-perturbations", help="Perturbations (besides the controls, 10% of the cells).")] = 200,
    n_latent: Annotated[int, typer.Option("--n-latent", help="Latents of every model (SCVI included).")] = 10,
    n_hidden: Annotated[int, typer.Option("--n-hidden", help="Hidden units of every model.")] = 128,
    n_layers: Annotated[int, typer.Option("--n-layers", help="Hidden layers of every model.")] = 1,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Minibatch size of every model.")] = 128,
    epochs: Annotated[int, typer.Option("--epochs", help="Timed epochs (after the warm-up epochs).")] = 2,
    warmup_epochs: Annotated[int, typer.Option("--warmup-epochs", help="First epochs reported apart, not in s/epoch.")] = 1,
    models: Annotated[str, typer.Option("--models", "-m", help="Comma-separated models among svae+, svae, ivae, vae (SCVI is always run).")] = "svae+,ivae,svae,vae",
    is_cells: Annotated[int, typer.Option("--is-cells", help="Validation cells of the importance-sampled likelihood (0 skips it).")] = 500,
    is_samples: Annotated[int, typer.Option("--is-samples", help="Importance samples per cell.")] = 100,
    is_samples_per_pass: Annotated[int, typer.Option("--is-samples-per-pass", help="Importance samples per forward pass (both models).")] = 100,
    seed: SeedOpt = 0,
    threads: Annotated[
        Optional[int], typer.Option("--threads", help="Torch / BLAS threads of each child [default: what scvae train uses: the free cores, SCVAE_THREADS when set].", show_default=False)
    ] = None,
    repeats: Annotated[int, typer.Option("--repeats", help="Rounds of all models (alternately SCVI first and last); medians.")] = 1,
    speed: Annotated[bool, typer.Option("--speed/--no-speed", help="Time the models against SCVI.")] = True,
    sparse_check: Annotated[bool, typer.Option("--sparse-check", help="Also train sVAE+ on --sparse-cells cells and compare its peak memory with CSR + model bytes.")] = False,
    sparse_cells: Annotated[int, typer.Option("--sparse-cells", help="Cells of the sparse check's screen (genes and density as above).")] = 50_000,
    sparse_max_steps: Annotated[
        Optional[int], typer.Option("--sparse-max-steps", help="Training minibatches of the sparse check [default: one whole epoch].", show_default=False)
    ] = None,
    backed_check: Annotated[bool, typer.Option("--backed-check", help="Also train sVAE+ out of core (backed file) on --backed-cells cells, then in memory: peak resident memory (target < 3 GB) and each pass's cells/s (training steps: target at most 1.2x the in-memory time).")] = False,
    backed_cells: Annotated[int, typer.Option("--backed-cells", help="Cells of the out-of-core check's screen (genes and density as above).")] = 1_000_000,
    backed_max_steps: Annotated[
        Optional[int], typer.Option("--backed-max-steps", help="Training minibatches of the out-of-core check [default: one whole epoch].", show_default=False)
    ] = None,
    decoder: Annotated[str, typer.Option("--decoder", help="Comma-separated decoders to time every model with: standard, injective (second derivatives: its cost per epoch).")] = "standard",
    thread_check: Annotated[bool, typer.Option("--thread-check", help="Also time sVAE+ with the default thread setting and with each explicit count (1 .. the allowed cores).")] = False,
    trace_memory: Annotated[bool, typer.Option("--trace-memory", help="tracemalloc the sparse check's stages (slower).")] = False,
    keep_data: Annotated[bool, typer.Option("--keep-data", help="Keep the generated screens in OUT/data/.")] = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """Speed and memory of sVAE+, iVAE, sVAE and VAE against scvi-tools' SCVI.

    Generates one screen (CSR counts written in chunks), then trains SCVI and
    each model on it, each in its own child process, with the same sizes, batch
    size, split and validation every epoch. Prints and writes each model's
    seconds per epoch (wall and CPU, after the warm-up epochs) and its ratio to
    SCVI, the importance-sampled likelihood's throughput (cells x samples per
    second) against SCVI's, and each child's peak memory (RSS) next to that of
    a child that only imports. With --sparse-check, trains sVAE+ once more on a
    larger screen and reports its peak memory per stage against the bytes of
    the CSR matrix and the model. With --backed-check, trains sVAE+ from a
    backed (on-disk) file of --backed-cells cells, then in memory, and reports
    its peak memory per stage (target under 3 GB at 1,000,000 cells) and each
    pass's cells/s backed and in memory (training steps, validation, batch-norm
    recalibration, latents). With --thread-check, times sVAE+ with the thread
    setting a user gets and with each explicit count. OUT appears only when
    complete.

    Examples:

    \b
      scvae bench --out bench
      scvae bench --out bench --repeats 3 --threads 2
      scvae bench --out threads --models svae+ --thread-check
      scvae bench --out injective --models svae+,vae --decoder standard,injective
      scvae bench --out sparse --no-speed --sparse-check --sparse-cells 200000
      scvae bench --out ooc --no-speed --backed-check --backed-cells 1000000 --backed-max-steps 2000
    """
    setup_logging()
    with user_errors(ctx):
        from scperturb_vae.bench.harness import run_bench
        from scperturb_vae.io import check_output

        check_output(out, overwrite)
        result = run_bench(
            out, n_cells=n_cells, n_genes=n_genes, density=density, n_perturbations=n_perturbations,
            n_latent=n_latent, n_hidden=n_hidden, n_layers=n_layers, batch_size=batch_size, epochs=epochs,
            warmup_epochs=warmup_epochs, models=models, is_cells=is_cells, is_samples=is_samples,
            is_samples_per_pass=is_samples_per_pass, seed=seed, threads=threads, repeats=repeats, speed=speed,
            sparse_check=sparse_check, sparse_cells=sparse_cells, sparse_max_steps=sparse_max_steps,
            backed_check=backed_check, backed_cells=backed_cells, backed_max_steps=backed_max_steps,
            thread_check=thread_check, decoders=[d.strip() for d in decoder.split(",") if d.strip()],
            trace_memory=trace_memory, keep_data=keep_data, overwrite=overwrite,
        )
        typer.echo(result.markdown, nl=False)
        files = (["bench.csv"] if len(result.table) else []) + ["bench.json", "bench.md"]
        typer.echo(f"wrote {result.out}/ ({', '.join(files)}{', data/' if keep_data else ''})")
