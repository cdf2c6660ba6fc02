"""Training progress that suits where it goes.

On a terminal, scvi-tools' live progress bar.  On a file or a pipe (a batch job's log, ``make
demo > log``) a bar writes ``\\r`` fragments, about a line per redraw; there
:class:`ProgressLines` writes one plain line every ``every_epochs`` epochs or
``every_seconds`` seconds instead, with the losses and the time left::

    epoch 37/100: train loss 812.31, validation loss 815.07; 0:42 elapsed, about 1:12 left
"""

from __future__ import annotations

import sys
import time

from lightning.pytorch import Callback

__all__ = ["ProgressLines"]


def _clock(seconds: float) -> str:
    seconds = int(round(max(seconds, 0.0)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class ProgressLines(Callback):
    """One line per ``every_epochs`` epochs or ``every_seconds`` seconds, whichever comes first.

    The first and the last epoch are always reported.  Lines go to ``stream`` (stderr).
    """

    def __init__(self, every_epochs: int = 10, every_seconds: float = 60.0, stream=None):
        super().__init__()
        self.every_epochs = max(1, int(every_epochs))
        self.every_seconds = float(every_seconds)
        self.stream = stream
        self._start = None
        self._last = None
        self._first_epoch = 0

    def on_fit_start(self, trainer, pl_module) -> None:
        self._start = self._last = time.monotonic()
        self._first_epoch = trainer.current_epoch  # a resumed run starts later

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        epoch, total = trainer.current_epoch + 1, trainer.max_epochs
        now = time.monotonic()
        due = (epoch == self._first_epoch + 1 or epoch == total or epoch % self.every_epochs == 0
               or now - self._last >= self.every_seconds)
        if not due:
            return
        self._last = now
        elapsed = now - self._start
        done = epoch - self._first_epoch
        left = elapsed / done * (total - epoch) if done and total else 0.0
        metrics = trainer.callback_metrics
        losses = []
        for name, label in (("elbo_train", "train loss"), ("elbo_validation", "validation loss")):
            value = metrics.get(name)
            if value is not None:
                losses.append(f"{label} {float(value):.2f}")
        text = f"epoch {epoch}/{total}: " + (", ".join(losses) + "; " if losses else "")
        text += f"{_clock(elapsed)} elapsed, about {_clock(left)} left"
        print(text, file=self.stream if self.stream is not None else sys.stderr, flush=True)
