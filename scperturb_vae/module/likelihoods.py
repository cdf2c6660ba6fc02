"""Names of the count likelihoods and normalisations the module offers (no torch here, so
settings can be checked before the heavy imports)."""

#: count likelihoods of the decoder
LIKELIHOODS = ("nb", "zinb", "poisson")
#: normalisation of the encoder / decoder layers
NORMS = ("layer", "batch", "none")
