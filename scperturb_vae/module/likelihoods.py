"""Names of the count likelihoods, normalisations and decoders the module offers (no torch
here, so settings can be checked before the heavy imports)."""

#: count likelihoods of the decoder
LIKELIHOODS = ("nb", "zinb", "poisson")
#: normalisation of the encoder / decoder layers
NORMS = ("layer", "batch", "none")
#: decoders: scVI's MLP, or the injective ``g2(B g1(z))`` (:mod:`scperturb_vae.module.injective`)
DECODERS = ("standard", "injective")
