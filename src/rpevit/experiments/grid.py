"""Train and evaluate a grid of model variants x seeds (:mod:`rpevit.experiments.plan`),
resumably and shardably.

Besides the run folders, a grid folder holds ``grid_summary.json``: the status of every run
(one ``grid_summary.shard-I-of-N.json`` per shard). Re-running the same command skips finished
runs (valid metrics), resumes interrupted ones from their last checkpoint and starts the rest,
so a crashed grid continues where it stopped. :mod:`rpevit.experiments.parallel` runs shards in
worker processes on one machine.
"""

from __future__ import annotations

import dataclasses
import os
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rpevit.errors import ConfigError, TrainingInterrupted
from rpevit.experiments.plan import (
    GridRun,
    options_for,
    plan_grid,
    run_config,
    run_folder,
    shard_runs,
)
from rpevit.experiments.summary import GridSummary, duration, now
from rpevit.registry import CORE_MODELS
from rpevit.runs import METRICS, RunDir, RunState, summary_path
from rpevit.training import TrainConfig, resolve_config, train
from rpevit.training.config import GRID_IDENTITY, identity_mismatch


def config_mismatch(run_dir: Path, config: TrainConfig) -> list[str]:
    """Grid-identity fields in which an existing run folder differs from ``config``."""
    stored = RunDir(run_dir).read_config()
    if stored is None:
        return []
    if stored.get("requested_epochs") is not None:  # compare the request, not what
        stored = {**stored, "epochs": stored["requested_epochs"]}  # --min-steps made of it
    return identity_mismatch(stored, config, GRID_IDENTITY, "folder")


def run_state(run_dir: Path, run: GridRun) -> RunState:
    """``finished`` (valid metrics of ``run``), ``partial`` (has last.ckpt) or ``pending``."""
    return RunDir(run_dir).state(run.model, run.seed)


def restore_records(records: Path, out: Path, runs: Sequence[GridRun]) -> list[GridRun]:
    """Copy the records of runs finished elsewhere (``records/<run name>/``, with a valid
    metrics.json) into ``out`` where that run's folder does not exist yet, so the grid skips
    them (their config is then checked like any run folder's); return the restored runs."""
    restored = []
    for run in runs:
        source, target = RunDir(records / run.name), run_folder(out, run)
        if not target.exists() and source.read_metrics(run.model, run.seed) is not None:
            source.copy_records(target)
            restored.append(run)
    return restored


def run_one(
    cfg: TrainConfig,
    run: GridRun,
    summary: GridSummary,
    head: str,
    remaining: int,
    records: Path | None = None,
) -> None:
    """Skip, resume or train one run of the grid (``remaining`` runs left, this one included),
    recording the outcome in ``summary`` and, with ``records``, copying a finished run's
    records (no checkpoints) to ``records/<run name>/``; a failed run is recorded and
    returns, an interrupted one (signal, Ctrl+C) re-raises."""
    state = "pending" if cfg.overwrite else run_state(cfg.run_dir, run)
    if state == "finished":
        metrics = RunDir(cfg.run_dir).read_metrics(run.model, run.seed)
        assert metrics is not None
        if records is not None and not (records / run.name / METRICS).is_file():
            RunDir(cfg.run_dir).copy_records(records / run.name)
        summary.records[run].update(
            status="finished",
            test_accuracy=metrics.test_accuracy,
            val_accuracy=metrics.val_accuracy,
        )
        print(f"{head}: already finished (test acc {metrics.test_accuracy:.4f}), skipped")
        return
    if state == "partial":
        cfg = dataclasses.replace(cfg, resume=True)
    elif cfg.run_dir.exists():  # checkpoints without last.ckpt: nothing to resume from
        cfg = dataclasses.replace(cfg, overwrite=True)
    print(
        f"{head}: {'resuming' if state == 'partial' else 'training'} "
        f"(elapsed {summary.elapsed()}{summary.time_left(remaining)})",
        flush=True,
    )
    summary.update(run, status="running", started=now())
    run_start = time.perf_counter()
    try:
        metrics = train(cfg)
    except TrainingInterrupted:  # SIGINT/SIGTERM: a resumable checkpoint was saved
        summary.update(run, status="interrupted")
        raise
    except Exception as error:  # one failed run must not stop the grid
        traceback.print_exc()
        summary.records[run].update(status="failed", error=f"{type(error).__name__}: {error}")
        print(f"{head}: FAILED ({type(error).__name__}: {error})", flush=True)
        summary.save()
        return
    except BaseException:  # Ctrl+C, SystemExit: stop, leaving a resumable run behind
        summary.update(run, status="interrupted")
        raise
    seconds = time.perf_counter() - run_start
    if records is not None:
        RunDir(cfg.run_dir).copy_records(records / run.name)
    if state != "partial":  # a resumed run's time covers only its last part: not a run's cost
        summary.trained_seconds.append(seconds)
    summary.records[run].update(
        status="finished",
        resumed=state == "partial",
        seconds=seconds,
        test_accuracy=metrics.get("test_accuracy"),
        val_accuracy=metrics.get("val_accuracy"),
    )
    print(
        f"{head}: done in {duration(seconds)}, test acc {metrics['test_accuracy']:.4f}, "
        f"val acc {metrics['val_accuracy']:.4f} (elapsed {summary.elapsed()})",
        flush=True,
    )
    summary.save()


def run_grid(
    config: TrainConfig | Mapping[str, Any],
    *,
    models: Sequence[str] | None = None,
    seeds: Sequence[int] = (42,),
    out: str | Path | None = None,
    shard: tuple[int, int] | None = None,
    nb_features: Sequence[int] = (),
    records: str | Path | None = None,
) -> dict[str, Any]:
    """Train and evaluate every ``models`` x ``seeds`` run (default: the 12 core variants, seed 42),
    and with ``nb_features`` every feature count for the models that have one (an ablation).
    With ``records`` (a folder, e.g. in the repository), every finished run's records are
    copied there and runs whose records are there count as finished (:func:`restore_records`),
    so a grid longer than one machine's session continues on another.

    ``config`` holds everything else (data set, preset, sizes, epochs, ...); its ``model``,
    ``seed``, ``run_name`` and ``resume`` are set per run, and ``overwrite=True`` retrains
    every selected run from scratch. Finished runs are skipped, interrupted ones resumed.
    A run that fails is recorded and the grid goes on; an interrupted one
    (signal, Ctrl+C) stops the grid. Returns the summary also written to
    :func:`~rpevit.runs.summary_path` (atomically, after every run).
    """
    base = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
    models = list(models) if models else list(CORE_MODELS)
    out = Path(out) if out is not None else Path("runs") / f"grid-{base.dataset}-{base.preset}"
    if nb_features and "nb_features" in base.model_options:
        raise ConfigError(
            "nb_features is set twice (a grid list and a model option); use the grid list"
        )
    runs = plan_grid(models, seeds, nb_features, base.model_options)
    unused = set(base.model_options).difference(
        *(options_for(m, base.model_options) for m in models)
    )
    if unused:
        raise ConfigError(f"option(s) {', '.join(sorted(unused))} apply to none of the models")
    selected = shard_runs(runs, *shard) if shard else runs
    records_dir = Path(records) if records is not None else None
    if records_dir is not None and not base.overwrite:
        restored = restore_records(records_dir, out, selected)
        if restored:
            print(f"grid {out}: {len(restored)} finished run(s) restored from {records_dir}")
    configs = {run: resolve_config(run_config(base, run, out)) for run in selected}
    conflicts = [
        f"{run.name} ({'; '.join(diff)})"
        for run, cfg in configs.items()
        if not cfg.overwrite and (diff := config_mismatch(cfg.run_dir, cfg))
    ]
    if conflicts:
        raise ConfigError(
            f"{out} holds runs with another configuration: {', '.join(conflicts)}; "
            "choose another --out, or pass --overwrite to retrain them"
        )

    records = {
        run: {
            "model": run.model,
            "seed": run.seed,
            "nb_features": run.nb_features,
            "run_dir": str(run_folder(out, run)),
            "selected": run in configs,
            "status": run_state(run_folder(out, run), run),
        }
        for run in runs
    }
    header = {
        "dataset": base.dataset,
        "preset": base.preset,
        "out": str(out),
        "models": sorted(set(models)),
        "seeds": sorted({int(s) for s in seeds}),
        "nb_features": sorted({int(m) for m in nb_features}),
        "shard": list(shard) if shard else None,
        "started": now(),
        "base_config": {
            k: v for k, v in base.to_dict().items() if k not in ("model", "seed", "run_name")
        },
    }
    summary = GridSummary(summary_path(out, shard), header, records)
    shard_note = f" (shard {shard[0]}/{shard[1]} of {len(runs)} runs)" if shard else ""
    print(f"grid {out}: {len(selected)} runs{shard_note}, {base.dataset}, preset {base.preset}")
    for k, run in enumerate(selected, 1):
        head = f"[{k}/{len(selected)}] {run.name}"
        run_one(configs[run], run, summary, head, len(selected) - k + 1, records_dir)
    final = summary.save()
    tally = final["counts"]
    print(
        f"grid {out}: {tally.get('finished', 0)}/{len(runs)} runs finished"
        + (f", {tally['failed']} failed" if tally.get("failed") else "")
        + f"; summary in {summary.path}"
    )
    return final


def default_jobs(config: TrainConfig, runs: int) -> int:
    """Parallel grid workers for ``--jobs auto``: one single-threaded worker per CPU core on a
    CPU-only machine (small models do not scale across threads, runs do), else one."""
    import torch

    on_cpu = config.accelerator == "cpu" or (
        config.accelerator == "auto" and not torch.cuda.is_available()
    )
    if not on_cpu or config.strategy not in ("auto", "single_device"):
        return 1
    return max(1, min(os.cpu_count() or 1, runs))
