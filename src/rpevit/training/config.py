"""Training configuration: the run config's sections, presets per data set, validation.

Each field is declared once, in its section, with its command-line option. Fields left as
None are filled from the preset for the data set; explicit values always win. The resolved
config is what a run records (``config.json``, checkpoints, ``metrics.json``), so a run can be
repeated from it alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

import torch

from rpevit.config import Section, setting
from rpevit.data import get_spec, list_datasets
from rpevit.data.config import DataConfig
from rpevit.errors import ConfigError
from rpevit.registry import RECIPE_OPTIONS, parse_model_name
from rpevit.runs import LAST
from rpevit.training.module import build_model
from rpevit.training.precision import PRECISIONS
from rpevit.training.presets import MIN_STEPS, PRESETS

S = TypeVar("S", bound=Section)


#: Fields that define the model or the data a checkpoint was trained on: resuming with a
#: different value would silently train something else.
RUN_IDENTITY = (
    "model",
    "dataset",
    "patch_size",
    "dim",
    "depth",
    "heads",
    "mlp_dim",
    "model_options",
    "seed",
    "split_seed",
    "batch_size",
    "max_train_samples",
    "image_size",
    "in_chans",
)

#: Config fields that must agree between an existing run folder and the grid's config, and
#: between runs averaged in a report: the run identity, the training length and the initial
#: weights (a finished shorter run, or one trained from scratch, is not the requested result).
GRID_IDENTITY = (*RUN_IDENTITY, "epochs", "min_steps", "max_steps", "init_from")


def parse_devices(text: str) -> int | str | list[int]:
    """``auto``, a count (``2``) or a comma-separated list of device ids (``0,1``)."""
    if text == "auto":
        return text
    try:
        return [int(d) for d in text.split(",") if d] if "," in text else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected 'auto', a count or ids like 0,1: {text!r}"
        ) from None


@dataclass
class TaskConfig(Section):
    """Which model to train on which data set, and the preset that fills unset fields."""

    TITLE = "what to train"

    model: str | None = setting(help="model name, e.g. relu-ape, favor-rope (see `rpevit models`)")
    dataset: str = setting("mnist", f"one of {', '.join(list_datasets())}")
    preset: str = setting("paper", f"one of {', '.join(PRESETS)}; quick is sized for a CPU")


@dataclass
class ModelConfig(Section):
    """The architecture: sizes (None: from the preset) and further model options."""

    TITLE = "architecture (default: from the preset)"

    patch_size: int | None = setting(help="patch side in pixels (must divide the image size)")
    dim: int | None = setting(help="token width")
    depth: int | None = setting(help="transformer blocks")
    heads: int | None = setting(help="attention heads (must divide dim)")
    mlp_dim: int | None = setting(help="hidden width of each block's MLP")
    #: further ``create_model`` options: nb_features, redraw_interval, redraw_stop, qk_norm,
    #: pool, ape, dropout, feature_projection, rpe_method, rope_mode, ... (None values are
    #: dropped; the kernel's RECIPE_OPTIONS are always recorded)
    model_options: dict[str, Any] = setting(factory=dict, cli=False)

    def model_kwargs(self, num_classes: int, in_chans: int, image_size: int) -> dict[str, Any]:
        """Keyword arguments for :func:`rpevit.create_model` (plain values, checkpoint-safe)."""
        return dict(
            image_size=image_size,
            in_chans=in_chans,
            num_classes=num_classes,
            patch_size=self.patch_size,
            dim=self.dim,
            depth=self.depth,
            heads=self.heads,
            mlp_dim=self.mlp_dim,
            **{k: v for k, v in self.model_options.items() if v is not None},
        )


@dataclass
class OptimConfig(Section):
    """Schedule length, optimiser and loss (None: from the preset)."""

    TITLE = "optimisation (default: from the preset)"

    epochs: int | None = setting(help="training epochs")
    batch_size: int | None = setting(help="training batch size (per device)")
    eval_batch_size: int | None = setting(help="validation batch size (default: batch size)")
    lr: float | None = setting(help="peak AdamW learning rate")
    weight_decay: float | None = setting(help="AdamW weight decay (weight matrices only)")
    warmup_epochs: float | None = setting(help="linear warm-up before the cosine decay")
    min_lr_ratio: float = setting(0.01, "final LR / peak LR")
    label_smoothing: float = setting(0.1, "label smoothing of the training loss")
    grad_clip: float | None = setting(1.0, "gradient norm clip; 0 = off")
    max_steps: int | None = setting(help="stop after this many optimizer steps")
    #: None: the preset's (MIN_STEPS) if epochs come from the preset, else 0 (off)
    min_steps: int | None = setting(
        help="train at least this many optimizer steps, raising the epochs on small data "
        "(default: the preset's minimum when --epochs is not given; 0 = off)"
    )
    #: the epochs before ``min_steps`` raised them (set by :func:`apply_min_steps`, else None)
    requested_epochs: int | None = setting(cli=False)


@dataclass
class RunConfig(Section):
    """Initial weights, seed, run folder, hardware and logging of a run."""

    TITLE = "run folder and hardware"

    init_from: str | None = setting(
        help="start from the weights of this run/checkpoint (e.g. a softmax model of the same "
        "position encoding and sizes); only the new attention kernel's weights are fresh. "
        "In `rpevit grid`, a grid folder: each run starts from its softmax-<position>/seed<s>",
        metavar="RUN_OR_CKPT",
    )
    seed: int = setting(0, "training seed")
    out: str = setting("runs", "parent folder of run folders")
    run_name: str | None = setting(
        help="run folder name (default: <dataset>-<model>-<preset>-seed<seed>)"
    )
    resume: bool | str | None = setting(
        help=f"continue from {LAST} of this run, or of the given run folder / checkpoint",
        nargs="?",
        const=True,
    )
    overwrite: bool = setting(False, "replace an existing run")
    checkpoint_every_n_steps: int | None = setting(help=f"also save {LAST} every N steps")
    accelerator: str = setting("auto", "auto, cpu or gpu")
    devices: int | str | list[int] = setting(
        "auto", "auto, a count, or ids like 0,1", type=parse_devices
    )
    num_nodes: int = setting(1, "machines (multi-node DDP)")
    strategy: str = setting("auto", "Lightning strategy, e.g. auto, ddp")
    precision: str = setting("32-true", f"one of {', '.join(PRECISIONS)}")
    deterministic: bool | str | None = setting(cli=False)
    threads: int | None = setting(help="torch CPU threads")
    #: Not part of the run identity: it changes speed, not the model.
    compile: bool = setting(
        False,
        "torch.compile (inductor) the model for training; eager with a one-line note "
        "where it cannot compile",
    )
    progress_bar: bool = setting(True, "no progress bar", flag="--no-progress")
    log_every_n_steps: int = setting(50, "logging period in steps")
    inference_batch_size: int = setting(128, cli=False)


#: The sections of a run's config, in the order of its fields (and of ``config.json``).
SECTIONS = (TaskConfig, ModelConfig, OptimConfig, DataConfig, RunConfig)


@dataclass
class TrainConfig(RunConfig, DataConfig, OptimConfig, ModelConfig, TaskConfig):
    """Everything that defines a training run: the union of the :data:`SECTIONS`, with flat
    fields (``config.lr``) and a flat ``config.json``; ``config.section(DataConfig)`` is the
    typed part a consumer takes whole."""

    def section(self, kind: type[S]) -> S:
        """The ``kind`` section of this config (a copy)."""
        return kind.from_record(self.to_dict())

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"unknown config field(s): {', '.join(unknown)}")
        return cls(**dict(values))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def run_dir(self) -> Path:
        """``<out>/<run_name>``; the default name encodes data set, model, preset and seed."""
        name = self.run_name or f"{self.dataset}-{self.model}-{self.preset}-seed{self.seed}"
        return Path(self.out) / name


def _positive(config: TrainConfig, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if value is not None and not value > 0:
            raise ConfigError(f"{name.replace('_', '-')} must be positive, got {value}")


def resolve_config(config: TrainConfig | Mapping[str, Any]) -> TrainConfig:
    """Fill unset fields from the preset and defaults and check that the run is possible."""
    if not isinstance(config, TrainConfig):
        config = TrainConfig.from_dict(config)
    else:
        config = dataclasses.replace(config, model_options=dict(config.model_options))
    if not config.model:
        raise ConfigError("no model given: pass --model, e.g. --model relu-ape")
    import rpevit

    models = rpevit.list_available_models()
    if config.model not in models:
        raise ConfigError(f"unknown model {config.model!r}; choose one of {', '.join(models)}")
    for key, value in RECIPE_OPTIONS.get(parse_model_name(config.model)[0], {}).items():
        if config.model_options.get(key) is None:
            config.model_options[key] = value
    spec = get_spec(config.dataset)
    if config.preset not in PRESETS:
        raise ConfigError(f"unknown preset {config.preset!r}; choose one of {', '.join(PRESETS)}")
    if config.min_steps is None:  # the preset's minimum only guards the preset's epochs
        config.min_steps = MIN_STEPS[config.preset] if config.epochs is None else 0
    for key, value in PRESETS[config.preset][config.dataset].items():
        if getattr(config, key) is None:
            setattr(config, key, value)
    _positive(config, "patch_size", "dim", "depth", "heads", "mlp_dim", "epochs", "batch_size")
    _positive(config, "lr", "eval_batch_size", "max_steps", "max_train_samples")
    _positive(config, "max_val_samples", "max_test_samples", "image_size", "in_chans")
    _positive(config, "checkpoint_every_n_steps", "num_nodes", "threads", "inference_batch_size")
    _positive(config, "log_every_n_steps")
    if config.min_steps < 0:
        raise ConfigError(f"min-steps must be >= 0 (0: off), got {config.min_steps}")
    if config.weight_decay < 0 or config.warmup_epochs < 0 or not 0 <= config.min_lr_ratio <= 1:
        raise ConfigError("weight decay and warm-up must be >= 0 and min-lr-ratio in [0, 1]")
    if not 0 <= config.label_smoothing < 1:
        raise ConfigError(f"label smoothing must be in [0, 1), got {config.label_smoothing}")
    if config.dataset != "imagefolder" and (
        config.image_size not in (None, spec.image_size)
        or config.in_chans not in (None, spec.in_chans)
    ):
        raise ConfigError(
            f"{config.dataset} images are {spec.in_chans}x{spec.image_size}x{spec.image_size}; "
            "--image-size and --in-chans can only be chosen for imagefolder (to evaluate at "
            "another resolution use `rpevit evaluate RUN --image-size ...`)"
        )
    image_size = config.image_size or spec.image_size
    if image_size % config.patch_size:
        raise ConfigError(
            f"patch size {config.patch_size} does not divide the {image_size}x{image_size} "
            f"{config.dataset} images"
        )
    if config.dim % config.heads:
        raise ConfigError(f"dim {config.dim} is not divisible by heads {config.heads}")
    if config.precision not in PRECISIONS:
        raise ConfigError(
            f"unknown precision {config.precision!r}; choose one of {', '.join(PRECISIONS)}"
        )
    # Build the model once now, so bad model options fail before any data is read.
    with torch.random.fork_rng(devices=[]):  # and leave the global RNG untouched
        build_model(
            config.model,
            config.model_kwargs(
                max(2, spec.num_classes), config.in_chans or spec.in_chans, image_size
            ),
        )
    return config


def identity_mismatch(
    stored: Mapping[str, Any],
    config: TrainConfig,
    keys: Sequence[str] = RUN_IDENTITY,
    where: str = "checkpoint",
) -> list[str]:
    """``keys`` whose value differs between a stored config (of a ``where``) and ``config``;
    keys the stored config lacks (older runs) are not compared."""
    current = config.to_dict()
    return [
        f"{key}: {where} {stored[key]!r}, now {current[key]!r}"
        for key in keys
        if key in stored and stored[key] != current[key]
    ]


def steps_per_epoch(train_samples: int, batch_size: int) -> int:
    """Optimiser steps in one epoch of ``train_samples`` images (single process, last partial
    batch included)."""
    return -(-train_samples // batch_size)


def apply_min_steps(config: TrainConfig, train_samples: int) -> TrainConfig:
    """``config`` with epochs raised so that training takes at least ``config.min_steps``
    optimiser steps on ``train_samples`` images, warm-up scaled by the same factor (it keeps
    its share of the schedule); the original epochs go to ``requested_epochs``. Unchanged if
    the epochs already give enough steps (or ``min_steps`` is 0)."""
    per_epoch = steps_per_epoch(train_samples, config.batch_size)
    if not config.min_steps or config.epochs * per_epoch >= config.min_steps:
        return config
    epochs = -(-config.min_steps // per_epoch)
    print(
        f"rpevit: {train_samples:,} training images give {per_epoch} steps per epoch: training "
        f"{epochs} epochs instead of {config.epochs} (at least {config.min_steps:,} optimiser "
        "steps, --min-steps; --epochs or --min-steps 0 turn this off)",
        file=sys.stderr,
    )
    return dataclasses.replace(
        config,
        epochs=epochs,
        warmup_epochs=config.warmup_epochs * epochs / config.epochs,
        requested_epochs=config.epochs,
        model_options=dict(config.model_options),
    )
