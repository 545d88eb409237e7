"""Callbacks used by every training run."""

from __future__ import annotations

import signal
import statistics
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Checkpoint

from rpevit.errors import TrainingInterrupted


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


class GracefulStop(L.Callback):
    """SIGINT (Ctrl-C) or SIGTERM (``kill``, SLURM pre-emption) during training: finish the
    current batch, save a resumable checkpoint at that batch boundary and stop.

    The handler only sets a flag; the checkpoint is written in ``on_train_batch_end``, the
    same point at which step checkpoints are saved, so resuming from it reproduces the
    uninterrupted run exactly (stopping mid-step would lose or repeat a batch). Under DDP the
    flag is OR-reduced across ranks every batch, so all ranks stop at the same step even if
    only one got the signal. A second signal aborts at once, as without this callback.
    Handlers are installed in ``on_train_start`` (after Lightning installs its own SIGTERM
    handler, which would stop without a checkpoint) and restored when training ends.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, checkpoint_path: str | Path) -> None:
        self.checkpoint_path = Path(checkpoint_path)
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.signum is not None:  # asked twice: abort now (KeyboardInterrupt / terminate)
            default = signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL
            signal.signal(signum, default)
            signal.raise_signal(signum)
            return
        self.signum = signum
        print(
            f"rpevit: {name} received: saving a checkpoint after the current batch "
            f"(send {name} again to abort without saving)",
            file=sys.stderr,
            flush=True,
        )

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def interruption(self, message: str) -> TrainingInterrupted:
        signum = self.signum or signal.SIGTERM
        return TrainingInterrupted(
            f"interrupted by {signal.Signals(signum).name} {message}", int(signum)
        )

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.install()

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        stop = self.signum is not None
        if trainer.world_size > 1:
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop:
            trainer.save_checkpoint(self.checkpoint_path, weights_only=False)
            self.restore()
            run_dir = self.checkpoint_path.parent.parent
            raise self.interruption(
                f"after step {trainer.global_step} (epoch {trainer.current_epoch}): saved a "
                f"resumable checkpoint {self.checkpoint_path}; continue with "
                f"`rpevit train --resume {run_dir}`"
            )

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.restore()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self.restore()


class LastEveryEpoch(Checkpoint):
    """Writes ``last.ckpt`` after every validation. Lightning's ``ModelCheckpoint(save_last=True)``
    with a monitor only refreshes it in epochs where the monitored metric improved, so a resume
    would retrain the epochs since. Being a ``Checkpoint``, it runs after ``ModelCheckpoint``,
    so the saved state already holds this epoch's best-model bookkeeping."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:  # a full training state: resume needs the optimizer
            trainer.save_checkpoint(self.path, weights_only=False)
