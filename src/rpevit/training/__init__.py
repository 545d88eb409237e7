"""Training and evaluation: LightningModule, Trainer setup, presets, CLI glue."""

from rpevit.training.callbacks import EpochTimer, GracefulStop
from rpevit.training.checkpointing import (
    AtomicCheckpointIO,
    find_checkpoint,
    load_checkpoint,
    resume_checkpoint,
    transfer_weights,
)
from rpevit.training.cli import (
    add_evaluate_arguments,
    add_train_arguments,
    config_from_args,
    run_evaluate,
    run_train,
)
from rpevit.training.config import PRESETS, TrainConfig, resolve_config
from rpevit.training.evaluation import evaluate, evaluate_checkpoint, measure
from rpevit.training.fit import build_trainer, train
from rpevit.training.inference import load_model, predict
from rpevit.training.module import ImageClassifier, param_groups, warmup_cosine
from rpevit.training.transfer import RESIZE_MODES, resize_images, resolution_transfer

__all__ = [
    "PRESETS",
    "RESIZE_MODES",
    "AtomicCheckpointIO",
    "EpochTimer",
    "GracefulStop",
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
    "load_model",
    "measure",
    "param_groups",
    "predict",
    "resize_images",
    "resolution_transfer",
    "resolve_config",
    "resume_checkpoint",
    "run_evaluate",
    "run_train",
    "train",
    "transfer_weights",
    "warmup_cosine",
]
