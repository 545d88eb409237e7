"""Training and evaluation, the library API: train a config, load and measure checkpoints.

The ``rpevit train`` / ``rpevit evaluate`` commands live in :mod:`rpevit.cli`; the building
blocks (callbacks, checkpoint I/O, schedules) in their own modules.
"""

from rpevit.training.checkpointing import load_checkpoint, transfer_weights
from rpevit.training.config import TrainConfig, resolve_config
from rpevit.training.evaluation import evaluate, evaluate_checkpoint, measure
from rpevit.training.fit import train
from rpevit.training.inference import load_model, predict
from rpevit.training.module import ImageClassifier
from rpevit.training.presets import PRESETS
from rpevit.training.transfer import resolution_transfer

__all__ = [
    "PRESETS",
    "ImageClassifier",
    "TrainConfig",
    "evaluate",
    "evaluate_checkpoint",
    "load_checkpoint",
    "load_model",
    "measure",
    "predict",
    "resolution_transfer",
    "resolve_config",
    "train",
    "transfer_weights",
]
