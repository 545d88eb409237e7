"""The runs of a grid: which (model, seed, feature count) cells, in which shard, in which
folder, and each run's training config.

A grid lives in one folder, one run folder per (model, seed) and, in a random-feature
ablation (``nb_features=(16, 32, ...)``), per feature count m of the models that have one::

    <out>/<model>/seed<seed>/        a training run (rpevit.runs.RunDir)
    <out>/<model>/m<m>/seed<seed>/   the same with m features per head

``init_from`` names one run or checkpoint for every run, or a grid folder of softmax runs: then
run ``<kernel>-<position>`` with seed ``s`` starts from ``<init_from>/softmax-<position>/seed<s>``
(train softmax first, then switch attention). ``shard=(i, n)`` takes every n-th run of the
sorted run list, starting at the i-th (1-based), so the n shards of a job array partition the
grid exactly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rpevit.errors import ConfigError
from rpevit.registry import (
    BACKBONE_OPTIONS,
    KERNELS,
    POSITIONS,
    list_available_models,
    parse_model_name,
)
from rpevit.runs import RunDir, is_grid_folder
from rpevit.training.config import TrainConfig


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


def init_source(init_from: str | None, run: GridRun) -> str | None:
    """Where ``run`` takes its initial weights: ``init_from`` itself, or for a grid folder its
    softmax run with the same position encoding and seed."""
    if not init_from or not is_grid_folder(init_from):
        return init_from
    _, position = parse_model_name(run.model)
    source = Path(init_from) / f"softmax-{position}" / f"seed{run.seed}"
    if RunDir(source).read_metrics() is None:
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
