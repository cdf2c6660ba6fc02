"""The user's model classes (scvi-tools ``BaseModelClass`` subclasses), their registry,
safe save/load and interpretability on a trained model.

- :mod:`.registry`: the one table of model names, classes and default keys (no torch);
- :mod:`.base`: :class:`~.base.PerturbationModelBase` (setup_anndata, training, latents,
  graph, likelihoods);
- :mod:`.models`: :class:`~.models.SVAEPlus`, :class:`~.models.SVAE`,
  :class:`~.models.IVAE`, :class:`~.models.VAE` and ``MODELS``;
- :mod:`.persist`: weights-only model folders;
- :mod:`.interpretability`: gene effects and latent traversals through the decoder.
"""
