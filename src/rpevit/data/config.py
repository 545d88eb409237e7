"""How a run reads its data set: the data section of a run's config."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from rpevit.config import Section, setting


@dataclass
class DataConfig(Section):
    """Data folder, split, subsets, augmentation and image-folder decoding of a run."""

    TITLE = "data"

    data_dir: str | None = setting(help="data folder (default: $RPEVIT_DATA_DIR or ./data)")
    split_seed: int = setting(42, "seed of the train/val split")
    max_train_samples: int | None = setting(help="seeded subset of the training split")
    max_val_samples: int | None = setting(help="seeded subset of the validation split")
    max_test_samples: int | None = setting(help="seeded subset of the test split")
    augment: bool = setting(True, "train without data augmentation")
    download: bool = setting(True, "never download a missing data set")
    verify_data: bool = setting(
        False, "check the data files' published MD5 checksums before training"
    )
    image_size: int | None = setting(help="imagefolder only: resize images to this size")
    in_chans: int | None = setting(help="imagefolder only: 1 (grey) or 3 (RGB) channels")
    num_workers: int = setting(0, "threads decoding imagefolder images")

    def load_options(self) -> dict[str, Any]:
        """Keyword arguments of :func:`rpevit.data.load_dataset` (all but the folder)."""
        options = {f.name: getattr(self, f.name) for f in dataclasses.fields(DataConfig)}
        del options["data_dir"], options["augment"]
        options["verify"] = options.pop("verify_data")
        return options
