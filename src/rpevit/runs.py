"""The run folder: the one module that knows its layout, and typed access to its files.

A run lives in one folder (``<out>/<run_name>``)::

    config.json                resolved training config
    checkpoints/best.ckpt      best validation accuracy
    checkpoints/last.ckpt      latest state (epoch end, every N steps, on SIGINT/SIGTERM);
                               --resume uses it (best.ckpt if it is unreadable)
    logs/tensorboard/          TensorBoard events (a resumed run appends)
    logs/csv/version_<k>/      metrics.csv per start (0: first, 1: first resume, ...)
    metrics.json               test metrics of best.ckpt (DESIGN.md section 6), and the epoch,
                               validation and test accuracy of last.ckpt
    test_predictions.npz       per test image (test-set order) of best.ckpt: true label,
                               predicted class, log-probability of the true class
    evaluation.json            written by ``rpevit evaluate RUN`` (e.g. resolution transfer)

A grid folder holds run folders and ``grid_summary.json`` (one ``grid_summary.shard-I-of-N.json``
per shard). Every file is written atomically (:mod:`rpevit.atomic`).
"""

from __future__ import annotations

import csv
import json
import math
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np

from rpevit.atomic import atomic_write, remove_stale_temporaries, write_json_atomic

CONFIG = "config.json"
METRICS = "metrics.json"
EVALUATION = "evaluation.json"
PREDICTIONS = "test_predictions.npz"
CHECKPOINT_DIR = "checkpoints"
BEST, LAST = "best.ckpt", "last.ckpt"
#: ``logs/tensorboard`` (Lightning: root ``logs``, version ``tensorboard``) and ``logs/csv``.
LOGS, TENSORBOARD, CSV_LOGS = "logs", "tensorboard", "csv"
_CSV_VERSION, _CSV_FILE = "version_", "metrics.csv"
_GRID_SUMMARY = "grid_summary"

#: What a run folder holds: a valid metrics.json, a last.ckpt to resume from, or neither.
RunState = Literal["finished", "partial", "pending"]


@dataclass(kw_only=True)
class Metrics:
    """The ``metrics.json`` record, fields in file order.

    Keys of other versions (unknown here) are kept in ``extra`` and written after the known
    ones; the fields after ``config`` are written only when set, as they are today.
    """

    model: str
    dataset: str | None = None
    seed: int | None = None
    epochs: int | None = None
    checkpoint: str | None = None
    checkpoint_epoch: int | None = None
    checkpoint_step: int | None = None
    init_from: dict[str, Any] | None = None
    val_accuracy: float | None = None
    val_top5_accuracy: float | None = None
    test_accuracy: float
    test_top5_accuracy: float | None = None
    precision_macro: float | None = None
    recall_macro: float | None = None
    f1_macro: float | None = None
    per_class: list[dict[str, Any]] | None = None
    num_test_samples: int | None = None
    log_likelihood: float | None = None
    mean_nll: float | None = None
    aic: float | None = None
    bic: float | None = None
    val_mean_nll: float | None = None
    params: dict[str, int] | None = None
    nb_features: int | None = None
    flops_per_image: int | None = None
    train_seconds_per_epoch: float | None = None
    inference_ms_per_sample: float | None = None
    inference_batch_size: int | None = None
    peak_memory_mb: float | None = None
    #: True: ``peak_memory_mb`` counts from the start of this run's training. Absent in older
    #: records, whose CPU peak is that of a worker process that may have trained other runs first
    peak_memory_per_run: bool | None = None
    device: str | None = None
    torch_version: str | None = None
    git_commit: str | None = None
    config: dict[str, Any] | None = None
    resolution_transfer: dict[str, Any] | None = None
    hardware: dict[str, Any] | None = None
    software: dict[str, Any] | None = None
    train_seconds_epochs: list[float] | None = None
    #: the final state (``last.ckpt``) beside the best one: a run that ended below its best
    #: shows here (epoch 0-based, like ``checkpoint_epoch``)
    last_checkpoint_epoch: int | None = None
    last_val_accuracy: float | None = None
    last_test_accuracy: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Any) -> Metrics:
        """The record of a parsed ``metrics.json``; ValueError unless it is a complete result
        (a dict with a ``model`` and a float ``test_accuracy``)."""
        if not isinstance(data, dict) or "model" not in data:
            raise ValueError("not a metrics record (no model)")
        if not isinstance(data.get("test_accuracy"), float):
            raise ValueError("not a complete metrics record (no float test_accuracy)")
        names = {f.name for f in fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names}
        return cls(**known, extra={k: v for k, v in data.items() if k not in names})

    @property
    def run_peak_memory_mb(self) -> float | None:
        """``peak_memory_mb`` where it is this run's own (measured per run, or on a GPU, where
        the peak was always reset per run); None for an older CPU record."""
        per_run = self.peak_memory_per_run or (self.device or "").startswith("cuda")
        return self.peak_memory_mb if per_run else None

    def training_seconds(self, epochs: int | None) -> float | None:
        """Seconds spent in the training epochs (the per-epoch record, else the mean x
        ``epochs``); None if the run recorded neither."""
        if self.train_seconds_epochs:
            return float(sum(self.train_seconds_epochs))
        if self.train_seconds_per_epoch is not None and epochs is not None:
            return self.train_seconds_per_epoch * epochs
        return None

    def to_dict(self) -> dict[str, Any]:
        """The record as written to ``metrics.json`` (the inverse of :meth:`from_dict`)."""
        record = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "extra" and (value is not None or f.name not in _WRITTEN_WHEN_SET):
                record[f.name] = value
        return {**record, **self.extra}


#: Metrics fields that older runs or other code paths lack: absent from the file when None.
_WRITTEN_WHEN_SET = ("resolution_transfer", "hardware", "software", "train_seconds_epochs")
_WRITTEN_WHEN_SET += ("last_checkpoint_epoch", "last_val_accuracy", "last_test_accuracy")
_WRITTEN_WHEN_SET += ("peak_memory_per_run",)


@dataclass(frozen=True)
class Predictions:
    """A run's per-image test predictions, in test-set order."""

    labels: np.ndarray  # true class, int
    predicted: np.ndarray  # argmax class, int
    true_log_prob: np.ndarray  # log-probability of the true class, float64

    @property
    def correct(self) -> np.ndarray:
        return self.predicted == self.labels

    @classmethod
    def load(cls, path: Path) -> Predictions:
        """Read an ``.npz`` written by :meth:`save` (OSError, ValueError, KeyError, EOFError,
        ``zipfile.BadZipFile`` if it is missing or unreadable)."""
        with np.load(path) as data:
            return cls(
                np.asarray(data["labels"]),
                np.asarray(data["predicted"]),
                np.asarray(data["true_log_prob"], dtype=np.float64),
            )

    def save(self, path: Path) -> None:
        """Write the three arrays atomically as a compressed ``.npz`` (~3x smaller: records
        of finished runs are kept in the repository)."""
        with atomic_write(path) as f:
            np.savez_compressed(
                f, labels=self.labels, predicted=self.predicted, true_log_prob=self.true_log_prob
            )


#: Errors that mean "this predictions file cannot be used".
UNREADABLE = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)


def _read_json(path: Path) -> Any:
    """The parsed JSON file, or None if it is missing or not JSON."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _number(text: str | None) -> float | None:
    """A finite float from a CSV cell, None for an empty, non-numeric or non-finite one."""
    try:
        value = float(text) if text not in (None, "") else None
    except (TypeError, ValueError):
        return None
    return value if value is not None and math.isfinite(value) else None


@dataclass(frozen=True)
class RunDir:
    """A run folder: the paths of its files and typed reading / atomic writing of them."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @classmethod
    def of_checkpoint(cls, ckpt: Path) -> RunDir | None:
        """The run folder a checkpoint file belongs to (None: it lies outside any)."""
        return cls(ckpt.parent.parent) if ckpt.parent.name == CHECKPOINT_DIR else None

    @property
    def config_file(self) -> Path:
        return self.path / CONFIG

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS

    @property
    def evaluation_file(self) -> Path:
        return self.path / EVALUATION

    @property
    def predictions_file(self) -> Path:
        return self.path / PREDICTIONS

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / CHECKPOINT_DIR

    @property
    def best(self) -> Path:
        return self.checkpoint_dir / BEST

    @property
    def last(self) -> Path:
        return self.checkpoint_dir / LAST

    @property
    def logs_dir(self) -> Path:
        return self.path / LOGS

    def checkpoint(self) -> Path | None:
        """``best.ckpt``, else ``last.ckpt``, else None: the checkpoint to evaluate."""
        return next((p for p in (self.best, self.last) if p.is_file()), None)

    def has_checkpoints(self) -> bool:
        return any(self.checkpoint_dir.glob("*.ckpt"))

    def remove_stale_temporaries(self) -> None:
        """Delete what writers killed mid-write left in the folder and its checkpoints."""
        for folder in (self.path, self.checkpoint_dir):
            remove_stale_temporaries(folder)

    def read_config(self) -> dict[str, Any] | None:
        """``config.json`` as stored (None if missing or not a JSON object)."""
        config = _read_json(self.config_file)
        return config if isinstance(config, dict) else None

    def write_config(self, config: Mapping[str, Any]) -> None:
        write_json_atomic(self.config_file, config)

    def read_metrics(self, model: str | None = None, seed: int | None = None) -> Metrics | None:
        """The run's complete result (of ``model`` with ``seed``, if given), else None."""
        try:
            metrics = Metrics.from_dict(_read_json(self.metrics_file))
        except ValueError:
            return None
        if model is not None and (metrics.model, metrics.seed) != (model, seed):
            return None
        return metrics

    def write_metrics(self, metrics: Metrics) -> None:
        write_json_atomic(self.metrics_file, metrics.to_dict())

    def read_predictions(self) -> Predictions:
        """``test_predictions.npz`` (an :data:`UNREADABLE` error if it cannot be read)."""
        return Predictions.load(self.predictions_file)

    def read_transfer(self) -> dict[str, Any] | None:
        """The ``resolution_transfer`` record of ``evaluation.json``, if it has results."""
        evaluation = _read_json(self.evaluation_file)
        transfer = evaluation.get("resolution_transfer") if isinstance(evaluation, dict) else None
        return transfer if isinstance(transfer, dict) and transfer.get("results") else None

    def state(self, model: str | None = None, seed: int | None = None) -> RunState:
        """``finished`` (valid metrics), ``partial`` (has last.ckpt) or ``pending``."""
        if self.read_metrics(model, seed) is not None:
            return "finished"
        return "partial" if self.last.is_file() else "pending"

    def csv_logs(self) -> list[Path]:
        """The CSV logs, one per start of training, oldest first (``version_<k>`` by k)."""
        logs = {}
        for path in (self.logs_dir / CSV_LOGS).glob(f"{_CSV_VERSION}*/{_CSV_FILE}"):
            version = path.parent.name.removeprefix(_CSV_VERSION)
            if version.isdigit():
                logs[int(version)] = path
        return [logs[k] for k in sorted(logs)]

    def copy_records(
        self, dest: Path, extra: tuple[str, ...] = (), predictions: bool = True
    ) -> None:
        """Copy the run's records (config, metrics, evaluation, test predictions unless
        ``predictions`` is False, CSV logs, the ``extra`` files), not its checkpoints or
        TensorBoard events, to the same places below ``dest``: what a repository keeps. The
        metrics file, which marks a run finished, comes last, so that a copy interrupted (or
        committed) half-way never looks like a finished run's records."""
        names = [CONFIG, EVALUATION, *([PREDICTIONS] if predictions else []), *extra]
        files = [self.path / n for n in names if (self.path / n).is_file()] + self.csv_logs()
        files += [self.path / METRICS] if (self.path / METRICS).is_file() else []
        for source in files:
            target = Path(dest) / source.relative_to(self.path)
            target.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(target) as f:
                f.write(source.read_bytes())

    def curves(self, by: Literal["step", "epoch"] = "step") -> dict[str, dict[int, float]]:
        """``{column: {step or epoch: value}}`` of every logged number (empty, non-numeric and
        non-finite cells left out); a later start's value for a step or epoch replaces the
        earlier one (logged again after a resume)."""
        curves: dict[str, dict[int, float]] = {}
        for path in self.csv_logs():
            with path.open(newline="") as f:
                for row in csv.DictReader(f):
                    x = _number(row.get(by))
                    if x is None:
                        continue
                    for key, text in row.items():
                        if key not in (None, "epoch", "step") and (v := _number(text)) is not None:
                            curves.setdefault(key, {})[int(x)] = v
        return curves


def finished_runs(root: Path) -> list[RunDir]:
    """Run folders below ``root`` holding a ``metrics.json`` (in the order of those files)."""
    return [RunDir(p.parent) for p in sorted(root.rglob(METRICS))]


def unfinished_runs(root: Path) -> list[RunDir]:
    """Folders below ``root`` with a ``config.json`` but no ``metrics.json``."""
    configs = sorted(root.rglob(CONFIG))
    return [RunDir(p.parent) for p in configs if not (p.parent / METRICS).is_file()]


def checkpointed_runs(root: Path) -> list[RunDir]:
    """Run folders below ``root`` that hold checkpoints, sorted."""
    folders = {ckpt.parent.parent for ckpt in root.rglob(f"{CHECKPOINT_DIR}/*.ckpt")}
    return [RunDir(folder) for folder in sorted(folders)]


def checkpoint_evaluation_file(ckpt: Path) -> Path:
    """Where ``rpevit evaluate CKPT`` writes by default: ``<ckpt stem>-evaluation.json``."""
    return ckpt.with_name(f"{ckpt.stem}-{EVALUATION}")


def summary_path(out: Path, shard: tuple[int, int] | None) -> Path:
    """``grid_summary.json``, or one file per shard so parallel shards never overwrite."""
    if shard is None:
        return out / f"{_GRID_SUMMARY}.json"
    return out / f"{_GRID_SUMMARY}.shard-{shard[0]}-of-{shard[1]}.json"


def is_grid_folder(path: str | Path) -> bool:
    """A grid's folder (has a grid summary) rather than one run or checkpoint."""
    return Path(path).is_dir() and any(Path(path).glob(f"{_GRID_SUMMARY}*.json"))
