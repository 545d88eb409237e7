"""Grids in parallel worker processes on one machine: one grid split into shards
(:func:`run_grid_parallel`), or several grids with different settings sharing the workers
(:func:`run_grids_parallel`, e.g. a tuning sweep of one-run grids), so no core idles while
another grid still has runs."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rpevit.atomic import write_json_atomic
from rpevit.experiments.grid import run_grid
from rpevit.experiments.plan import plan_grid
from rpevit.experiments.summary import counts
from rpevit.registry import CORE_MODELS
from rpevit.runs import summary_path
from rpevit.training import TrainConfig


@dataclass(frozen=True)
class GridSpec:
    """One grid: the base config (data, preset, epochs, optimiser, model options), its models
    and seeds, its folder and, optionally, the records folder (see :func:`run_grid`)."""

    config: TrainConfig
    models: tuple[str, ...]
    seeds: tuple[int, ...]
    out: Path
    records: Path | None = None
    nb_features: tuple[int, ...] = ()

    @property
    def size(self) -> int:
        """The number of runs in the grid."""
        return len(plan_grid(self.models, self.seeds, self.nb_features, self.config.model_options))


#: Set in a grid worker while it runs its shard (see :func:`_stop_with_parent`).
_SHARD_RUNNING = threading.Event()
#: Set in a grid worker once its parent is gone: it takes no further shard from the queue.
_ORPHANED = threading.Event()


def _stop_with_parent(parent: int) -> None:
    """Worker start: once the grid's parent process is gone (killed by SIGTERM or SIGKILL), stop
    the shard as ``kill`` would (SIGTERM: checkpoint at the next step) and exit, instead of
    training on as an orphan, taking the shards still queued (:func:`run_grids_parallel` queues
    more than there are workers), or waiting forever for the next shard."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        _ORPHANED.set()
        if _SHARD_RUNNING.is_set():
            os.kill(os.getpid(), signal.SIGTERM)
            while _SHARD_RUNNING.is_set():
                time.sleep(0.1)
        os._exit(128 + signal.SIGTERM)

    threading.Thread(target=watch, name="stop-with-parent", daemon=True).start()


def _run_shard(spec: GridSpec, shard: tuple[int, int]) -> dict[str, Any]:
    if _ORPHANED.is_set():  # a shard queued before the parent died: nobody wants its result
        os._exit(128 + signal.SIGTERM)
    _SHARD_RUNNING.set()
    try:
        return run_grid(
            spec.config,
            models=spec.models,
            seeds=spec.seeds,
            out=spec.out,
            shard=shard,
            nb_features=spec.nb_features,
            records=spec.records,
        )
    finally:
        _SHARD_RUNNING.clear()


def _merge(spec: GridSpec, shards: list[dict[str, Any]], jobs: int) -> dict[str, Any]:
    """One grid's shard summaries as one ``grid_summary.json`` (written atomically)."""
    runs = sorted(
        (r for s in shards for r in s["runs"] if r["selected"]),
        key=lambda r: (r["model"], r["nb_features"] or 0, r["seed"]),
    )
    merged = {**shards[0], "shard": None, "jobs": jobs, "runs": runs, "counts": counts(runs)}
    merged["elapsed_seconds"] = max(s["elapsed_seconds"] for s in shards)
    write_json_atomic(summary_path(spec.out, None), merged)
    return merged


def run_grids_parallel(specs: Sequence[GridSpec], jobs: int) -> list[dict[str, Any]]:
    """Every run of ``specs`` by ``jobs`` worker processes: each grid is split into
    ``min(jobs, its runs)`` shards, queued grid after grid, so the workers move on to the next
    grid's shards while a grid finishes. A config without ``threads`` gets
    ``cpu_count // jobs`` threads per worker. Returns each grid's merged summary, in order."""
    threads = max(1, (os.cpu_count() or 1) // jobs)
    specs = [
        spec
        if spec.config.threads is not None
        else dataclasses.replace(spec, config=dataclasses.replace(spec.config, threads=threads))
        for spec in specs
    ]
    tasks = [(k, (i, n)) for k, spec in enumerate(specs) for n in [min(jobs, spec.size)]
             for i in range(1, n + 1)]  # fmt: skip
    with ProcessPoolExecutor(
        max_workers=jobs,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_stop_with_parent,
        initargs=(os.getpid(),),
    ) as pool:
        futures = [(k, pool.submit(_run_shard, specs[k], shard)) for k, shard in tasks]
        shards: list[list[dict[str, Any]]] = [[] for _ in specs]
        for k, future in futures:
            shards[k].append(future.result())
    return [_merge(spec, found, jobs) for spec, found in zip(specs, shards, strict=True)]


def run_grid_parallel(
    config: TrainConfig | Mapping[str, Any],
    *,
    jobs: int,
    models: Sequence[str] | None = None,
    seeds: Sequence[int] = (42,),
    out: str | Path | None = None,
    nb_features: Sequence[int] = (),
    records: str | Path | None = None,
) -> dict[str, Any]:
    """:func:`~rpevit.experiments.grid.run_grid` split into ``jobs`` shards run by parallel
    worker processes (see :func:`run_grids_parallel`). Returns the merged summary (also written
    as ``grid_summary.json``)."""
    base = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
    out = Path(out) if out is not None else Path("runs") / f"grid-{base.dataset}-{base.preset}"
    spec = GridSpec(
        base,
        tuple(models or CORE_MODELS),
        tuple(int(s) for s in seeds),
        out,
        Path(records) if records is not None else None,
        tuple(nb_features),
    )
    return run_grids_parallel([spec], jobs)[0]
