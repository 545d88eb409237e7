"""Training and evaluation: LightningModule, Trainer setup, presets, CLI glue."""

from rpevit.training.callbacks import EpochTimer
from rpevit.training.cli import (
    add_evaluate_arguments,
    add_train_arguments,
    config_from_args,
    run_evaluate,
    run_train,
)
from rpevit.training.config import PRESETS, TrainConfig, resolve_config
from rpevit.training.module import ImageClassifier, param_groups, warmup_cosine
from rpevit.training.run import (
    build_trainer,
    evaluate,
    evaluate_checkpoint,
    find_checkpoint,
    load_checkpoint,
    train,
)

__all__ = [
    "PRESETS",
    "EpochTimer",
    "ImageClassifier",
    "TrainConfig",
    "add_evaluate_arguments",
    "add_train_arguments",
    "build_trainer",
    "config_from_args",
    "evaluate",
    "evaluate_checkpoint",
    "find_checkpoint",
    "load_checkpoint",
    "param_groups",
    "resolve_config",
    "run_evaluate",
    "run_train",
    "train",
    "warmup_cosine",
]
