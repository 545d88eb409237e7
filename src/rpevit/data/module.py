"""LightningDataModule over the in-memory data sets and batch iterators."""

from __future__ import annotations

import inspect
import os
from typing import Any

import lightning as L
import torch

from rpevit.data.augment import BatchTransform
from rpevit.data.config import DataConfig
from rpevit.data.datasets import load_dataset
from rpevit.data.loader import InMemoryLoader
from rpevit.data.specs import DatasetSpec, ImageDataset, Split


class ImageDataModule(L.LightningDataModule):
    """Loads a data set once into memory and serves augmented, normalised batches.

    Training batches are augmented on the training device (``trainer.strategy.root_device``)
    and sharded by ``trainer.global_rank`` / ``trainer.world_size``; evaluation batches are
    only normalised. Without a trainer (plain Python use) everything runs on ``device``.
    ``load_options`` are :func:`load_dataset`'s (``split_seed``, ``max_train_samples``,
    ``download``, ``image_size``, ...), checked here and applied when the data are read.
    """

    def __init__(
        self,
        dataset: str,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        seed: int = 0,
        augment: bool = True,
        device: torch.device | str | None = None,
        **load_options: Any,
    ) -> None:
        super().__init__()
        inspect.signature(load_dataset).bind(dataset, data_dir, **load_options)
        self.dataset_name, self.data_dir, self.load_options = dataset, data_dir, load_options
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.seed, self.augment, self.device = seed, augment, device
        self.data: ImageDataset | None = None
        self._train_loader: InMemoryLoader | None = None
        self._train_state: dict[str, int] | None = None

    @classmethod
    def from_config(
        cls,
        dataset: str,
        data: DataConfig,
        *,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        seed: int = 0,
        device: torch.device | str | None = None,
    ) -> ImageDataModule:
        """The data module of ``dataset`` read as the run's data section ``data`` says."""
        return cls(
            dataset,
            data.data_dir,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            seed=seed,
            augment=data.augment,
            device=device,
            **data.load_options(),
        )

    def prepare_data(self) -> None:
        """Read (downloading if needed) on the first process; ``setup`` reuses the result."""
        self.setup()

    def setup(self, stage: str | None = None) -> None:
        if self.data is None:
            self.data = load_dataset(self.dataset_name, self.data_dir, **self.load_options)

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
