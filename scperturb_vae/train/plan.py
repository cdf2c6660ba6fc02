"""Training plan: scvi-tools' plan with separate optimiser settings for prior parameters.

scvi-tools' :class:`~scvi.train.TrainingPlan` runs one Adam with ``eps=0.01``.  The prior
parameters (sVAE+ shifts and mask logits, iVAE means and variances) receive gradients that
are small per minibatch, because they are shared by one perturbation's cells only and the
Beta / L1 penalty is divided by the number of cells; with ``eps=0.01`` they barely move
(seen in the reference implementation).  This plan puts them in their own parameter group
with ``lr_prior`` and ``eps_prior`` (default ``1e-8``), leaving the network's settings as in
scVI.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import torch
from lightning.pytorch import Callback
from scvi.train import TrainingPlan


class PerturbationTrainingPlan(TrainingPlan):
    """:class:`~scvi.train.TrainingPlan` with a parameter group for the prior.

    Parameters
    ----------
    module
        A :class:`~scperturb_vae.module.vae.PerturbationVAEModule`.
    lr_prior
        Learning rate of the prior's parameters (default: ``10 * lr``).
    eps_prior
        Adam ``eps`` of the prior's parameters.
    **kwargs
        Passed to :class:`~scvi.train.TrainingPlan` (``lr``, ``weight_decay``, ``eps``,
        ``n_epochs_kl_warmup``, ...).
    """

    def __init__(self, module, *, lr_prior: float | None = None, eps_prior: float = 1e-8, **kwargs):
        super().__init__(module, **kwargs)
        self.lr_prior = 10.0 * self.lr if lr_prior is None else float(lr_prior)
        self.eps_prior = float(eps_prior)

    def configure_optimizers(self):
        prior_ids = {id(p) for p in self.module.prior.parameters()}
        network = [p for p in self.module.parameters() if p.requires_grad and id(p) not in prior_ids]
        prior = [p for p in self.module.prior.parameters() if p.requires_grad]
        groups = [{"params": network, "lr": self.lr, "eps": self.eps, "weight_decay": self.weight_decay}]
        if prior:
            groups.append({"params": prior, "lr": self.lr_prior, "eps": self.eps_prior, "weight_decay": 0.0})
        cls = torch.optim.AdamW if self.optimizer_name == "AdamW" else torch.optim.Adam
        optimizer = cls(groups)
        config = {"optimizer": optimizer}
        if self.reduce_lr_on_plateau:
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer,
                patience=self.lr_patience,
                factor=self.lr_factor,
                threshold=self.lr_threshold,
                min_lr=self.lr_min,
                threshold_mode="abs",
            )
            config["lr_scheduler"] = {"scheduler": scheduler, "monitor": self.lr_scheduler_metric}
        return config


class EpochCheckpoint(Callback):
    """Save the whole training state every ``every_n_epochs`` epochs, for ``scvae train --resume``.

    ``DIR/last.ckpt`` is Lightning's checkpoint (weights, optimiser and loop state), written
    to a temporary name and moved into place, so a kill while saving leaves the previous
    checkpoint intact; ``DIR/progress.json`` says which epoch it holds.  The checkpoint also
    carries the training history (scvi-tools keeps it only in memory), so a resumed run's
    ``history.csv`` has every epoch.
    """

    FILE = "last.ckpt"
    PROGRESS = "progress.json"

    def __init__(self, directory: str | os.PathLike, every_n_epochs: int = 1):
        super().__init__()
        self.directory = Path(directory)
        self.every_n_epochs = max(1, int(every_n_epochs))
        self._trainer = None
        self._restored: dict | None = None
        self.interrupted = False

    @property
    def path(self) -> Path:
        return self.directory / self.FILE

    def setup(self, trainer, pl_module, stage: str) -> None:
        self._trainer = trainer

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        epoch = trainer.current_epoch + 1
        if epoch % self.every_n_epochs and epoch != trainer.max_epochs:
            return
        tmp = self.directory / (self.FILE + ".tmp")
        trainer.save_checkpoint(tmp)  # every rank takes part; rank 0 writes
        if trainer.is_global_zero:
            os.replace(tmp, self.path)
            progress = self.directory / (self.PROGRESS + ".tmp")
            progress.write_text(json.dumps({"epoch": epoch, "max_epochs": trainer.max_epochs}) + "\n")
            os.replace(progress, self.directory / self.PROGRESS)

    # the history travels in the checkpoint as plain lists (loadable with weights_only=True)
    def state_dict(self) -> dict:
        from scperturb_vae.model.persist import _history_to_json

        logger = getattr(self._trainer, "logger", None)
        history = getattr(logger, "history", None) if logger is not None else None
        return {"history": _history_to_json(history) if isinstance(history, dict) else {}}

    def load_state_dict(self, state_dict: dict) -> None:
        self._restored = state_dict.get("history") or None

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        # Lightning turns Ctrl-C during fit into sys.exit(1); the caller asks this flag
        self.interrupted = isinstance(exception, KeyboardInterrupt)

    def on_fit_start(self, trainer, pl_module) -> None:
        if not self._restored or trainer.logger is None:
            return
        from scperturb_vae.model.persist import _history_from_json

        experiment = trainer.logger.experiment
        data = getattr(experiment, "data", None)
        if isinstance(data, dict):
            for name, frame in _history_from_json(self._restored).items():
                data[name] = frame if name not in data else pd.concat([frame, data[name]])
        self._restored = None


def read_checkpoint_progress(directory: str | os.PathLike) -> dict | None:
    """``{"epoch": E, "max_epochs": N}`` of the checkpoint in ``directory``, or None."""
    directory = Path(directory)
    if not (directory / EpochCheckpoint.FILE).exists():
        return None
    try:
        return json.loads((directory / EpochCheckpoint.PROGRESS).read_text())
    except (OSError, ValueError):
        return {"epoch": None, "max_epochs": None}
