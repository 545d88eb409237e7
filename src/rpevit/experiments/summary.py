"""A grid's progress record: ``grid_summary.json`` (status of every run, timings, counts),
saved atomically on every change, and the time formatting of the grid's progress lines."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rpevit.atomic import write_json_atomic
from rpevit.experiments.plan import GridRun


def duration(seconds: float) -> str:
    """``MmSSs`` or ``HhMMmSSs``."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def now() -> str:
    """The current UTC time, ISO 8601, to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def counts(records: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Runs per status."""
    counts: dict[str, int] = {}
    for record in records:
        counts[record["status"]] = counts.get(record["status"], 0) + 1
    return counts


@dataclass
class GridSummary:
    """The state of every run of a grid (shard), saved atomically to ``path`` on each change."""

    path: Path
    #: the grid's settings: dataset, preset, out, models, seeds, ..., ``started``
    header: dict[str, Any]
    records: dict[GridRun, dict[str, Any]]
    start: float = field(default_factory=time.perf_counter)
    #: wall time of every run trained from scratch so far, for the estimate of the time left
    trained_seconds: list[float] = field(default_factory=list)

    def elapsed(self) -> str:
        return duration(time.perf_counter() - self.start)

    def time_left(self, remaining: int) -> str:
        """``, ~<time> left`` for ``remaining`` runs at the mean time per run so far."""
        if not self.trained_seconds:
            return ""
        mean = sum(self.trained_seconds) / len(self.trained_seconds)
        return f", ~{duration(remaining * mean)} left"

    def update(self, run: GridRun, **fields: Any) -> None:
        """Record new facts about ``run`` and save."""
        self.records[run].update(fields)
        self.save()

    def save(self) -> dict[str, Any]:
        """Write the summary (header, timings, every run, counts per status); return it."""
        runs = list(self.records.values())
        summary = {
            **self.header,
            "updated": now(),
            "elapsed_seconds": time.perf_counter() - self.start,
            "runs": runs,
            "counts": counts(runs),
        }
        write_json_atomic(self.path, summary)
        return summary
