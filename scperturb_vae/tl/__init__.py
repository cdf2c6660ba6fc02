"""Tools in scanpy's style: train, embed, interpret and evaluate on an AnnData in a notebook.

Every function takes the AnnData first and its options as keywords, writes its results
into the AnnData (``obsm``, ``varm``, ``uns``) under a key (``key_added``), and works on
a copy with ``copy=True``::

    import scanpy as sc
    import scperturb_vae as sv

    model = sv.tl.fit(adata, model="svae+", perturbation_key="gene", n_latent=10)
    sc.pp.neighbors(adata, use_rep="X_svae")
    sc.tl.umap(adata)
    sv.pl.latents(adata, basis="umap")
    sv.tl.gene_effects(adata, model)
    table = sv.tl.enrich(adata, "h.all.v7.0.symbols.gmt")

The key of a fitted model defaults to its name: ``svae+`` -> ``"svae"``, ``svae`` ->
``"svae_l1"``, ``ivae`` -> ``"ivae"``, ``vae`` -> ``"vae"`` (:data:`DEFAULT_KEYS`).  Under
key ``K`` (written by :func:`fit` or :func:`embed`):

``adata.obsm["X_K"]``
    The posterior means, cells x latents (float32).
``adata.uns["K"]``
    ``model`` (``"svae+"``...), ``model_class``, ``obsm_key``, ``latent_names``,
    ``perturbation_key``, ``control_label``, ``layer`` and ``batch_key`` (when set),
    ``intervention_graph`` (DataFrame, perturbations x latents, values in [0, 1]),
    ``params`` (the settings and the model's hyperparameters), ``training`` (epochs,
    seconds, the last epoch's metrics; :func:`fit` only), ``versions``, ``source``
    (``"tl.fit"``, ``"tl.embed"``) and ``run_dir`` (:func:`embed` of a run folder); later
    ``gene_effects`` (:func:`gene_effects`), ``enrichment`` (:func:`enrich`) and
    ``recovery`` (:func:`recovery`).
``adata.varm["K_gene_effects"]``
    Genes x latents (DataFrame): :func:`scperturb_vae.model.interpretability.gene_effects`.
``adata.varm["K_predicted_ate"]``
    Genes x predicted targets (DataFrame): :func:`predict`'s average treatment effects.

Everything written into ``uns`` is made of DataFrames, arrays, strings, numbers and
nested dicts of them (``None`` values are left out), so ``adata.write_h5ad`` keeps it.

The modules: :mod:`.fit` (the one training path, :func:`fit`, :func:`embed`),
:mod:`.interpret` (:func:`gene_effects`, :func:`enrich`, :func:`recovery`), :mod:`.evaluate`
(:func:`heldout_nll`), :mod:`.prediction` (:func:`predict`, and the held-out predictions
scored against baselines by ``scvae evaluate --predict``), and the computations they share with the commands: :mod:`.heldout`
(splits, prior-only adaptation, importance-sampled likelihood), :mod:`.clusters`,
:mod:`.enrichment`, :mod:`.metrics`, :mod:`.targets`; :mod:`.checks` and :mod:`.store`
validate arguments and write the AnnData.  torch and scvi-tools are imported inside the
functions, so ``import scperturb_vae.tl`` is quick.  What the functions wrote is read back
by :mod:`scperturb_vae.get`.
"""

from scperturb_vae.get.fitted import GENE_EFFECTS_SUFFIX, fitted_keys
from scperturb_vae.model.registry import DEFAULT_KEYS
from scperturb_vae.tl.evaluate import HeldoutResult, heldout_nll
from scperturb_vae.tl.fit import embed, fit
from scperturb_vae.tl.interpret import enrich, gene_effects, graph_vs_data, recovery
from scperturb_vae.tl.prediction import predict
from scperturb_vae.tl.store import default_key

__all__ = [
    "DEFAULT_KEYS",
    "GENE_EFFECTS_SUFFIX",
    "HeldoutResult",
    "default_key",
    "embed",
    "enrich",
    "fit",
    "fitted_keys",
    "gene_effects",
    "graph_vs_data",
    "heldout_nll",
    "predict",
    "recovery",
]
