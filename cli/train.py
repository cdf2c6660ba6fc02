"""``scvae train``: train sVAE+, sVAE, iVAE or VAE on a perturbation screen."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ._common import (
    AcceleratorOpt,
    AdaptFractionOpt,
    AdataOpt,
    ClustersOpt,
    ControlOpt,
    DevicesOpt,
    HoldoutOpt,
    HoldoutPerturbationsOpt,
    LayerOpt,
    NClustersOpt,
    NumNodesOpt,
    OverwriteOpt,
    PerturbationKeyOpt,
    SeedOpt,
    StrategyOpt,
    ThreadsOpt,
    check_inputs_early,
    quiet_third_party_warnings,
    setup_logging,
    split_list,
    use_threads,
    user_errors,
)

MODEL_HELP = "svae+ (sparse mechanism shift), svae (L1 ablation), ivae (conditional Gaussian prior), vae (N(0, I) baseline)."


def train(
    ctx: typer.Context,
    adata: AdataOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder to create (e.g. runs/NAME).", show_default=False)],
    model: Annotated[str, typer.Option("--model", "-m", help=MODEL_HELP)] = "svae+",
    perturbation_key: PerturbationKeyOpt = None,
    control: ControlOpt = None,
    layer: LayerOpt = None,
    batch_key: Annotated[Optional[str], typer.Option("--batch-key", help="obs column of technical batches or conditions, given to the model as a covariate and used to stratify the graph's check against the counts [default: none].", show_default=False)] = None,
    n_latent: Annotated[int, typer.Option("--n-latent", help="Number of latent variables; more than the programs you expect (the unused ones stay inactive).")] = 20,
    max_epochs: Annotated[
        Optional[int], typer.Option("--max-epochs", help="Training epochs [default: scvi-tools' heuristic from the number of cells].", show_default=False)
    ] = None,
    patience: Annotated[int, typer.Option("--patience", help="Early stopping: stop once the validation loss has not improved for this many epochs (watched after the KL warm-up and the latent alignment); 0 trains every epoch.")] = 20,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Minibatch size.")] = 128,
    lr: Annotated[float, typer.Option("--lr", help="Learning rate of the network (the prior's is 10x).")] = 1e-3,
    likelihood: Annotated[str, typer.Option("--likelihood", help="Count likelihood: nb, zinb or poisson.")] = "nb",
    beta_k: Annotated[Optional[float], typer.Option("--beta-k", help="svae+: K of the Beta(1, K) prior on mask probabilities [default: 100].", show_default=False)] = None,
    sparsity_penalty: Annotated[Optional[float], typer.Option("--sparsity-penalty", help="svae: L1 weight on mask probabilities [default: 100].", show_default=False)] = None,
    beta: Annotated[Optional[float], typer.Option("--beta", help="vae: KL weight (beta-VAE) [default: 1, a plain VAE].", show_default=False)] = None,
    tc_beta: Annotated[Optional[float], typer.Option("--tc-beta", help="vae: total-correlation weight (beta-TCVAE) [default: none, no TC term].", show_default=False)] = None,
    encode_perturbation: Annotated[bool, typer.Option("--encode-perturbation", help="Give the encoder the perturbation: q(z | x, a).")] = False,
    decoder: Annotated[str, typer.Option("--decoder", help="Decoder: standard (scVI's), or injective (Brenier maps g2(B g1(z)), against posterior collapse; every model).")] = "standard",
    min_cells: Annotated[int, typer.Option("--min-cells", help="Report perturbations with fewer cells.")] = 20,
    ll_cells: Annotated[int, typer.Option("--ll-cells", help="Validation cells for the importance-sampled likelihood in run.json (0 skips it).")] = 1000,
    holdout: HoldoutOpt = None,
    holdout_perturbations: HoldoutPerturbationsOpt = None,
    clusters: ClustersOpt = None,
    n_clusters: NClustersOpt = 8,
    adapt_fraction: AdaptFractionOpt = 0.5,
    seed: SeedOpt = 0,
    accelerator: AcceleratorOpt = "auto",
    devices: DevicesOpt = "auto",
    strategy: StrategyOpt = None,
    num_nodes: NumNodesOpt = 1,
    backed: Annotated[bool, typer.Option("--backed", help="Leave the counts on disk (read-only, backed): minibatches are read from the file, for screens larger than memory.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run of OUT from its last checkpoint (same command otherwise).")] = False,
    checkpoint_every: Annotated[int, typer.Option("--checkpoint-every", help="Save a checkpoint for --resume every this many epochs.")] = 1,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bar on stderr.")] = True,
    overwrite: OverwriteOpt = False,
    threads: ThreadsOpt = None,
) -> None:
    """Train a perturbation-prior model and write its run folder.

    Writes OUT/model/ (load with the model class's .load), OUT/latent.h5ad (posterior
    means, obs copied, the graph in uns), OUT/intervention_graph.csv, OUT/history.csv,
    OUT/loss_curve.png and OUT/run.json. OUT appears only when complete.

    With --holdout CLUSTER or --holdout-perturbations A,B the held-out perturbations' cells
    are left out of training, split into adaptation and evaluation cells, and the split is
    written to OUT/split.csv; scvae evaluate --run OUT reuses the model.

    A checkpoint is kept in .OUT.checkpoint/ while training: after Ctrl-C or a crash, the
    same command with --resume continues from the last saved epoch.

    Examples:

    \b
      scvae train --adata replogle.h5ad --perturbation-key gene --control non-targeting --out runs/svae
      scvae train --adata sim.h5ad --model ivae --n-latent 15 --max-epochs 100 --out runs/ivae
      scvae train --adata replogle.h5ad --holdout cluster3 --clusters clusters.csv --out runs/svae_c3
    """
    setup_logging()
    with user_errors(ctx):
        check_inputs_early(h5ad=[adata], files=[("clusters file", clusters)])
        from scperturb_vae.errors import InputError
        from scperturb_vae.pipelines.train import TrainSettings, train_run
        from scperturb_vae.tl.checks import check_settings

        model = model.lower()
        check_settings(flags=True, model=model)
        specific = {
            "beta_k": ("svae+", beta_k),
            "sparsity_penalty": ("svae", sparsity_penalty),
            "beta": ("vae", beta),
            "tc_beta": ("vae", tc_beta),
        }
        model_kwargs = {}
        for name, (owner, value) in specific.items():
            if value is None:
                continue
            if owner != model:
                raise InputError(f"--{name.replace('_', '-')} applies to --model {owner}, not {model}")
            model_kwargs[name] = value
        if encode_perturbation:
            model_kwargs["encode_perturbation"] = True
        if decoder != "standard":
            from scperturb_vae.module.likelihoods import DECODERS

            if decoder not in DECODERS:
                raise InputError(f"--decoder must be one of {', '.join(DECODERS)}, not {decoder!r}")
            model_kwargs["decoder"] = decoder
        settings = TrainSettings(
            adata=str(adata), out=str(out), model=model, perturbation_key=perturbation_key,
            control=control, layer=layer, batch_key=batch_key, n_latent=n_latent,
            max_epochs=max_epochs, patience=patience, batch_size=batch_size, lr=lr, likelihood=likelihood,
            seed=seed, min_cells=min_cells, accelerator=accelerator, devices=devices,
            overwrite=overwrite, ll_cells=ll_cells, model_kwargs=model_kwargs,
            holdout=holdout, holdout_perturbations=split_list(holdout_perturbations),
            clusters=None if clusters is None else str(clusters), n_clusters=n_clusters,
            adapt_fraction=adapt_fraction, resume=resume, checkpoint_every=checkpoint_every, strategy=strategy, num_nodes=num_nodes,
            backed=backed,
        )
        use_threads(threads)
        quiet_third_party_warnings()
        try:
            result = train_run(settings, progress_bar=progress)
        except KeyboardInterrupt:
            _interrupted(out)
        if result is None:  # a non-zero rank of a multi-process run: rank 0 writes and reports
            return
        _report(result)


def _report(result) -> None:
    """The summary lines of a finished run."""
    s = result.summary
    g = s["graph"]
    typer.echo(f"trained {s['model_class']} on {s['resolved']['n_cells']} cells x {s['resolved']['n_genes']} genes "
               f"({s['resolved']['n_perturbations']} perturbations, control '{s['resolved']['control_label']}') "
               f"in {s['timing']['train_seconds']:.1f} s ({s['timing']['seconds_per_epoch']:.2f} s/epoch, "
               f"{s['timing']['torch_threads']} torch threads)")
    typer.echo(f"graph: {g['edges_above_0.5']} of {g['n_perturbations'] * g['n_latent']} perturbation x latent "
               f"probabilities > 0.5; {100 * g['fraction_below_0.05']:.1f}% < 0.05")
    edges = g.get("edges") or []
    for line in edges[:5]:
        typer.echo(f"  {line}")
    if len(edges) > 5:
        typer.echo(f"  ... {len(edges) - 5} more in edges.csv")
    stopped = s["timing"].get("stopped_early_after_epoch")
    if stopped:
        typer.echo(f"stopped early after epoch {stopped}: the validation loss had not improved for "
                   f"{s['timing']['early_stopping_patience']} epochs")
    dg = s.get("diagnostics") or {}
    if dg:
        typer.echo(f"posterior: {dg['active_units']} of {g['n_latent']} latents active (Var E[z|x] > "
                   f"{dg['active_threshold']}); KL {dg['kl_total']:.2f} nats per cell; "
                   f"mutual information I(x; z) {dg['mutual_information']:.2f} nats")
    r = s["recovery"]
    if r is not None:
        from scperturb_vae.pipelines.score import format_recovery

        typer.echo("recovery of the simulated truth: " + format_recovery(r))
    v = s["validation_likelihood"]
    if v is not None:
        typer.echo(f"validation NLL: {v['nll_mean']:.2f} +- {v['nll_stderr_mc']:.2f} nats per cell "
                   f"({v['n_cells']} cells, {v['n_importance_samples']} importance samples)")
    h = s.get("holdout")
    if h is not None:
        n = h["n_cells"]
        typer.echo(f"held out {h['name']!r} ({len(h['perturbations'])} perturbations): {n['heldout_adapt']} adaptation "
                   f"and {n['heldout_eval']} evaluation cells, not trained on (split.csv)")
    typer.echo(f"wrote {result.out}/ (model/, latent.h5ad, intervention_graph.csv, history.csv, loss_curve.png, edges.csv, report.md, run.json"
               f"{', split.csv' if h is not None else ''})")


def _interrupted(out: Path) -> None:
    """Ctrl-C: one line saying what is kept, exit 130."""
    from scperturb_vae.pipelines.train import checkpoint_dir
    from scperturb_vae.train.checkpoint import read_checkpoint_progress

    progress = read_checkpoint_progress(checkpoint_dir(out))
    if progress and progress.get("epoch"):
        typer.echo(f"interrupted: {out} was not written; the checkpoint of epoch {progress['epoch']} of "
                   f"{progress['max_epochs']} is kept: run the same command with --resume to continue", err=True)
    else:
        typer.echo(f"interrupted: {out} was not written", err=True)
    raise typer.Exit(130)
