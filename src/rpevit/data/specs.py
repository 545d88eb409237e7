"""Data-set registry (specs, names, data folder) and split containers, shared by all loaders."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from rpevit.errors import ConfigError

DATA_DIR_ENV = "RPEVIT_DATA_DIR"


@dataclass(frozen=True)
class DatasetSpec:
    """Static facts about a data set: shapes, normalisation constants, split size, augmentation."""

    name: str
    num_classes: int
    in_chans: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    val_size: int
    augment: str  # "rotate" (small random rotation) or "crop_flip" (padded crop + h-flip)
    class_names: tuple[str, ...] = ()


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        "mnist", 10, 1, 28, (0.1307,), (0.3081,), 5_000, "rotate", tuple(str(i) for i in range(10))
    ),
    "cifar10": DatasetSpec(
        "cifar10", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 5_000, "crop_flip"
    ),
    "cifar100": DatasetSpec(
        "cifar100",
        100,
        3,
        32,
        (0.5071, 0.4865, 0.4409),
        (0.2673, 0.2564, 0.2762),
        5_000,
        "crop_flip",
    ),
    # Shapes, classes and statistics of an image folder are found when it is loaded.
    "imagefolder": DatasetSpec("imagefolder", 0, 3, 64, (), (), 0, "crop_flip"),
}


@dataclass(frozen=True)
class Split:
    """One split in memory: ``images`` uint8 ``[N, C, H, W]``, ``labels`` int64 ``[N]``."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, indices: torch.Tensor) -> Split:
        return Split(self.images[indices], self.labels[indices])


@dataclass(frozen=True)
class ImageDataset:
    """A data set's spec and its train / val / test splits."""

    spec: DatasetSpec
    train: Split
    val: Split
    test: Split


def list_datasets() -> list[str]:
    return sorted(DATASETS)


def get_spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise ConfigError(
            f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}"
        ) from None


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """``data_dir`` if given, else ``$RPEVIT_DATA_DIR``, else ``./data``."""
    return Path(data_dir or os.environ.get(DATA_DIR_ENV) or "data").expanduser()
