"""Tensors and math only: the priors ``p(z | a)`` and the shared VAE module.

- :mod:`.priors`: :class:`~.priors.StandardNormalPrior`, :class:`~.priors.SparseShiftPrior`
  (sVAE+ / sVAE) and :class:`~.priors.ConditionalGaussianPrior` (iVAE);
- :mod:`.vae`: :class:`~.vae.PerturbationVAEModule` (encoder, decoder, count likelihood,
  ELBO and importance-sampled marginal likelihood under the model's prior).

Nothing here knows about AnnData or files.
"""
