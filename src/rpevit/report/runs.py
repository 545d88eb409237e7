"""Finding finished runs under a folder and reading what they recorded.

A run folder is any folder holding a valid ``metrics.json`` (written by ``rpevit train`` /
``rpevit grid``); next to it ``config.json``, Lightning's CSV logs, one
``logs/csv/version_<k>/metrics.csv`` per start of training (0: first, 1: first resume, ...),
and, once ``rpevit evaluate RUN --image-size ...`` ran, ``evaluation.json`` with the
resolution-transfer results, and ``test_predictions.npz`` with the per-image test predictions
(runs trained before it was recorded lack it; ``rpevit evaluate RUN`` writes it).

Runs of one model are told apart by their *variant*: the model name, plus the model options
set explicitly (``ape=False``, ``rope_mode=mixed``, ...; the feature count as ``m=<m>``, a
random-feature ablation) and ``from <model>`` when the weights were initialised from another
run (``--init-from``).
"""

from __future__ import annotations

import csv
import json
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rpevit.errors import ConfigError
from rpevit.experiments.grid import GRID_IDENTITY, read_metrics
from rpevit.training.run import PREDICTIONS


@dataclass
class Run:
    """One finished run: where it is and what it recorded."""

    path: Path
    metrics: dict[str, Any]
    config: dict[str, Any]
    curves: dict[int, dict[str, float]] = field(default_factory=dict)
    #: ``resolution_transfer`` record of the run's ``evaluation.json`` (None: not evaluated)
    transfer: dict[str, Any] | None = None

    @property
    def model(self) -> str:
        return str(self.metrics["model"])

    @property
    def seed(self) -> int | None:
        return self.metrics.get("seed")

    @property
    def dataset(self) -> str:
        return str(self.metrics.get("dataset") or self.config.get("dataset"))

    @property
    def explicit_nb_features(self) -> int | None:
        """The feature count set in the run's options (None: the kernel's default)."""
        return (self.config.get("model_options") or {}).get("nb_features")

    @property
    def nb_features(self) -> int | None:
        """Features per head the kernel used (recorded at evaluation; else the option)."""
        return self.metrics.get("nb_features") or self.explicit_nb_features

    @property
    def source(self) -> dict[str, Any] | None:
        """What the weights were initialised from (``--init-from``): model, path, epochs."""
        source = self.metrics.get("init_from")
        return source if isinstance(source, dict) else None

    @property
    def epochs(self) -> int | None:
        """Epochs this run trained (not counting those of an ``--init-from`` source)."""
        return self.metrics.get("epochs") or self.config.get("epochs")

    @property
    def family(self) -> str:
        """The model name plus its explicit options other than the feature count, e.g.
        ``favor-rope ape=False``: the runs a feature-count ablation compares."""
        options = self.config.get("model_options") or {}
        shown = [f"{k}={v}" for k, v in sorted(options.items()) if k != "nb_features"]
        return " ".join([self.model, *shown])

    @property
    def variant(self) -> str:
        """:attr:`family`, ``+ " m=<m>"`` for an explicit feature count, ``+ " from <model>"``
        when initialised from another run."""
        label = self.family
        if self.explicit_nb_features:
            label += f" m={self.explicit_nb_features}"
        if self.source:
            label += f" from {self.source.get('model')}"
        return label


@dataclass(frozen=True)
class Predictions:
    """A run's per-image test predictions, in test-set order."""

    labels: np.ndarray  # true class, int
    predicted: np.ndarray  # argmax class, int
    true_log_prob: np.ndarray  # log-probability of the true class, float64

    @property
    def correct(self) -> np.ndarray:
        return self.predicted == self.labels


def read_predictions(run: Run) -> tuple[Predictions | None, str | None]:
    """The run's ``test_predictions.npz``, or None and a short reason why it cannot be used
    (missing, unreadable, or its accuracy is not the one in metrics.json)."""
    path = run.path / PREDICTIONS
    if not path.is_file():
        return None, f"no {PREDICTIONS}"
    try:
        with np.load(path) as data:
            predictions = Predictions(
                np.asarray(data["labels"]),
                np.asarray(data["predicted"]),
                np.asarray(data["true_log_prob"], dtype=np.float64),
            )
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        return None, f"{PREDICTIONS} is unreadable ({error})"
    labels, predicted, log_prob = (
        predictions.labels,
        predictions.predicted,
        predictions.true_log_prob,
    )
    n = labels.size
    if n == 0 or labels.ndim != 1 or not predicted.shape == labels.shape == log_prob.shape:
        return None, f"{PREDICTIONS} holds empty arrays or arrays of different shapes"
    accuracy, recorded = float(predictions.correct.mean()), run.metrics["test_accuracy"]
    if abs(accuracy - recorded) * n > 0.5:  # more than half an image apart
        return None, (
            f"{PREDICTIONS} disagrees with metrics.json (accuracy {accuracy:.4f} vs {recorded:.4f})"
        )
    return predictions, None


def _csv_logs(run_dir: Path) -> list[Path]:
    """The run's CSV logs, oldest first (``version_<k>`` in numeric order)."""
    logs = {
        int(path.parent.name.removeprefix("version_")): path
        for path in (run_dir / "logs" / "csv").glob("version_*/metrics.csv")
        if path.parent.name.removeprefix("version_").isdigit()
    }
    return [logs[k] for k in sorted(logs)]


def _number(text: str | None) -> float | None:
    try:
        value = float(text) if text not in (None, "") else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def read_curves(run_dir: Path) -> dict[int, dict[str, float]]:
    """Validation loss and accuracy per epoch (``{epoch: {"val_loss", "val_acc"}}``) from the
    CSV logs; a later log's value for an epoch replaces an earlier one (re-run after resume)."""
    curves: dict[int, dict[str, float]] = {}
    for path in _csv_logs(run_dir):
        with path.open(newline="") as f:
            for row in csv.DictReader(f):
                epoch = _number(row.get("epoch"))
                loss, acc = _number(row.get("val/loss")), _number(row.get("val/acc"))
                if epoch is None or (loss is None and acc is None):
                    continue
                point = curves.setdefault(int(epoch), {})
                if loss is not None:
                    point["val_loss"] = loss
                if acc is not None:
                    point["val_acc"] = acc
    return dict(sorted(curves.items()))


def _read_config(run_dir: Path, metrics: dict[str, Any]) -> dict[str, Any]:
    try:
        config = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        config = None
    return config if isinstance(config, dict) else dict(metrics.get("config") or {})


def read_transfer(run_dir: Path) -> dict[str, Any] | None:
    """The ``resolution_transfer`` record of ``<run_dir>/evaluation.json``, if there is one."""
    try:
        evaluation = json.loads((run_dir / "evaluation.json").read_text())
    except (OSError, ValueError):
        return None
    transfer = evaluation.get("resolution_transfer") if isinstance(evaluation, dict) else None
    return transfer if isinstance(transfer, dict) and transfer.get("results") else None


def load_runs(*runs_dirs: str | Path) -> tuple[list[Run], list[str]]:
    """Every finished run below the ``runs_dirs`` (sorted by model, seed) and notes on what was
    left out or looks inconsistent. Runs of several data sets raise ConfigError."""
    if not runs_dirs:
        raise ConfigError("no runs folder given")
    runs, notes, seen = [], [], set()
    for runs_dir in map(Path, runs_dirs):
        if not runs_dir.is_dir():
            raise ConfigError(f"runs folder {runs_dir} does not exist")
        for metrics_file in sorted(runs_dir.rglob("metrics.json")):
            run_dir = metrics_file.parent
            if (resolved := run_dir.resolve()) in seen:  # a folder reached twice
                continue
            seen.add(resolved)
            metrics = read_metrics(run_dir)
            if metrics is None:
                notes.append(f"{run_dir}: metrics.json is incomplete or invalid, left out")
                continue
            config = _read_config(run_dir, metrics)
            curves = read_curves(run_dir)
            runs.append(Run(run_dir, metrics, config, curves, read_transfer(run_dir)))
        for config_file in sorted(runs_dir.rglob("config.json")):
            if not (config_file.parent / "metrics.json").is_file():
                notes.append(f"{config_file.parent}: unfinished run (no metrics.json), left out")
    if not runs:
        where = ", ".join(map(str, runs_dirs))
        raise ConfigError(f"no finished runs (folders with a valid metrics.json) in {where}")
    datasets = sorted({run.dataset for run in runs})
    if len(datasets) > 1:
        raise ConfigError(
            f"the runs hold several data sets ({', '.join(datasets)}); "
            "report one data set's folders at a time"
        )
    runs.sort(key=lambda r: (r.variant, r.seed if r.seed is not None else -1, str(r.path)))
    notes += _consistency_notes(runs)
    return runs, notes


def _consistency_notes(runs: list[Run]) -> list[str]:
    """Notes on settings that differ between runs (they would be averaged or compared as if
    equal) and on variants with a seed run more than once. What tells variants apart (feature
    options, initial weights, and the epochs of runs that continue another) is no difference."""
    notes = []
    for key in GRID_IDENTITY:
        if key in ("model", "seed", "init_from", "model_options"):
            continue
        compared = [run for run in runs if key != "epochs" or not run.source]
        values = {json.dumps(run.config.get(key), sort_keys=True) for run in compared}
        if len(values) > 1:
            notes.append(f"runs differ in {key}: {', '.join(sorted(values))}")
    seen: dict[tuple[str, Any], int] = {}
    for run in runs:
        seen[(run.variant, run.seed)] = seen.get((run.variant, run.seed), 0) + 1
    for (variant, seed), count in seen.items():
        if count > 1:
            notes.append(f"{variant} has {count} runs with seed {seed}; all are averaged")
    return notes
