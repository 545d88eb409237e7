"""Finding finished runs under a folder and reading what they recorded.

A run folder is any folder holding a valid ``metrics.json`` (written by ``rpevit train`` /
``rpevit grid``); next to it ``config.json`` and Lightning's CSV logs, one
``logs/csv/version_<k>/metrics.csv`` per start of training (0: first, 1: first resume, ...).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rpevit.errors import ConfigError
from rpevit.experiments.grid import GRID_IDENTITY, read_metrics


@dataclass
class Run:
    """One finished run: where it is and what it recorded."""

    path: Path
    metrics: dict[str, Any]
    config: dict[str, Any]
    curves: dict[int, dict[str, float]] = field(default_factory=dict)

    @property
    def model(self) -> str:
        return str(self.metrics["model"])

    @property
    def seed(self) -> int | None:
        return self.metrics.get("seed")

    @property
    def dataset(self) -> str:
        return str(self.metrics.get("dataset") or self.config.get("dataset"))


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


def load_runs(runs_dir: str | Path) -> tuple[list[Run], list[str]]:
    """Every finished run below ``runs_dir`` (sorted by model, seed) and notes on what was
    left out or looks inconsistent. Runs of several data sets raise ConfigError."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise ConfigError(f"runs folder {runs_dir} does not exist")
    runs, notes = [], []
    for metrics_file in sorted(runs_dir.rglob("metrics.json")):
        run_dir = metrics_file.parent
        metrics = read_metrics(run_dir)
        if metrics is None:
            notes.append(f"{run_dir}: metrics.json is incomplete or invalid, left out")
            continue
        runs.append(Run(run_dir, metrics, _read_config(run_dir, metrics), read_curves(run_dir)))
    for config_file in sorted(runs_dir.rglob("config.json")):
        if not (config_file.parent / "metrics.json").is_file():
            notes.append(f"{config_file.parent}: unfinished run (no metrics.json), left out")
    if not runs:
        raise ConfigError(f"no finished runs (folders with a valid metrics.json) in {runs_dir}")
    datasets = sorted({run.dataset for run in runs})
    if len(datasets) > 1:
        raise ConfigError(
            f"{runs_dir} holds runs on several data sets ({', '.join(datasets)}); "
            "report one data set's folder at a time"
        )
    runs.sort(key=lambda r: (r.model, r.seed if r.seed is not None else -1, str(r.path)))
    notes += _consistency_notes(runs)
    return runs, notes


def _consistency_notes(runs: list[Run]) -> list[str]:
    """Notes on settings that differ between runs (they would be averaged or compared as if
    equal) and on models with a seed run more than once."""
    notes = []
    for key in GRID_IDENTITY:
        if key in ("model", "seed"):
            continue
        values = {json.dumps(run.config.get(key), sort_keys=True) for run in runs}
        if len(values) > 1:
            notes.append(f"runs differ in {key}: {', '.join(sorted(values))}")
    seen: dict[tuple[str, Any], int] = {}
    for run in runs:
        seen[(run.model, run.seed)] = seen.get((run.model, run.seed), 0) + 1
    for (model, seed), count in seen.items():
        if count > 1:
            notes.append(f"{model} has {count} runs with seed {seed}; all are averaged")
    return notes
