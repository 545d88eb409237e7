"""Finding finished runs under a folder and reading what they recorded (through
:class:`rpevit.runs.RunDir`).

A run folder is any folder holding a valid ``metrics.json`` (written by ``rpevit train`` /
``rpevit grid``); next to it ``config.json``, the CSV logs (one per start of training), and,
once ``rpevit evaluate RUN --image-size ...`` ran, ``evaluation.json`` with the
resolution-transfer results, and ``test_predictions.npz`` with the per-image test predictions
(runs trained before it was recorded lack it; ``rpevit evaluate RUN`` writes it).

Runs of one model are told apart by their *variant*: the model name, plus the model options
set explicitly (``ape=False``, ``rope_mode=mixed``, ...; the feature count as ``m=<m>``, a
random-feature ablation; recipe options only where they differ from their default) and
``from <model>`` when the weights were initialised from another run (``--init-from``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rpevit.errors import ConfigError
from rpevit.registry import RECIPE_OPTIONS
from rpevit.runs import (
    METRICS,
    PREDICTIONS,
    UNREADABLE,
    Metrics,
    Predictions,
    RunDir,
    finished_runs,
    unfinished_runs,
)
from rpevit.training.config import GRID_IDENTITY


@dataclass
class Run:
    """One finished run: where it is and what it recorded."""

    path: Path
    metrics: Metrics
    #: ``config.json`` as stored (the metrics' copy if the file is missing)
    config: dict[str, Any]
    curves: dict[int, dict[str, float]] = field(default_factory=dict)
    #: ``resolution_transfer`` record of the run's ``evaluation.json`` (None: not evaluated)
    transfer: dict[str, Any] | None = None
    #: model options chosen per kernel by tuning (e.g. ``frpe_terms``): not part of the variant
    tuned: tuple[str, ...] = ()

    @property
    def model(self) -> str:
        return str(self.metrics.model)

    @property
    def seed(self) -> int | None:
        return self.metrics.seed

    @property
    def dataset(self) -> str:
        return str(self.metrics.dataset or self.config.get("dataset"))

    @property
    def explicit_nb_features(self) -> int | None:
        """The feature count set in the run's options (None: the kernel's default)."""
        return (self.config.get("model_options") or {}).get("nb_features")

    @property
    def nb_features(self) -> int | None:
        """Features per head the kernel used (recorded at evaluation; else the option)."""
        return self.metrics.nb_features or self.explicit_nb_features

    @property
    def source(self) -> dict[str, Any] | None:
        """What the weights were initialised from (``--init-from``): model, path, epochs."""
        source = self.metrics.init_from
        return source if isinstance(source, dict) else None

    @property
    def epochs(self) -> int | None:
        """Epochs this run trained (not counting those of an ``--init-from`` source)."""
        return self.metrics.epochs or self.config.get("epochs")

    @property
    def family(self) -> str:
        """The model name plus its explicit options other than the feature count, the
        :attr:`tuned` ones and recipe options at their default
        (:data:`~rpevit.registry.RECIPE_OPTIONS`, recorded in every run), e.g.
        ``favor-rope ape=False``: the runs a feature-count ablation compares."""
        options = self.config.get("model_options") or {}
        kernel = self.model.partition("-")[0]
        defaults = RECIPE_OPTIONS.get(kernel, {})
        shown = [
            f"{k}={v}"
            for k, v in sorted(options.items())
            if k != "nb_features"
            and k not in self.tuned
            and not (k in defaults and v == defaults[k])
        ]
        return " ".join([self.model, *shown])

    @property
    def tuned_options(self) -> dict[str, Any]:
        """The run's values of the :attr:`tuned` options it set."""
        options = self.config.get("model_options") or {}
        return {k: options[k] for k in self.tuned if k in options}

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


def read_predictions(run: Run) -> tuple[Predictions | None, str | None]:
    """The run's ``test_predictions.npz``, or None and a short reason why it cannot be used
    (missing, unreadable, or its accuracy is not the one in metrics.json)."""
    folder = RunDir(run.path)
    if not folder.predictions_file.is_file():
        return None, f"no {PREDICTIONS}"
    try:
        predictions = folder.read_predictions()
    except UNREADABLE as error:
        return None, f"{PREDICTIONS} is unreadable ({error})"
    labels, predicted, log_prob = (
        predictions.labels,
        predictions.predicted,
        predictions.true_log_prob,
    )
    n = labels.size
    if n == 0 or labels.ndim != 1 or not predicted.shape == labels.shape == log_prob.shape:
        return None, f"{PREDICTIONS} holds empty arrays or arrays of different shapes"
    accuracy, recorded = float(predictions.correct.mean()), run.metrics.test_accuracy
    if abs(accuracy - recorded) * n > 0.5:  # more than half an image apart
        return None, (
            f"{PREDICTIONS} disagrees with {METRICS} (accuracy {accuracy:.4f} vs {recorded:.4f})"
        )
    return predictions, None


def read_curves(run_dir: Path) -> dict[int, dict[str, float]]:
    """Validation loss and accuracy per epoch (``{epoch: {"val_loss", "val_acc"}}``) from the
    CSV logs; a later log's value for an epoch replaces an earlier one (re-run after resume)."""
    logged = RunDir(run_dir).curves(by="epoch")
    curves: dict[int, dict[str, float]] = {}
    for column, key in (("val/loss", "val_loss"), ("val/acc", "val_acc")):
        for epoch, value in logged.get(column, {}).items():
            curves.setdefault(epoch, {})[key] = value
    return dict(sorted(curves.items()))


def load_runs(
    *runs_dirs: str | Path, tuned: Sequence[str] = (), by_epochs: bool = False
) -> tuple[list[Run], list[str]]:
    """Every finished run below the ``runs_dirs`` (sorted by model, seed) and notes on what was
    left out or looks inconsistent. Runs of several data sets raise ConfigError. ``tuned``:
    model options chosen per kernel by tuning (see :attr:`Run.tuned`). ``by_epochs``: the runs
    are grouped by their epochs (a budget study), so differing epochs and one seed at several
    budgets are no inconsistency."""
    if not runs_dirs:
        raise ConfigError("no runs folder given")
    runs, notes, seen = [], [], set()
    for runs_dir in map(Path, runs_dirs):
        if not runs_dir.is_dir():
            raise ConfigError(f"runs folder {runs_dir} does not exist")
        for folder in finished_runs(runs_dir):
            if (resolved := folder.path.resolve()) in seen:  # a folder reached twice
                continue
            seen.add(resolved)
            metrics = folder.read_metrics()
            if metrics is None:
                notes.append(f"{folder.path}: {METRICS} is incomplete or invalid, left out")
                continue
            config = folder.read_config()
            if config is None:
                config = dict(metrics.config or {})
            curves = read_curves(folder.path)
            transfer = folder.read_transfer()
            runs.append(Run(folder.path, metrics, config, curves, transfer, tuple(tuned)))
        for folder in unfinished_runs(runs_dir):
            notes.append(f"{folder.path}: unfinished run (no {METRICS}), left out")
    if not runs:
        where = ", ".join(map(str, runs_dirs))
        raise ConfigError(f"no finished runs (folders with a valid {METRICS}) in {where}")
    datasets = sorted({run.dataset for run in runs})
    if len(datasets) > 1:
        raise ConfigError(
            f"the runs hold several data sets ({', '.join(datasets)}); "
            "report one data set's folders at a time"
        )
    runs.sort(key=lambda r: (r.variant, r.seed if r.seed is not None else -1, str(r.path)))
    notes += _consistency_notes(runs, by_epochs)
    return runs, notes


def _consistency_notes(runs: list[Run], by_epochs: bool = False) -> list[str]:
    """Notes on settings that differ between runs (they would be averaged or compared as if
    equal) and on variants with a seed run more than once (per budget when ``by_epochs``). What
    tells variants apart (feature options, initial weights, and the epochs of runs that
    continue another) is no difference."""
    notes = []
    skipped = ("model", "seed", "init_from", "model_options", *(("epochs",) if by_epochs else ()))
    for key in GRID_IDENTITY:
        if key in skipped:
            continue
        compared = [run for run in runs if key != "epochs" or not run.source]
        values = {json.dumps(run.config.get(key), sort_keys=True) for run in compared}
        if len(values) > 1:
            notes.append(f"runs differ in {key}: {', '.join(sorted(values))}")
    options: dict[str, set[str]] = {}
    for run in runs:
        shown = json.dumps(run.config.get("model_options") or {}, sort_keys=True)
        options.setdefault(run.variant, set()).add(shown)
    for variant, values in options.items():
        if len(values) > 1:
            notes.append(f"runs of {variant} differ in model options: {', '.join(sorted(values))}")
    seen: dict[tuple[str, Any, Any], int] = {}
    for run in runs:
        key = (run.variant, run.seed, run.epochs if by_epochs else None)
        seen[key] = seen.get(key, 0) + 1
    for (variant, seed, epochs), count in seen.items():
        if count > 1:
            budget = "" if epochs is None else f" at {epochs} epochs"
            notes.append(f"{variant} has {count} runs with seed {seed}{budget}; all are averaged")
    return notes
