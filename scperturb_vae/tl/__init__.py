"""Tools in scanpy's style: computations on an AnnData and a model (see :mod:`.api`)."""

from scperturb_vae.tl.api import (
    DEFAULT_KEYS,
    GENE_EFFECTS_SUFFIX,
    HeldoutResult,
    default_key,
    embed,
    enrich,
    fit,
    fitted_keys,
    gene_effects,
    heldout_nll,
    recovery,
)

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
    "heldout_nll",
    "recovery",
]
