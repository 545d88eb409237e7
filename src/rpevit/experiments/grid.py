"""Train and evaluate a grid of model variants x seeds, resumably and shardably.

A grid lives in one folder, one run folder per (model, seed) and, in a random-feature
ablation (``nb_features=(16, 32, ...)``), per feature count m of the models that have one::

    <out>/<model>/seed<seed>/        a training run (config.json, checkpoints/, logs/, metrics.json)
    <out>/<model>/m<m>/seed<seed>/   the same with m features per head
    <out>/grid_summary.json          status of every run (grid_summary.shard-I-of-N.json per shard)

``init_from`` names one run or checkpoint for every run, or a grid folder of softmax runs: then
run ``<kernel>-<position>`` with seed ``s`` starts from ``<init_from>/softmax-<position>/seed<s>``
(train softmax first, then switch attention).

Re-running the same command skips finished runs (valid ``metrics.json``), resumes interrupted
ones from ``checkpoints/last.ckpt`` and starts the rest, so a crashed grid continues where it
stopped. ``shard=(i, n)`` takes every n-th run of the sorted run list, starting at the i-th
(1-based), so the n shards of a job array partition the grid exactly; ``run_grid_parallel``
runs such shards in worker processes on one machine.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import time
import traceback
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rpevit.errors import ConfigError, TrainingInterrupted
from rpevit.metrics import write_json_atomic
from rpevit.registry import (
    BACKBONE_OPTIONS,
    CORE_MODELS,
    KERNELS,
    POSITIONS,
    list_available_models,
    parse_model_name,
)
from rpevit.training import TrainConfig, resolve_config, train
from rpevit.training.config import RUN_IDENTITY
from rpevit.training.run import CHECKPOINT_DIR, LAST

#: Config fields that must agree between an existing run folder and the grid's config: the run
#: identity, the training length and the initial weights (a finished shorter run, or one
#: trained from scratch, is not the requested result).
GRID_IDENTITY = (*RUN_IDENTITY, "epochs", "min_steps", "max_steps", "init_from")


@dataclass(frozen=True)
class GridRun:
    """One cell of the grid: a model variant trained with one seed (and, in a random-feature
    ablation, ``nb_features`` features per head; None: the model's default)."""

    model: str
    seed: int
    nb_features: int | None = None

    @property
    def folder(self) -> Path:
        """``<model>`` or ``<model>/m<m>``: where the run's seeds live below the grid folder."""
        return Path(self.model) / (f"m{self.nb_features}" if self.nb_features else "")

    @property
    def name(self) -> str:
        return f"{self.folder.as_posix()}/seed{self.seed}"

    def __lt__(self, other: GridRun) -> bool:
        """Order by model, feature count (default first), seed."""
        return (self.model, self.nb_features or 0, self.seed) < (
            other.model,
            other.nb_features or 0,
            other.seed,
        )


def takes_feature_count(model: str, options: Mapping[str, Any]) -> bool:
    """Whether ``model``'s kernel has a feature count to vary: FAVOR+, learnable, and ReLU with
    a learned projection (identity ReLU has m = head_dim, EXP m = d; softmax, Linformer none)."""
    kernel, _ = parse_model_name(model)
    if kernel == "relu":
        return options.get("feature_projection") == "learned"
    return "nb_features" in KERNELS[kernel][1]


def plan_grid(
    models: Sequence[str],
    seeds: Sequence[int],
    nb_features: Sequence[int] = (),
    options: Mapping[str, Any] | None = None,
) -> list[GridRun]:
    """Every (model, seed) pair, and for models with a feature count every m of
    ``nb_features``, sorted, without duplicates; unknown models raise ConfigError."""
    available = list_available_models()
    unknown = [m for m in models if m not in available]
    if unknown:
        raise ConfigError(
            f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(available)}"
        )
    if not models or not seeds:
        raise ConfigError("a grid needs at least one model and one seed")
    bad = [m for m in nb_features if m < 1]
    if bad:
        raise ConfigError(f"feature counts must be >= 1, got {', '.join(map(str, bad))}")
    options = options or {}
    if nb_features and not any(takes_feature_count(m, options) for m in models):
        raise ConfigError(
            "--nb-features applies to none of the models; a feature-count ablation needs "
            "favor-*, learnable-* or relu-* with --option feature_projection=learned"
        )
    runs = {
        GridRun(model, int(seed), m)
        for model in models
        for seed in seeds
        for m in (nb_features if nb_features and takes_feature_count(model, options) else [None])
    }
    return sorted(runs)


def shard_runs(runs: Sequence[GridRun], index: int, count: int) -> list[GridRun]:
    """The ``index``-th (1-based) of ``count`` round-robin slices of the sorted run list."""
    if not 1 <= index <= count:
        raise ConfigError(f"shard {index}/{count}: need 1 <= I <= N")
    return sorted(runs)[index - 1 :: count]


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` (1-based, e.g. ``2/4``) -> ``(I, N)``."""
    index, sep, count = text.partition("/")
    try:
        shard = int(index), int(count)
    except ValueError:
        shard = None
    if not sep or shard is None or not 1 <= shard[0] <= shard[1]:
        raise ConfigError(f"--shard expects I/N with 1 <= I <= N (e.g. 1/4), got {text!r}")
    return shard


def run_folder(out: Path, run: GridRun) -> Path:
    """``<out>/<model>/seed<seed>`` (``<out>/<model>/m<m>/seed<seed>`` in an ablation)."""
    return out / run.folder / f"seed{run.seed}"


def is_grid_folder(path: str | Path) -> bool:
    """A grid's folder (has a grid summary) rather than one run or checkpoint."""
    return Path(path).is_dir() and any(Path(path).glob("grid_summary*.json"))


def init_source(init_from: str | None, run: GridRun) -> str | None:
    """Where ``run`` takes its initial weights: ``init_from`` itself, or for a grid folder its
    softmax run with the same position encoding and seed."""
    if not init_from or not is_grid_folder(init_from):
        return init_from
    _, position = parse_model_name(run.model)
    source = Path(init_from) / f"softmax-{position}" / f"seed{run.seed}"
    if read_metrics(source) is None:
        raise ConfigError(
            f"--init-from {init_from} is a grid folder without a finished softmax-{position} "
            f"run for seed {run.seed} (looked for {source}); train it first, e.g. `rpevit grid "
            f"--models softmax-{position} --seeds {run.seed} --out {init_from}`"
        )
    return str(source)


def options_for(model: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The model options that apply to ``model`` (e.g. ``rope_mode`` only to RoPE variants,
    ``nb_features`` only to linear kernels), so one set of options can serve a whole grid."""
    kernel, position = parse_model_name(model)
    keys = {*BACKBONE_OPTIONS, *KERNELS[kernel][1], *POSITIONS[position][1]}
    return {key: value for key, value in options.items() if key in keys}


def run_config(base: TrainConfig, run: GridRun, out: Path) -> TrainConfig:
    """The training config of one run: ``base`` with the run's model, seed, folder, initial
    weights, feature count and the model options that apply to it."""
    options = options_for(run.model, base.model_options)
    if run.nb_features:
        options["nb_features"] = run.nb_features
    return dataclasses.replace(
        base,
        model=run.model,
        seed=run.seed,
        out=str(out / run.folder),
        run_name=f"seed{run.seed}",
        resume=None,
        init_from=init_source(base.init_from, run),
        model_options=options,
    )


def read_metrics(run_dir: Path, run: GridRun | None = None) -> dict[str, Any] | None:
    """The run's ``metrics.json`` if it is a complete result (of ``run``, if given), else None."""
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(metrics, dict) or not isinstance(metrics.get("test_accuracy"), float):
        return None
    if run is not None and (metrics.get("model"), metrics.get("seed")) != (run.model, run.seed):
        return None
    return metrics


def _stored_config(run_dir: Path) -> dict[str, Any] | None:
    try:
        stored = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return stored if isinstance(stored, dict) else None


def config_mismatch(run_dir: Path, config: TrainConfig) -> list[str]:
    """Grid-identity fields in which an existing run folder differs from ``config``."""
    stored = _stored_config(run_dir)
    if stored is None:
        return []
    if stored.get("requested_epochs") is not None:  # compare the request, not what
        stored = {**stored, "epochs": stored["requested_epochs"]}  # --min-steps made of it
    current = config.to_dict()
    return [
        f"{key}: {stored[key]!r} in the folder, {current[key]!r} now"
        for key in GRID_IDENTITY
        if key in stored and stored[key] != current[key]
    ]


def run_state(run_dir: Path, run: GridRun) -> str:
    """``finished`` (valid metrics), ``partial`` (has last.ckpt) or ``pending``."""
    if read_metrics(run_dir, run) is not None:
        return "finished"
    if (run_dir / CHECKPOINT_DIR / LAST).is_file():
        return "partial"
    return "pending"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def summary_path(out: Path, shard: tuple[int, int] | None) -> Path:
    """``grid_summary.json``, or one file per shard so parallel shards never overwrite."""
    if shard is None:
        return out / "grid_summary.json"
    return out / f"grid_summary.shard-{shard[0]}-of-{shard[1]}.json"


def run_grid(
    config: TrainConfig | Mapping[str, Any],
    *,
    models: Sequence[str] | None = None,
    seeds: Sequence[int] = (42,),
    out: str | Path | None = None,
    shard: tuple[int, int] | None = None,
    nb_features: Sequence[int] = (),
) -> dict[str, Any]:
    """Train and evaluate every ``models`` x ``seeds`` run (default: the 12 core variants, seed 42),
    and with ``nb_features`` every feature count for the models that have one (an ablation).

    ``config`` holds everything else (data set, preset, sizes, epochs, ...); its ``model``,
    ``seed``, ``run_name`` and ``resume`` are set per run, and ``overwrite=True`` retrains
    every selected run from scratch. Finished runs are skipped, interrupted ones resumed.
    A run that fails is recorded and the grid goes on; an interrupted one
    (signal, Ctrl+C) stops the grid. Returns the summary also written to
    :func:`summary_path` (atomically, after every run).
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

    start = time.perf_counter()
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
    summary: dict[str, Any] = {
        "dataset": base.dataset,
        "preset": base.preset,
        "out": str(out),
        "models": sorted(set(models)),
        "seeds": sorted({int(s) for s in seeds}),
        "nb_features": sorted({int(m) for m in nb_features}),
        "shard": list(shard) if shard else None,
        "started": _now(),
        "base_config": {
            k: v for k, v in base.to_dict().items() if k not in ("model", "seed", "run_name")
        },
    }

    def save() -> None:
        summary["updated"] = _now()
        summary["elapsed_seconds"] = time.perf_counter() - start
        summary["runs"] = [records[run] for run in runs]
        counts: dict[str, int] = {}
        for record in summary["runs"]:
            counts[record["status"]] = counts.get(record["status"], 0) + 1
        summary["counts"] = counts
        write_json_atomic(summary_path(out, shard), summary)

    shard_note = f" (shard {shard[0]}/{shard[1]} of {len(runs)} runs)" if shard else ""
    print(f"grid {out}: {len(selected)} runs{shard_note}, {base.dataset}, preset {base.preset}")
    trained_seconds: list[float] = []
    for k, run in enumerate(selected, 1):
        cfg, record = configs[run], records[run]
        head = f"[{k}/{len(selected)}] {run.name}"
        state = "pending" if cfg.overwrite else run_state(cfg.run_dir, run)
        if state == "finished":
            metrics = read_metrics(cfg.run_dir, run) or {}
            record.update(
                status="finished",
                test_accuracy=metrics["test_accuracy"],
                val_accuracy=metrics.get("val_accuracy"),
            )
            print(f"{head}: already finished (test acc {metrics['test_accuracy']:.4f}), skipped")
            continue
        if state == "partial":
            cfg = dataclasses.replace(cfg, resume=True)
        elif cfg.run_dir.exists():  # checkpoints without last.ckpt: nothing to resume from
            cfg = dataclasses.replace(cfg, overwrite=True)
        remaining = len(selected) - k + 1
        eta = (
            f", ~{_duration(remaining * sum(trained_seconds) / len(trained_seconds))} left"
            if trained_seconds
            else ""
        )
        print(
            f"{head}: {'resuming' if state == 'partial' else 'training'} "
            f"(elapsed {_duration(time.perf_counter() - start)}{eta})",
            flush=True,
        )
        record.update(status="running", started=_now())
        save()
        run_start = time.perf_counter()
        try:
            metrics = train(cfg)
        except TrainingInterrupted:  # SIGINT/SIGTERM: a resumable checkpoint was saved
            record.update(status="interrupted")
            save()
            raise
        except Exception as error:  # one failed run must not stop the grid
            traceback.print_exc()
            record.update(status="failed", error=f"{type(error).__name__}: {error}")
            print(f"{head}: FAILED ({type(error).__name__}: {error})", flush=True)
            save()
            continue
        except BaseException:  # Ctrl+C, SystemExit: stop, leaving a resumable run behind
            record.update(status="interrupted")
            save()
            raise
        seconds = time.perf_counter() - run_start
        trained_seconds.append(seconds)
        record.update(
            status="finished",
            resumed=state == "partial",
            seconds=seconds,
            test_accuracy=metrics.get("test_accuracy"),
            val_accuracy=metrics.get("val_accuracy"),
        )
        print(
            f"{head}: done in {_duration(seconds)}, test acc {metrics['test_accuracy']:.4f}, "
            f"val acc {metrics['val_accuracy']:.4f} "
            f"(elapsed {_duration(time.perf_counter() - start)})",
            flush=True,
        )
        save()
    save()
    counts = summary["counts"]
    print(
        f"grid {out}: {counts.get('finished', 0)}/{len(runs)} runs finished"
        + (f", {counts['failed']} failed" if counts.get("failed") else "")
        + f"; summary in {summary_path(out, shard)}"
    )
    return summary


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


def _run_shard(config: TrainConfig, models, seeds, out, shard, nb_features) -> dict[str, Any]:
    return run_grid(
        config, models=models, seeds=seeds, out=out, shard=shard, nb_features=nb_features
    )


def run_grid_parallel(
    config: TrainConfig | Mapping[str, Any],
    *,
    jobs: int,
    models: Sequence[str] | None = None,
    seeds: Sequence[int] = (42,),
    out: str | Path | None = None,
    nb_features: Sequence[int] = (),
) -> dict[str, Any]:
    """:func:`run_grid` split into ``jobs`` shards run by parallel worker processes, each with
    ``cpu_count // jobs`` threads unless ``config.threads`` is set. Returns the merged summary
    (also written as ``grid_summary.json``)."""
    base = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
    if base.threads is None:
        base = dataclasses.replace(base, threads=max(1, (os.cpu_count() or 1) // jobs))
    out = Path(out) if out is not None else Path("runs") / f"grid-{base.dataset}-{base.preset}"
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        futures = [
            pool.submit(_run_shard, base, models, seeds, out, (i, jobs), nb_features)
            for i in range(1, jobs + 1)
        ]
        shards = [future.result() for future in futures]
    runs = sorted(
        (r for s in shards for r in s["runs"] if r["selected"]),
        key=lambda r: (r["model"], r["nb_features"] or 0, r["seed"]),
    )
    counts: dict[str, int] = {}
    for record in runs:
        counts[record["status"]] = counts.get(record["status"], 0) + 1
    merged = {**shards[0], "shard": None, "jobs": jobs, "runs": runs, "counts": counts}
    merged["elapsed_seconds"] = max(s["elapsed_seconds"] for s in shards)
    write_json_atomic(summary_path(out, None), merged)
    return merged
