"""The sweep behind sVAE+'s default settings (issue: identifiability you can measure).

Simulates the sVAE+ paper's screen (15 latents, 100 perturbations x 250 cells, 100 genes),
trains one model per configuration and seed, and scores the learned latents and graph
against the truth (MCC, graph F1, ...).  One JSON line per (configuration, seed), appended as
each finishes, so an interrupted sweep resumes where it stopped.

    python workflows/recovery_sweep.py --out sweep.jsonl --configs default,k30,k300 --seeds 0,1

``--list`` prints the configurations.  Each line records the configuration's settings, the
seconds it took and every metric of :func:`scperturb_vae.tl.metrics.recovery_summary`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

#: name -> (model, n_latent, epochs, model kwargs, train kwargs)
CONFIGS: dict[str, tuple[str, int, int, dict, dict]] = {
    "default": ("svae+", 15, 100, {}, {}),
    # the paper's straight-through Gumbel-sigmoid masks (the default before the sweep)
    "gumbel": ("svae+", 15, 100, {"kl_estimator": "gumbel"}, {}),
    "k10": ("svae+", 15, 100, {"beta_k": 10.0}, {}),
    "k30": ("svae+", 15, 100, {"beta_k": 30.0}, {}),
    "k300": ("svae+", 15, 100, {"beta_k": 300.0}, {}),
    "k1000": ("svae+", 15, 100, {"beta_k": 1000.0}, {}),
    "temp0.5": ("svae+", 15, 100, {"kl_estimator": "gumbel", "temperature": 0.5}, {}),
    "temp2": ("svae+", 15, 100, {"kl_estimator": "gumbel", "temperature": 2.0}, {}),
    "mixture": ("svae+", 15, 100, {"kl_estimator": "mixture"}, {}),
    "init0": ("svae+", 15, 100, {"mask_init_logit": 0.0}, {}),
    "init5": ("svae+", 15, 100, {"mask_init_logit": 5.0}, {}),
    "warmup0": ("svae+", 15, 100, {}, {"n_epochs_kl_warmup": 1}),
    "warmup50": ("svae+", 15, 100, {}, {"n_epochs_kl_warmup": 50}),
    "lr3e-3": ("svae+", 15, 100, {}, {"lr": 3e-3}),
    "lrprior1e-3": ("svae+", 15, 100, {}, {"lr_prior": 1e-3}),
    "epochs200": ("svae+", 15, 200, {}, {}),
    "epochs300": ("svae+", 15, 300, {}, {}),
    "encode_pert": ("svae+", 15, 100, {"encode_perturbation": True}, {}),
    "latent20": ("svae+", 20, 100, {}, {}),
    "mixture_k30": ("svae+", 15, 100, {"kl_estimator": "mixture", "beta_k": 30.0}, {}),
    "mixture_k300": ("svae+", 15, 100, {"kl_estimator": "mixture", "beta_k": 300.0}, {}),
    "mixture_latent20": ("svae+", 20, 100, {"kl_estimator": "mixture"}, {}),
    "mixture_init0": ("svae+", 15, 100, {"kl_estimator": "mixture", "mask_init_logit": 0.0}, {}),
    "mixture_epochs50": ("svae+", 15, 50, {"kl_estimator": "mixture"}, {}),
    "mixture_encode_pert": ("svae+", 15, 100, {"kl_estimator": "mixture", "encode_perturbation": True}, {}),
    "ivae": ("ivae", 15, 100, {}, {}),
    "ivae_encode": ("ivae", 15, 100, {"encode_perturbation": True}, {}),
    "ivae_varonly": ("ivae", 15, 100, {"modulate_mean": False}, {}),
    "ivae_epochs200": ("ivae", 15, 200, {}, {}),
    "vae": ("vae", 15, 100, {}, {}),
    "svae": ("svae", 15, 100, {}, {}),
}


def run_one(name: str, seed: int, threads: int) -> dict:
    import numpy as np
    import scvi
    import torch

    from scperturb_vae.data.simulate import graph_from_adata, simulate_screen
    from scperturb_vae.model.models import MODELS
    from scperturb_vae.tl.metrics import recovery_summary

    torch.set_num_threads(threads)
    model_name, n_latent, epochs, model_kwargs, train_kwargs = CONFIGS[name]
    adata = simulate_screen("paper", seed=seed)
    scvi.settings.seed = seed
    cls = MODELS[model_name]
    cls.setup_anndata(adata, perturbation_key="perturbation", control_label="control")
    model = cls(adata, n_latent=n_latent, **model_kwargs)
    start = time.perf_counter()
    model.train(max_epochs=epochs, enable_progress_bar=False, **train_kwargs)
    seconds = time.perf_counter() - start
    latent = model.get_latent_representation()
    graph = model.get_intervention_graph(latent=latent)
    scores = recovery_summary(np.asarray(adata.obsm["z_true"]), latent, graph_from_adata(adata), graph)
    return {
        "config": name, "seed": seed, "model": model_name, "n_latent": n_latent, "epochs": epochs,
        "model_kwargs": json.dumps(model_kwargs), "train_kwargs": json.dumps(train_kwargs),
        "seconds": round(seconds, 1), **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in scores.items()},
    }


def markdown_table(path: Path) -> str:
    """One row per configuration: the settings, seeds, and mean (per-seed values) of the metrics."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    by_config: dict[str, list[dict]] = {}
    for r in rows:
        by_config.setdefault(r["config"], []).append(r)
    lines = [
        "| configuration | model | latents | epochs | settings | seeds | MCC (Pearson) | graph F1 | graph AUROC | s / run |",
        "|---|---|---:|---:|---|---|---|---|---|---:|",
    ]

    def cell(rs, key):
        vals = [r.get(key) for r in rs]
        if any(v is None for v in vals):
            vals = [v for v in vals if v is not None]
            if not vals:
                return "-"
        per = "/".join(f"{v:.3f}" for v in vals)
        return f"**{sum(vals) / len(vals):.3f}** ({per})" if len(vals) > 1 else f"{vals[0]:.3f}"

    for name, rs in by_config.items():
        rs = sorted(rs, key=lambda r: r["seed"])
        settings = {**json.loads(rs[0]["model_kwargs"]), **json.loads(rs[0]["train_kwargs"])}
        lines.append(
            f"| {name} | {rs[0]['model']} | {rs[0]['n_latent']} | {rs[0]['epochs']} | "
            f"{', '.join(f'{k}={v}' for k, v in settings.items()) or 'defaults'} | "
            f"{','.join(str(r['seed']) for r in rs)} | {cell(rs, 'mcc_pearson')} | {cell(rs, 'graph_f1')} | "
            f"{cell(rs, 'graph_auroc')} | {sum(r['seconds'] for r in rs) / len(rs):.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="recovery_sweep.jsonl")
    parser.add_argument("--configs", default="default")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--table", action="store_true", help="print --out's results as a markdown table")
    args = parser.parse_args(argv)
    if args.list:
        for name, cfg in CONFIGS.items():
            print(name, cfg)
        return
    if args.table:
        print(markdown_table(Path(args.out)))
        return
    from scperturb_vae.logs import quiet_third_party

    quiet_third_party()
    out = Path(args.out)
    done = set()
    if out.exists():
        rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
        done = {(r["config"], int(r["seed"])) for r in rows}
    for name in args.configs.split(","):
        if name not in CONFIGS:
            raise SystemExit(f"unknown configuration {name!r}; --list shows them")
    for seed in (int(s) for s in args.seeds.split(",")):
        for name in args.configs.split(","):
            if (name, seed) in done:
                continue
            row = run_one(name, seed, args.threads)
            print(json.dumps(row), flush=True)
            with out.open("a") as fh:
                fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
