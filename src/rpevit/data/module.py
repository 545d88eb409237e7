"""LightningDataModule over the in-memory data sets and batch iterators."""

from __future__ import annotations

import os
from typing import Any

import lightning as L
import torch

from rpevit.data.augment import BatchTransform
from rpevit.data.datasets import DatasetSpec, ImageDataset, Split, load_dataset
from rpevit.data.loader import InMemoryLoader


class ImageDataModule(L.LightningDataModule):
    """Loads a data set once into memory and serves augmented, normalised batches.

    Training batches are augmented on the training device (``trainer.strategy.root_device``)
    and sharded by ``trainer.global_rank`` / ``trainer.world_size``; evaluation batches are
    only normalised. Without a trainer (plain Python use) everything runs on ``device``.
    """

    def __init__(
        self,
        dataset: str,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        seed: int = 0,
        split_seed: int = 42,
        augment: bool = True,
        max_train_samples: int | None = None,
        max_val_samples: int | None = None,
        max_test_samples: int | None = None,
        download: bool = True,
        image_size: int | None = None,
        in_chans: int | None = None,
        num_workers: int = 0,
        verify: bool = False,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.dataset_name, self.data_dir = dataset, data_dir
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.seed, self.split_seed, self.augment = seed, split_seed, augment
        self.limits = (max_train_samples, max_val_samples, max_test_samples)
        self.download, self.image_size, self.in_chans = download, image_size, in_chans
        self.num_workers, self.verify, self.device = num_workers, verify, device
        self.data: ImageDataset | None = None
        self._train_loader: InMemoryLoader | None = None
        self._train_state: dict[str, int] | None = None

    def prepare_data(self) -> None:
        """Read (downloading if needed) on the first process; ``setup`` reuses the result."""
        self.setup()

    def setup(self, stage: str | None = None) -> None:
        if self.data is None:
            self.data = load_dataset(
                self.dataset_name,
                self.data_dir,
                split_seed=self.split_seed,
                max_train_samples=self.limits[0],
                max_val_samples=self.limits[1],
                max_test_samples=self.limits[2],
                download=self.download,
                image_size=self.image_size,
                in_chans=self.in_chans,
                num_workers=self.num_workers,
                verify=self.verify,
            )

    @property
    def spec(self) -> DatasetSpec:
        self.setup()
        assert self.data is not None
        return self.data.spec

    def _placement(self) -> tuple[int, int, torch.device | str | None]:
        """(rank, world size, device) from the attached trainer, else a single process."""
        trainer = self.trainer
        if trainer is None:
            return 0, 1, self.device
        return trainer.global_rank, trainer.world_size, trainer.strategy.root_device

    def loader(self, split: str, *, train: bool = False) -> InMemoryLoader:
        """Batches of ``split`` ('train', 'val' or 'test'); ``train`` shuffles and augments."""
        self.setup()
        assert self.data is not None
        spec = self.data.spec
        data: Split = getattr(self.data, split)
        rank, world_size, device = self._placement()
        transform = BatchTransform(
            spec.mean, spec.std, spec.augment if train and self.augment else None
        )
        return InMemoryLoader(
            data,
            self.batch_size if train else self.eval_batch_size,
            transform,
            shuffle=train,
            augment=train and self.augment,
            seed=self.seed,
            rank=rank,
            world_size=world_size,
            even=train,
            device=device,
        )

    def train_dataloader(self) -> InMemoryLoader:
        loader = self.loader("train", train=True)
        if self._train_state is not None:
            loader.load_state_dict(self._train_state)
            self._train_state = None
        self._train_loader = loader
        return loader

    def state_dict(self) -> dict[str, Any]:
        """Position of the training iterator, saved by Lightning in every checkpoint.

        Kept here as well as in the loader itself because Lightning may create the training
        loader (e.g. for ``estimated_stepping_batches``) before it restores loop states,
        whereas data modules are restored first.
        """
        return {"train_loader": self._train_loader.state_dict()} if self._train_loader else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._train_state = state_dict.get("train_loader")
        if self._train_loader is not None and self._train_state is not None:
            self._train_loader.load_state_dict(self._train_state)

    def val_dataloader(self) -> InMemoryLoader:
        return self.loader("val")

    def test_dataloader(self) -> InMemoryLoader:
        return self.loader("test")
