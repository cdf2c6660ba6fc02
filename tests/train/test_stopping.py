"""Early stopping on the validation loss (scperturb_vae.train.stopping), watched only after the
KL warm-up and the latent alignment."""

from __future__ import annotations

import numpy as np
import scvi

import scperturb_vae as sv
from scperturb_vae.data.simulate import simulate_screen
from scperturb_vae.train.stopping import ValidationPlateau


def _fit(max_epochs: int, patience):
    adata = simulate_screen("paper", n_perturbations=4, n_cells_per_perturbation=40, n_latent=2, n_genes=20,
                            n_heldout=0, max_targets=1, seed=0)
    scvi.settings.seed = 0
    sv.SVAEPlus.setup_anndata(adata)
    model = sv.SVAEPlus(adata, n_latent=2)
    model.train(max_epochs=max_epochs, stop_on_plateau=patience, enable_progress_bar=False)
    return model


def test_training_stops_on_a_plateau_after_the_warm_up_and_alignment():
    model = _fit(300, 5)
    epochs = len(model.history["elbo_train"])
    assert model.stopped_epoch is not None and epochs == model.stopped_epoch < 300
    # never before the alignment at 40% of the epochs (and the warm-up) plus the patience
    assert model.stopped_epoch >= round(0.4 * 300) + 5
    validation = model.history["elbo_validation"].to_numpy().ravel()
    watched = validation[int(round(0.4 * 300)):].astype(float)
    # the last 5 watched epochs improved on the best before them by less than min_delta (relative)
    assert watched[-5:].min() >= watched[:-5].min() * (1 - ValidationPlateau(1).min_delta)
    # and the stop came at the first such run of 5 epochs: the last improvement was 5 epochs before the end
    best, last = np.inf, -1
    for i, value in enumerate(watched):
        if value < best - 1e-4 * (abs(best) if np.isfinite(best) else abs(value)):
            best, last = value, i
    assert len(watched) - 1 - last == 5


def test_without_patience_every_epoch_is_trained():
    model = _fit(40, None)
    assert model.stopped_epoch is None and len(model.history["elbo_train"]) == 40


def test_plateau_ignores_epochs_before_its_start():
    class Trainer:
        sanity_checking = False
        max_epochs = 100
        should_stop = False
        current_epoch = 0
        callback_metrics: dict = {}

    stop = ValidationPlateau(start_epoch=10, patience=2)
    trainer = Trainer()
    for epoch, value in enumerate([5.0] * 9 + [4.0, 4.0, 4.0, 4.0]):
        trainer.current_epoch, trainer.callback_metrics = epoch, {"elbo_validation": value}
        stop.on_validation_epoch_end(trainer, None)
        if trainer.should_stop:
            break
    # epochs 1-9 were not watched; the best came at epoch 10, then two epochs without gain
    assert stop.stopped_epoch == 12 and trainer.should_stop
