"""Training machinery under the model classes: the training plan (prior parameters in
their own Adam group) and per-epoch checkpoints for ``--resume``.
"""
