"""Per-epoch checkpoints for ``scvae train --resume``, and the training history as plain
JSON lists (in a checkpoint and in a model folder: loadable with ``weights_only=True``).
"""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from lightning.pytorch import Callback

__all__ = ["EpochCheckpoint", "history_from_json", "history_to_json", "read_checkpoint_progress"]


def history_to_json(history: dict | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, frame in (history or {}).items():
        if not isinstance(frame, pd.DataFrame) or frame.shape[1] != 1:
            continue
        values = pd.to_numeric(frame.iloc[:, 0], errors="coerce").astype(float)
        out[str(name)] = {
            "index": [int(i) if isinstance(i, (int, np.integer)) else float(i) for i in frame.index],
            "index_name": frame.index.name,
            "values": [None if not np.isfinite(v) else float(v) for v in values],
        }
    return out


def history_from_json(data: dict[str, Any] | None) -> dict[str, pd.DataFrame]:
    out = {}
    for name, entry in (data or {}).items():
        frame = pd.DataFrame(
            {name: np.array([np.nan if v is None else v for v in entry["values"]], dtype=float)},
            index=pd.Index(entry["index"], name=entry.get("index_name")),
        )
        out[name] = frame
    return out


class EpochCheckpoint(Callback):
    """Save the whole training state every ``every_n_epochs`` epochs, for ``scvae train --resume``.

    ``DIR/last.ckpt`` is Lightning's checkpoint (weights, optimiser and loop state), written
    to a temporary name and moved into place, so a kill while saving leaves the previous
    checkpoint intact; ``DIR/progress.json`` says which epoch it holds.  The checkpoint also
    carries the training history (scvi-tools keeps it only in memory), so a resumed run's
    ``history.csv`` has every epoch.

    While fitting, Ctrl-C (SIGINT) is taken over: the first press asks the run to stop after
    the current step, where a ``KeyboardInterrupt`` is raised from plain Python code (one that
    lands inside a finaliser or a C call can be swallowed, and the run would train on); a
    second press interrupts at once.  Lightning answers the interrupt with its graceful
    shutdown and ``interrupted`` is set.  A process started with SIGINT ignored (a
    background job) keeps ignoring it; the handler is removed when the fit ends.
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
        self._stop_requested = False
        self._previous_handler = None

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
        logger = getattr(self._trainer, "logger", None)
        history = getattr(logger, "history", None) if logger is not None else None
        return {"history": history_to_json(history) if isinstance(history, dict) else {}}

    def load_state_dict(self, state_dict: dict) -> None:
        self._restored = state_dict.get("history") or None

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        # Lightning turns Ctrl-C during fit into sys.exit(1); the caller asks this flag
        self.interrupted = isinstance(exception, KeyboardInterrupt)
        self._release_sigint()

    # ------------------------------------------------------------------ Ctrl-C between steps
    def _on_sigint(self, signum, frame) -> None:
        if self._stop_requested:
            raise KeyboardInterrupt
        self._stop_requested = True

    def _take_sigint(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        self._stop_requested = False
        if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
            return
        self._previous_handler = signal.signal(signal.SIGINT, self._on_sigint)

    def _release_sigint(self) -> None:
        if self._previous_handler is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._previous_handler)
        self._previous_handler = None

    def _stop_if_asked(self) -> None:
        if self._stop_requested:
            self._stop_requested = False
            raise KeyboardInterrupt

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._stop_if_asked()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._stop_if_asked()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._stop_if_asked()

    def on_fit_end(self, trainer, pl_module) -> None:
        self._release_sigint()

    def on_fit_start(self, trainer, pl_module) -> None:
        self._take_sigint()
        if not self._restored or trainer.logger is None:
            return
        experiment = trainer.logger.experiment
        data = getattr(experiment, "data", None)
        if isinstance(data, dict):
            for name, frame in history_from_json(self._restored).items():
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
