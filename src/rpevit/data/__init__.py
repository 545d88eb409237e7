"""In-memory image data sets, batched on-device augmentation and a LightningDataModule."""

from rpevit.data.augment import (
    BatchTransform,
    crop_flip,
    draw_crop_flip,
    draw_rotation,
    normalize,
    random_crop_flip,
    random_rotate,
    rotate,
)
from rpevit.data.config import DataConfig
from rpevit.data.datasets import load_dataset, seeded_subset, split_indices
from rpevit.data.loader import EpochSampler, InMemoryLoader, mix_seed
from rpevit.data.module import ImageDataModule
from rpevit.data.named import verify_checksums
from rpevit.data.specs import (
    DATA_DIR_ENV,
    DATASETS,
    DatasetSpec,
    ImageDataset,
    Split,
    get_spec,
    list_datasets,
    resolve_data_dir,
)

__all__ = [
    "DATASETS",
    "DATA_DIR_ENV",
    "BatchTransform",
    "DataConfig",
    "DatasetSpec",
    "EpochSampler",
    "ImageDataModule",
    "ImageDataset",
    "InMemoryLoader",
    "Split",
    "crop_flip",
    "draw_crop_flip",
    "draw_rotation",
    "get_spec",
    "list_datasets",
    "load_dataset",
    "mix_seed",
    "normalize",
    "random_crop_flip",
    "random_rotate",
    "resolve_data_dir",
    "rotate",
    "seeded_subset",
    "split_indices",
    "verify_checksums",
]
