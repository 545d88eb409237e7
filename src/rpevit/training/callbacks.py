"""Callbacks used by every training run."""

from __future__ import annotations

import statistics
import time
from typing import Any

import lightning as L


class EpochTimer(L.Callback):
    """Wall-clock seconds of training per epoch: from the epoch's start to its last training
    batch, minus any validation run in between (so end-of-epoch validation is excluded).

    Times and batch counts are kept per epoch and saved in checkpoints, so a run resumed
    mid-epoch continues the clock of the interrupted epoch.
    """

    def __init__(self) -> None:
        self.seconds: dict[int, float] = {}
        self.batches: dict[int, int] = {}
        self.batches_per_epoch: int | None = None
        self._start: float | None = None  # perf_counter value at which the epoch's clock is 0
        self._val_start: float | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A run resumed mid-epoch gets no on_train_epoch_start for that epoch.
        self._start = time.perf_counter() - self.seconds.get(trainer.current_epoch, 0.0)
        self.batches_per_epoch = int(trainer.num_training_batches)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter() - self.seconds.get(trainer.current_epoch, 0.0)

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        epoch = trainer.current_epoch
        self.seconds[epoch] = time.perf_counter() - self._start
        self.batches[epoch] = self.batches.get(epoch, 0) + 1

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._val_start = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._val_start is not None and self._start is not None:
            self._start += time.perf_counter() - self._val_start  # stop the clock
        self._val_start = None

    @property
    def epoch_seconds(self) -> list[float]:
        """Seconds of each complete epoch (all epochs if none is complete yet)."""
        full = [
            s for e, s in sorted(self.seconds.items()) if self.batches[e] == self.batches_per_epoch
        ]
        return full or [s for _, s in sorted(self.seconds.items())]

    @property
    def mean_seconds(self) -> float | None:
        """Mean training seconds per epoch, None before the first batch."""
        times = self.epoch_seconds
        return statistics.fmean(times) if times else None

    def state_dict(self) -> dict[str, Any]:
        return {
            "seconds": dict(self.seconds),
            "batches": dict(self.batches),
            "batches_per_epoch": self.batches_per_epoch,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.seconds = {int(k): float(v) for k, v in state_dict["seconds"].items()}
        self.batches = {int(k): int(v) for k, v in state_dict["batches"].items()}
        self.batches_per_epoch = state_dict["batches_per_epoch"]
