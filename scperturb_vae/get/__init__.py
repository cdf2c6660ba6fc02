"""Public accessors of what :mod:`scperturb_vae.tl` wrote into an AnnData (see :mod:`.fitted`)."""

from scperturb_vae.get.fitted import (
    GENE_EFFECTS_SUFFIX,
    effects_key,
    fitted_keys,
    gene_effects,
    graph,
    latent,
    latent_names,
    resolve_key,
)

__all__ = ["GENE_EFFECTS_SUFFIX", "effects_key", "fitted_keys", "gene_effects", "graph", "latent", "latent_names",
           "resolve_key"]
