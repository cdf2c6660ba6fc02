"""``make demo``: the main jobs end to end on built-in simulations, with no download.

1. simulate the sVAE+ paper's screen (15 latents, 100 perturbations x 250 cells, 100 genes;
   the last 20 perturbations are marked held out);
2. ``scvae evaluate``'s code path: train sVAE+ and the VAE on the other 80 perturbations,
   print sVAE+'s recovery of the true latents and graph;
3. adapt the held-out perturbations' prior parameters (networks frozen) and print the
   held-out likelihood table, the few-shot curve and the predicted effects beside the
   baselines (``scvae evaluate --predict``);
4. simulate the ``programs`` screen (each latent drives its own gene program), train sVAE+;
5. ``scvae interpret`` against the simulator's own gene programs: print the summary, how
   many active latents have their true program as top enriched set, and the graph against
   the data (DE genes per perturbation from the counts alone).

Run ``python -m scperturb_vae.pipelines.demo --help`` for the options (``--quick`` is a small version
for the test suite).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

QUICK_SIZES = dict(n_latent=4, n_perturbations=12, n_cells_per_perturbation=100, n_genes=40, n_heldout=2, max_targets=2)
QUICK_PROGRAM_SIZES = dict(n_latent=4, n_perturbations=12, n_cells_per_perturbation=60, n_genes=80,
                           genes_per_program=10, n_heldout=0, max_targets=2)


def _write(adata, path: Path) -> None:
    from scperturb_vae.io import atomic_path

    with atomic_path(path, overwrite=True) as tmp:
        adata.write_h5ad(tmp)


def run_demo(out: Path, *, quick: bool = False, max_epochs: int | None = None, seed: int = 0) -> dict:
    """Simulate, train, score, evaluate held-out perturbations, interpret; returns what it prints."""
    import json

    import pandas as pd

    from scperturb_vae.data.genesets import write_gmt
    from scperturb_vae.data.simulate import programs_to_gene_sets, simulate_screen
    from scperturb_vae.pipelines.evaluate import EvaluateSettings, evaluate, format_table
    from scperturb_vae.pipelines.interpret import interpret_run
    from scperturb_vae.pipelines.score import format_recovery
    from scperturb_vae.pipelines.train import TrainSettings, train_run
    from scperturb_vae.tl.targets import program_match

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    # 1. the paper's screen
    adata = simulate_screen("paper", seed=seed, **(QUICK_SIZES if quick else {}))
    sim_path = out / "sim.h5ad"
    _write(adata, sim_path)
    n_latent = int(adata.obsm["z_true"].shape[1])
    held = [str(p) for p in adata.uns["simulation"]["heldout_perturbations"]]
    print(f"[1/5] simulated {sim_path}: {adata.n_obs} cells x {adata.n_vars} genes, {n_latent} true latents, "
          f"{int(adata.uns['simulation']['graph'].sum())} true edges; {len(held)} perturbations held out", flush=True)

    # 2-3. train sVAE+ and VAE without the held-out perturbations, then adapt and score them
    epochs = max_epochs if max_epochs is not None else (30 if quick else 100)
    print(f"[2/5] training sVAE+ and VAE for {epochs} epochs on the other perturbations (progress on stderr) ...",
          flush=True)
    ev = evaluate(EvaluateSettings(
        out=str(out / "evaluation"), adata=str(sim_path), models=["svae+", "vae"], holdout_perturbations=held,
        n_latent=n_latent, max_epochs=epochs, seed=seed, overwrite=True,
        n_importance=50 if quick else 1000, adapt_steps=100 if quick else 500,
        fewshot=[0, 10, "all"] if quick else [0, 10, 50, "all"], predict=True,
    ), progress_bar=not quick)
    run_dir = out / "evaluation" / "runs" / "svae_plus"
    s = json.loads((run_dir / "run.json").read_text())
    g = s["graph"]
    print(f"  sVAE+: {s['timing']['train_seconds']:.1f} s ({s['timing']['seconds_per_epoch']:.2f} s/epoch); graph "
          f"{g['edges_above_0.5']} of {g['n_perturbations'] * g['n_latent']} probabilities > 0.5")
    print("  recovery of the true latents and graph: " + format_recovery(s["recovery"]))
    dg = s.get("diagnostics") or {}
    if dg:
        print(f"  posterior: {dg['active_units']} of {g['n_latent']} latents active, I(x; z) "
              f"{dg['mutual_information']:.2f} nats")
    print(f"[3/5] held-out perturbations ({len(held)}): importance-sampled NLL per cell (nats, +- MC stderr)")
    for line in format_table(ev["table"]).splitlines():
        print("  " + line)
    fs = ev["fewshot"].pivot(index="model", columns="adaptation_cells_per_perturbation", values="nll")
    print("  few-shot (adaptation cells per perturbation -> held-out NLL):")
    for line in fs.to_string(float_format=lambda v: f"{v:.2f}").splitlines():
        print("    " + line)
    metrics = pd.DataFrame(ev["summary"]["predict"]["metrics"])
    wide = metrics[metrics["group"] == "single"].pivot(index="method", columns="k", values="ate_pearson_top20")
    print("  predicted effects (ATE Pearson over each perturbation's top-20 DE genes, by adaptation cells k; "
          "baselines on the same cells; evaluation/predict/):")
    for line in wide.reindex(list(dict.fromkeys(metrics["method"]))).to_string(
            float_format=lambda v: f"{v:.3f}", na_rep="-").splitlines():
        print("    " + line)

    # 4. the programs screen
    sizes = QUICK_PROGRAM_SIZES if quick else {}
    prog = simulate_screen("programs", seed=seed, **sizes)
    prog_path, gmt_path = out / "programs.h5ad", out / "programs.gmt"
    _write(prog, prog_path)
    gmt_path.unlink(missing_ok=True)
    write_gmt(programs_to_gene_sets(prog), gmt_path)
    k = int(prog.obsm["z_true"].shape[1])
    prog_epochs = max_epochs if max_epochs is not None else (40 if quick else 150)
    print(f"[4/5] simulated {prog_path} ({prog.n_obs} cells x {prog.n_vars} genes, {k} gene programs); "
          f"training sVAE+ for {prog_epochs} epochs ...", flush=True)
    result = train_run(TrainSettings(adata=str(prog_path), out=str(out / "runs" / "programs_svae_plus"),
                                     model="svae+", n_latent=k, max_epochs=prog_epochs, seed=seed, overwrite=True,
                                     ll_cells=0), progress_bar=not quick)
    print("  recovery: " + format_recovery(result.summary["recovery"]))

    # 5. interpret against the programs
    interp = interpret_run(result.out, [gmt_path], out / "interpretation", overwrite=True, seed=seed)
    match = program_match(pd.read_csv(out / "interpretation" / "enrichment.csv"), prog,
                          result.model.get_latent_representation(), result.model.latent_names)
    print(f"[5/5] interpretation against the simulator's programs: the top enriched set is the true program for "
          f"{match['n_correct']} of {match['n_active']} active latents ({100 * match['fraction']:.0f}%)")
    for line in interp["summary_lines"]:
        print("  " + line)
    gv = interp["graph_vs_data"]
    print(f"  graph against the data (interpretation/graph_vs_data.csv): {gv['n_with_effect']} perturbations have "
          f"DE genes against control; graph and data agree on {gv['agree']}, {gv['effect without edge']} have an "
          f"effect but no edge, {gv['edge without effect']} an edge but no effect; {gv['n_pairs_sharing_a_latent']} "
          f"of {gv['n_correlated_pairs']} strongly correlated pairs share a latent")
    print(f"outputs ({time.perf_counter() - start:.0f} s): {out.resolve()}/")
    for name in ("sim.h5ad", "evaluation/ (nll.csv, nll.png, fewshot.png, predict/, runs/svae_plus, runs/vae)",
                 "programs.h5ad, programs.gmt, runs/programs_svae_plus/",
                 "interpretation/ (summary.md, enrichment.csv, gene_effects.csv, graph_vs_data.csv, plots)"):
        print(f"  {name}")
    return {"recovery": s["recovery"], "heldout": ev["table"], "fewshot": ev["fewshot"], "programs": match}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scperturb_vae.pipelines.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="demo_output", help="output folder (default: demo_output)")
    parser.add_argument("--quick", action="store_true", help="small screens and few epochs (for tests)")
    parser.add_argument("--max-epochs", type=int, default=None,
                        help="training epochs (default 100 for the paper screen and 150 for the programs screen; quick: 30/40)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from scperturb_vae.errors import ScvaeError
    from scperturb_vae.logs import quiet_third_party, setup_logging

    setup_logging()
    quiet_third_party()

    try:
        run_demo(Path(args.out), quick=args.quick, max_epochs=args.max_epochs, seed=args.seed)
    except ScvaeError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
