"""``make demo``: the main job end to end on a built-in default, with no download.

1. simulate the sVAE+ paper's screen (15 latents, 100 perturbations x 250 cells, 100 genes);
2. train sVAE+ on it with ``scvae train``'s code path (the run folder of a real run);
3. score the learned latents and graph against the simulation's truth and print it all.

Run ``python -m scperturb_vae.demo --help`` for the options (``--quick`` is a small version
for the test suite).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

QUICK_SIZES = dict(n_latent=4, n_perturbations=12, n_cells_per_perturbation=100, n_genes=40, n_heldout=2, max_targets=2)


def run_demo(out: Path, *, quick: bool = False, max_epochs: int | None = None, seed: int = 0) -> dict:
    """Simulate, train sVAE+, score; returns the figures it prints."""
    from .run import TrainSettings, train_run
    from .simulate import graph_from_adata, simulate_screen

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sizes = QUICK_SIZES if quick else {}
    sim_path = out / "sim.h5ad"
    adata = simulate_screen("paper", seed=seed, **sizes)
    from .io import atomic_path

    with atomic_path(sim_path, overwrite=True) as tmp:
        adata.write_h5ad(tmp)
    n_latent = int(adata.obsm["z_true"].shape[1])
    print(f"[1/3] simulated {sim_path}: {adata.n_obs} cells x {adata.n_vars} genes, "
          f"{n_latent} true latents, {int(adata.uns['simulation']['graph'].sum())} true edges", flush=True)

    epochs = max_epochs if max_epochs is not None else (30 if quick else 100)
    settings = TrainSettings(
        adata=str(sim_path), out=str(out / "runs" / "svae_plus"), model="svae+", n_latent=n_latent,
        max_epochs=epochs, seed=seed, overwrite=True, ll_cells=300 if quick else 1000,
    )
    print(f"[2/3] training sVAE+ for {epochs} epochs (progress on stderr) ...", flush=True)
    result = train_run(settings, progress_bar=not quick)
    s = result.summary

    truth = graph_from_adata(adata)
    scores = s["recovery"]
    g, v = s["graph"], s["validation_likelihood"]
    print("[3/3] results")
    print(f"  training: {s['timing']['train_seconds']:.1f} s, {s['timing']['seconds_per_epoch']:.2f} s/epoch")
    print(f"  graph: {g['edges_above_0.5']} of {g['n_perturbations'] * g['n_latent']} probabilities > 0.5 "
          f"(true edges: {int(truth.to_numpy().sum())}); {100 * g['fraction_below_0.05']:.1f}% below 0.05")
    print(f"  recovery: MCC (Pearson) {scores['mcc_pearson']:.3f}, MCC (Spearman) {scores['mcc_spearman']:.3f}, "
          f"graph precision {scores['graph_precision']:.3f} recall {scores['graph_recall']:.3f} F1 {scores['graph_f1']:.3f}")
    print(f"  validation NLL: {v['nll_mean']:.2f} +- {v['nll_stderr_mc']:.2f} nats per cell "
          f"({v['n_cells']} cells, {v['n_importance_samples']} importance samples)")
    print(f"outputs: {Path(settings.out).resolve()}/")
    for name in ("model/", "latent.h5ad", "intervention_graph.csv", "history.csv", "loss_curve.png", "run.json"):
        print(f"  {name}")
    return {"summary": s, "scores": scores}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scperturb_vae.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="demo_output", help="output folder (default: demo_output)")
    parser.add_argument("--quick", action="store_true", help="a small screen and few epochs (for tests)")
    parser.add_argument("--max-epochs", type=int, default=None, help="training epochs (default 100; quick: 30)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from .errors import ScvaeError
    from .logs import quiet_third_party, setup_logging

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
