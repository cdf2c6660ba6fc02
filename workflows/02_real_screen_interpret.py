# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 2. A real screen: fit sVAE+ and name its latents
#
# An identifiable latent becomes useful once it has a name. Two views give it one:
#
# - **the perturbations that move it**, read from the learned intervention graph;
# - **the genes it moves**, its decoder effects (`sv.tl.gene_effects`: the change of each
#   gene's decoded log expression per standard deviation of the latent), tested for
#   enrichment of known gene sets (`sv.tl.enrich`: Hallmark, KEGG, GO...).
#
# The data: a CROP-seq screen of T-cell receptor signalling in Jurkat cells (Datlinger
# et al. 2021; the scPerturb-harmonised test subset: 7,500 cells, 2,000 genes, 20
# targeted genes and controls, shallow: ~59 UMIs per cell), read from
# `../shared/data/` beside the repository (or `$SCVAE_REAL_DATA`). Where that file is
# absent (or with `SCVAE_FORCE_SIMULATION=1`) the workflow falls back to the simulator's
# `programs` screen, in which every latent drives its own gene program, and tests the
# latents against those true programs, so the answer is known.
#
# `SCVAE_QUICK=1`: a subsample of the cells and a few epochs. Outputs go to
# `$SCVAE_WORKFLOW_OUT/02_real_screen_interpret/` (default `workflows/output/`).

# %%
import json
import os
import time
from pathlib import Path

import anndata as ad
import numpy as np
import torch

import scperturb_vae as sv
from scperturb_vae.data.genesets import write_gmt
from scperturb_vae.data.simulate import programs_to_gene_sets
from scperturb_vae.logs import quiet_third_party, setup_logging
from scperturb_vae.tl.targets import perturbation_targets, program_match, summary_lines

QUICK = os.environ.get("SCVAE_QUICK", "0").strip().lower() in ("1", "true", "yes")
FORCE_SIMULATION = os.environ.get("SCVAE_FORCE_SIMULATION", "0").strip().lower() in ("1", "true", "yes")


def _workflows_folder() -> Path:
    try:
        here = Path(__file__).resolve().parent
    except NameError:  # in a notebook the working folder is the notebook's
        here = Path.cwd()
    return here if here.name == "workflows" else here / "workflows"


SHARED = _workflows_folder().parent.parent / "shared" / "data"
DATA = Path(os.environ.get("SCVAE_REAL_DATA") or SHARED / "datlinger2021_scperturb_testdata.h5ad")
GENESETS = DATA.parent / "genesets"
OUT = Path(os.environ.get("SCVAE_WORKFLOW_OUT") or _workflows_folder() / "output") / "02_real_screen_interpret"
OUT.mkdir(parents=True, exist_ok=True)
setup_logging(verbose=False)
quiet_third_party()
if os.environ.get("SCVAE_TORCH_THREADS"):
    torch.set_num_threads(int(os.environ["SCVAE_TORCH_THREADS"]))
SEED = 0
start = time.perf_counter()
REAL = DATA.exists() and not FORCE_SIMULATION
print(f"mode: {'quick' if QUICK else 'full'}; data: {DATA if REAL else 'simulated programs screen'}; outputs in {OUT}")

# %% [markdown]
# ## The data
#
# Real screen: the perturbation labels are in `obs["gene"]`, the control cells are
# labelled `control`. The quick mode keeps all control cells and 100 cells of each
# targeted gene, and drops the genes left without counts. (The cells also carry
# `obs["tcr_stim"]`, stimulated or not: passing `batch_key="tcr_stim"` to `sv.tl.fit`
# would give the stimulation to the decoder instead of the latents.)
#
# Fallback: the `programs` simulation and its gene programs, written as a GMT file.

# %%
if REAL:
    adata = ad.read_h5ad(DATA)
    perturbation_key, control_label = "gene", "control"
    if QUICK:
        rng = np.random.default_rng(SEED)
        labels = adata.obs[perturbation_key].astype(str).to_numpy()
        keep = [np.flatnonzero(labels == lab) if lab == control_label else
                rng.choice(np.flatnonzero(labels == lab), size=min(100, int((labels == lab).sum())), replace=False)
                for lab in sorted(set(labels))]
        adata = adata[np.sort(np.concatenate(keep))].copy()
        adata = adata[:, np.asarray(adata.X.sum(axis=0)).ravel() > 0].copy()
    gene_set_files = [GENESETS / "h.all.v7.0.symbols.gmt", GENESETS / "enrichr.KEGG_2016.gmt"]
    if not QUICK:
        gene_set_files.append(GENESETS / "enrichr.GO_Biological_Process_2021.gmt")
    gene_set_files = [p for p in gene_set_files if p.exists()]
    n_latent = 10
else:
    sizes = (dict(n_latent=4, n_perturbations=12, n_cells_per_perturbation=150, n_genes=120, genes_per_program=15,
                  n_heldout=0, max_targets=2) if QUICK else dict(n_heldout=0))
    adata = sv.simulate_screen("programs", seed=SEED, **sizes)
    perturbation_key, control_label = "perturbation", "control"
    gene_set_files = [OUT / "programs.gmt"]
    write_gmt(programs_to_gene_sets(adata), gene_set_files[0])
    n_latent = adata.obsm["z_true"].shape[1]
print(adata)
print("gene sets:", ", ".join(p.name for p in gene_set_files) or "none found")

# %% [markdown]
# ## Fit sVAE+
#
# Ten latents for the real screen (the true number for the simulation). sVAE+'s
# sparsity prior keeps an edge of the graph when the cells of its perturbation gain more
# than about `beta_k` (100) nats from it: on this shallow screen (about 60 UMIs per cell)
# most knockouts move the cells little, so expect a sparse graph, and an uninformative
# one in the quick mode's few epochs (every probability still near its starting value or
# all pruned); `beta_k=10` keeps weaker edges. The gene effects below name the latents
# whatever the graph says.

# %%
epochs = (15 if REAL else 60) if QUICK else (100 if REAL else 150)
model = sv.tl.fit(adata, model="svae+", perturbation_key=perturbation_key, control_label=control_label,
                  n_latent=n_latent, max_epochs=epochs, seed=SEED)
graph = adata.uns["svae"]["intervention_graph"]
print(f"trained {epochs} epochs in {adata.uns['svae']['training']['seconds']:.0f} s; "
      f"{int((graph.to_numpy() > 0.5).sum())} of {graph.size} graph probabilities > 0.5")

# %% [markdown]
# The learned graph: which perturbations move which latent (rows and columns clustered).

# %%
fig = sv.pl.graph(adata, save=OUT / "graph.png")
fig

# %% [markdown]
# ## Gene effects and gene-set enrichment
#
# `sv.tl.gene_effects` writes the genes x latents effects to `varm["svae_gene_effects"]`;
# `sv.tl.enrich` tests, for each latent, the genes it raises (`up`), lowers (`down`) and
# moves either way (`any`): over-representation among its top 50 genes (`ora`) and a
# rank-sum test over all genes (`rank`), with the false discovery rate per latent,
# gene-set source and test. A set is tested on its members among the model's genes (the
# real screen holds 2,000 variable genes, so most sets are seen only in part).

# %%
effects = sv.tl.gene_effects(adata, model, n_cells=1000 if QUICK else 2000, seed=SEED)
enrichment = sv.tl.enrich(adata, gene_set_files, min_size=5 if REAL else 3)
effects.to_csv(OUT / "gene_effects.csv")
enrichment.to_csv(OUT / "enrichment.csv", index=False)
print({source: f"{enrichment.attrs['n_sets'][source]} sets on {enrichment.attrs['universe'][source]} genes"
       for source in enrichment.attrs["universe"]})

# %% [markdown]
# The top enriched set of each latent (smallest FDR over sources, directions and tests):

# %%
top = (enrichment[enrichment["fdr"].notna()].drop_duplicates("latent")
       [["latent", "gene_set", "source", "direction", "test", "fdr", "overlap", "set_size"]].reset_index(drop=True))
top.to_csv(OUT / "top_sets.csv", index=False)
for row in top.itertuples(index=False):
    print(f"{row.latent}: {row.gene_set} [{row.source}, {row.direction} {row.test}, FDR {row.fdr:.2g}]")

# %%
fig = sv.pl.enrichment(adata, save=OUT / "enrichment_dotplot.png")
fig

# %% [markdown]
# ## One line per latent
#
# The perturbations that move it (graph probability > 0.5), its strongest genes up and
# down, its top gene sets (`scvae interpret` writes the same lines for a run folder).

# %%
latent_sd = adata.uns["svae"]["gene_effects"]["latent_sd"]
lines = summary_lines(effects, enrichment, perturbation_targets(graph), latent_sd=latent_sd)
(OUT / "summary.txt").write_text("\n".join(lines) + "\n")
print("\n".join(lines))

# %% [markdown]
# ## Latent traversals
#
# The decoded expression of a latent's strongest genes as the latent moves by -2 ... +2
# standard deviations around real cells (solid: genes it raises; dashed: genes it
# lowers), for the latents with the most targeting perturbations.

# %%
fig = sv.pl.traversal(adata, model, n_cells=300 if QUICK else 500, seed=SEED, save=OUT / "traversal.png")
fig

# %% [markdown]
# On the simulation the answer is known: how many active latents have their own gene
# program as top enriched set?

# %%
match = None
if not REAL:
    match = program_match(enrichment, adata, adata.obsm["X_svae"], model.latent_names)
    print(f"top enriched set = the true program for {match['n_correct']} of {match['n_active']} active latents")

# %%
adata.write_h5ad(OUT / "fitted.h5ad")
info = {"data": str(DATA) if REAL else "simulation:programs", "quick": QUICK, "epochs": epochs,
        "n_cells": int(adata.n_obs), "n_genes": int(adata.n_vars), "gene_sets": [str(p) for p in gene_set_files],
        "top_sets": top.to_dict(orient="records"), "program_match": match,
        "seconds": round(time.perf_counter() - start, 1)}
(OUT / "run_info.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
print(f"done in {info['seconds']:.0f} s; outputs:")
for path in sorted(OUT.iterdir()):
    print(f"  {path.name}")
