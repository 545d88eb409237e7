"""A trained model back from its checkpoint, and its predictions on a data loader."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rpevit.data import InMemoryLoader
from rpevit.errors import CheckpointError, one_line
from rpevit.training.callbacks import EpochTimer
from rpevit.training.checkpointing import load_checkpoint
from rpevit.training.module import ImageClassifier


@dataclass(frozen=True)
class CheckpointInfo:
    """What a training checkpoint records besides the weights."""

    path: Path
    model_name: str
    model_kwargs: dict[str, Any]
    #: the resolved training config (``config.json`` of the run)
    config: dict[str, Any]
    epoch: int | None
    step: int | None
    init_from: dict[str, Any] | None
    #: training time per epoch, from the :class:`EpochTimer` state (None: not recorded)
    timer: EpochTimer | None


def timer_state(checkpoint: Mapping[str, Any]) -> EpochTimer | None:
    """The :class:`EpochTimer` saved in a checkpoint, if any."""
    state = (checkpoint.get("callbacks") or {}).get(EpochTimer.__qualname__)
    if state is None:
        return None
    timer = EpochTimer()
    timer.load_state_dict(state)
    return timer


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device``; None or ``auto``: CUDA if available, else the CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_model(
    ckpt_path: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, CheckpointInfo]:
    """The model of a training checkpoint on ``device``, in eval mode, and what the checkpoint
    records; CheckpointError if its weights do not fit the model it names."""
    ckpt_path = Path(ckpt_path)
    checkpoint = load_checkpoint(ckpt_path)
    hparams = dict(checkpoint["hyper_parameters"])
    module = ImageClassifier(**hparams)
    try:
        module.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as e:  # the first line only says "Error(s) in loading state_dict"
        details = [line.strip() for line in str(e).splitlines()[1:] if line.strip()]
        raise CheckpointError(
            f"{ckpt_path} does not match its model {hparams['model_name']} "
            f"({details[0] if details else one_line(e)})"
        ) from e
    info = CheckpointInfo(
        path=ckpt_path,
        model_name=hparams["model_name"],
        model_kwargs=dict(hparams.get("model_kwargs") or {}),
        config=dict(hparams.get("config") or {}),
        epoch=checkpoint.get("epoch"),
        step=checkpoint.get("global_step"),
        init_from=hparams.get("init_from"),
        timer=timer_state(checkpoint),
    )
    return module.model.to(device).eval(), info


@torch.inference_mode()
def predict(model: torch.nn.Module, loader: InMemoryLoader) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (float32, CPU) and labels of every batch of ``loader``, model in eval mode."""
    model.eval()
    logits, labels = [], []
    for images, y in loader:
        logits.append(model(images).float().cpu())
        labels.append(y.cpu())
    return torch.cat(logits), torch.cat(labels)
