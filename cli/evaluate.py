"""``scvae evaluate``: held-out-perturbation likelihood, side by side across models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ._common import (
    AcceleratorOpt,
    AdaptFractionOpt,
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


def evaluate(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder to create.", show_default=False)],
    adata: Annotated[
        Optional[Path],
        typer.Option("--adata", help="Input .h5ad with raw counts (read only) [default with --model: the run's input].",
                     show_default=False),
    ] = None,
    holdout: HoldoutOpt = None,
    holdout_perturbations: HoldoutPerturbationsOpt = None,
    clusters: ClustersOpt = None,
    n_clusters: NClustersOpt = 8,
    models: Annotated[str, typer.Option("--models", help="Models to train and compare (comma-separated).")] = "svae+,ivae,vae",
    model_runs: Annotated[
        Optional[list[Path]],
        typer.Option("--run", "-r", help="Reuse a run folder made by scvae train --holdout ... instead of training "
                     "(repeatable; replaces --models) [default: none, train --models].", show_default=False),
    ] = None,
    old_model_runs: Annotated[
        Optional[list[Path]],
        typer.Option("--model", hidden=True, help="Old spelling of --run.", show_default=False),
    ] = None,
    perturbation_key: PerturbationKeyOpt = None,
    control: ControlOpt = None,
    layer: LayerOpt = None,
    n_latent: Annotated[int, typer.Option("--n-latent", help="Number of latent variables of the trained models.")] = 20,
    max_epochs: Annotated[
        Optional[int], typer.Option("--max-epochs", help="Training epochs [default: scvi-tools' heuristic].", show_default=False)
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Minibatch size of training.")] = 128,
    likelihood: Annotated[str, typer.Option("--likelihood", help="Count likelihood: nb, zinb or poisson.")] = "nb",
    adapt_fraction: AdaptFractionOpt = 0.5,
    n_importance: Annotated[int, typer.Option("--n-importance", help="Importance samples per cell.")] = 1000,
    fewshot: Annotated[
        str, typer.Option("--fewshot", help="Adaptation cells per held-out perturbation for the few-shot curve.")
    ] = "0,10,50,all",
    adapt_steps: Annotated[int, typer.Option("--adapt-steps", help="Adam steps of the prior adaptation.")] = 500,
    heldin_cells: Annotated[int, typer.Option("--heldin-cells", help="Held-in validation cells scored (at most).")] = 1000,
    min_cells: Annotated[int, typer.Option("--min-cells", help="Report perturbations with fewer cells.")] = 20,
    seed: SeedOpt = 0,
    accelerator: AcceleratorOpt = "auto",
    devices: DevicesOpt = "auto",
    strategy: StrategyOpt = None,
    num_nodes: NumNodesOpt = 1,
    backed: Annotated[bool, typer.Option("--backed", help="Leave the counts on disk (read-only, backed): train from minibatches read from the file.")] = False,
    predict: Annotated[bool, typer.Option("--predict", help="Also predict the held-out perturbations' expression after each few-shot adaptation and score it against baselines (OUT/predict/).")] = False,
    predict_cells: Annotated[int, typer.Option("--predict-cells", help="Control cells transported per prediction (and kept in predict/real.h5ad).")] = 500,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bars on stderr.")] = True,
    overwrite: OverwriteOpt = False,
    threads: ThreadsOpt = None,
) -> None:
    """Held-out-perturbation NLL: hold out perturbations, adapt only their prior parameters
    (networks frozen), and compare importance-sampled NLL on unseen cells across models.

    Writes OUT/nll.csv (model, setting, nll, stderr, n_cells; settings heldout_adapted,
    heldout_zeroshot, heldin), OUT/nll_per_perturbation.csv, OUT/nll.md, OUT/nll.png,
    OUT/fewshot.csv, OUT/fewshot.png, OUT/adapted_graph.csv, OUT/split.csv,
    OUT/evaluate.json and OUT/runs/ (the trained models).  With --predict also
    OUT/predict/: real.h5ad (evaluation cells only), pred_<method>_k<k>.h5ad for each model
    and baseline (control, kcell_mean, training_mean, linear; additive for held-out
    combinations A+B), metrics.csv (ATE Pearson over all and the top-20 DE genes, ATE MSE,
    cell-eval's metrics when installed; per group, single and combination),
    metrics_per_perturbation.csv, metrics.png.  --holdout-perturbations A+B holds out a
    combination whose singles stay in training.

    Examples:

    \b
      scvae clusters --adata screen.h5ad --out clusters.csv
      scvae evaluate --adata screen.h5ad --holdout cluster3 --models svae+,ivae,vae --out eval_c3
      scvae evaluate --run runs/svae_c3 --run runs/vae_c3 --out eval_c3
      scvae evaluate --run runs/svae_c3 --predict --fewshot 0,10,50,all --out eval_c3_pred
      scvae evaluate --adata screen.h5ad --holdout-perturbations A+B,C+D --models svae+,vae --predict --out eval_ab
    """
    setup_logging()
    with user_errors(ctx):
        model_runs = [*(model_runs or []), *(old_model_runs or [])]
        check_inputs_early(h5ad=[adata], folders=[("run folder", m) for m in model_runs],
                           files=[("clusters file", clusters)])
        import pandas as pd

        from scperturb_vae.pipelines.evaluate import EvaluateSettings, format_table
        from scperturb_vae.pipelines.evaluate import evaluate as run_evaluate

        use_threads(threads)
        settings = EvaluateSettings(
            out=str(out), adata=None if adata is None else str(adata),
            models=[m.lower() for m in split_list(models) or []],
            runs=[str(r) for r in model_runs or []],
            holdout=holdout, holdout_perturbations=split_list(holdout_perturbations),
            clusters=None if clusters is None else str(clusters), n_clusters=n_clusters,
            perturbation_key=perturbation_key, control=control, layer=layer, n_latent=n_latent,
            max_epochs=max_epochs, batch_size=batch_size, likelihood=likelihood, seed=seed,
            min_cells=min_cells, adapt_fraction=adapt_fraction, n_importance=n_importance,
            fewshot=fewshot, adapt_steps=adapt_steps, heldin_cells=heldin_cells,
            accelerator=accelerator, devices=devices, strategy=strategy, num_nodes=num_nodes, overwrite=overwrite,
            backed=backed,
            predict=predict, predict_cells=predict_cells,
        )
        quiet_third_party_warnings()
        result = run_evaluate(settings, progress_bar=progress)
        if result is None:  # a non-zero rank of a multi-process run: rank 0 writes and reports
            return
        h = result["summary"]["holdout"]
        typer.echo(f"held out {h['name']!r}: {len(h['perturbations'])} perturbations "
                   f"({', '.join(h['perturbations'][:6])}{', ...' if len(h['perturbations']) > 6 else ''}); "
                   f"{h['n_cells']['heldout_adapt']} adaptation, {h['n_cells']['heldout_eval']} evaluation cells")
        typer.echo(f"NLL per cell (nats, lower is better; +- Monte Carlo stderr, {settings.n_importance} importance samples):")
        typer.echo(format_table(result["table"]))
        fs = result["fewshot"]
        if len(fs):
            wide = fs.pivot(index="model", columns="adaptation_cells_per_perturbation", values="nll")
            typer.echo("few-shot held-out NLL by adaptation cells per perturbation:")
            typer.echo(wide.reindex(fs["model"].drop_duplicates()).to_string(float_format=lambda v: f"{v:.3f}"))
        if predict:
            table = pd.DataFrame(result["summary"]["predict"]["metrics"])
            cols = ["method", "k", "ate_pearson", "ate_pearson_top20", "ate_mse"]
            cols += [c for c in ("discrimination_score_l1", "overlap_at_N") if c in table.columns]
            for group, rows in table[table["group"] != "all"].groupby("group", sort=False):
                typer.echo(f"predicted effects of the held-out {group} perturbations ({int(rows['n_perturbations'].iloc[0])};"
                           " mean over perturbations; Pearson: higher is better, NaN: no predicted effect):")
                typer.echo(rows[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep="NaN"))
        typer.echo(f"wrote {result['out']}/ (nll.csv, nll_per_perturbation.csv, nll.md, nll.png, fewshot.csv, "
                   f"fewshot.png, evaluate.json{', predict/' if predict else ''})")
