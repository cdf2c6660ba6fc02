"""The training curves of a run folder (``scvae train``'s ``loss_curve.png``)."""

from __future__ import annotations

import pandas as pd

from scperturb_vae.pl.base import new_figure

__all__ = ["LOSS_PANELS", "loss_curve"]

#: Panels of :func:`loss_curve`: title and the history columns drawn (train, validation).
LOSS_PANELS = (
    # the training objective: per-cell negative ELBO + prior penalty / training cells
    # (scvi-tools' elbo_* columns divide the penalty by each set's own size instead)
    ("objective per cell", ["train_loss", "validation_loss"]),
    ("reconstruction loss", ["reconstruction_loss_train", "reconstruction_loss_validation"]),
    ("KL (local)", ["kl_local_train", "kl_local_validation"]),
)


def loss_curve(hist: pd.DataFrame, title: str, marks: dict[str, float] | None = None):
    """The objective, reconstruction loss and local KL per epoch, train and validation.

    ``hist`` is the run's history (epochs x logged columns); columns it lacks are left out.
    ``marks`` (label -> epoch, e.g. the end of the KL warm-up) are drawn as dashed lines.
    Returns the :class:`matplotlib.figure.Figure`.
    """
    fig, grid = new_figure(1, len(LOSS_PANELS), (4.2 * len(LOSS_PANELS), 3.4), layout=None)
    for ax, (label, cols) in zip(grid[0], LOSS_PANELS):
        for col in cols:
            if col in hist:
                ax.plot(hist.index, hist[col], label="validation" if "validation" in col else "train")
        for (name, epoch), style in zip((marks or {}).items(), (":", "--", "-.")):
            if epoch:
                ax.axvline(float(epoch), color="0.4", linestyle=style, linewidth=1, label=name)
        ax.set_xlabel("epoch")
        ax.set_title(label)
        ax.legend(frameon=False)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
