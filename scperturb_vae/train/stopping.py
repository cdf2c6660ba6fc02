"""Early stopping on the validation loss, once the warm-up and the alignment are behind.

scvi-tools' own early stopping watches from the first epoch; here the loss first rises with
the KL warm-up, and the latents are rotated once (:class:`~scperturb_vae.train.align.AlignLatents`)
at a fixed share of the epochs, so :class:`ValidationPlateau` only watches from ``start_epoch``
on: after ``patience`` epochs without the validation loss improving by ``min_delta``
(relative), training stops.
"""

from __future__ import annotations

import math

from lightning.pytorch import Callback

__all__ = ["DEFAULT_PATIENCE", "ValidationPlateau"]

#: epochs without improvement before stopping
DEFAULT_PATIENCE = 20


class ValidationPlateau(Callback):
    """Stop when ``elbo_validation`` has not improved by ``min_delta`` (relative) for ``patience`` epochs.

    Epochs before ``start_epoch`` (1-based) are not watched.  ``stopped_epoch`` is the
    1-based epoch after which training stopped (None: it ran to the end).
    """

    MONITOR = "elbo_validation"

    def __init__(self, start_epoch: int, patience: int = DEFAULT_PATIENCE, min_delta: float = 1e-4):
        super().__init__()
        self.start_epoch = int(start_epoch)
        self.patience = max(1, int(patience))
        self.min_delta = float(min_delta)
        self.best = math.inf
        self.wait = 0
        self.stopped_epoch: int | None = None

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        epoch = trainer.current_epoch + 1
        value = trainer.callback_metrics.get(self.MONITOR)
        if value is None or epoch < self.start_epoch:
            return
        value = float(value)
        if value < self.best - self.min_delta * abs(self.best if math.isfinite(self.best) else value):
            self.best, self.wait = value, 0
            return
        self.wait += 1
        if self.wait >= self.patience and epoch < trainer.max_epochs:
            self.stopped_epoch = epoch
            trainer.should_stop = True

    def state_dict(self) -> dict:
        return {"best": self.best, "wait": self.wait, "stopped_epoch": self.stopped_epoch}

    def load_state_dict(self, state_dict: dict) -> None:
        self.best = float(state_dict.get("best", math.inf))
        self.wait = int(state_dict.get("wait", 0))
        self.stopped_epoch = state_dict.get("stopped_epoch")
