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

import torch
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


