"""An in-memory batch iterator: seeded order, rank sharding, on-device augmentation, resumable.

Everything random is a pure function of ``(seed, epoch)`` and the sample index: the sample
order of an epoch and each sample's augmentation, whatever the batch size, rank or world
size. So ``world_size`` processes with batch ``B / world_size`` each see, step by step, the
same samples with the same augmentation as one process with batch ``B`` (DDP reproduces a
single-process run). Lightning saves :meth:`state_dict` in checkpoints and calls
:meth:`set_epoch` on ``loader.sampler`` every epoch, so a run resumed mid-epoch continues
with exactly the batches the uninterrupted run would see.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from rpevit.data.augment import BatchTransform
from rpevit.data.specs import Split


def mix_seed(*values: int) -> int:
    """A well-mixed 63-bit seed from integers (numpy's SeedSequence hashing)."""
    return int(
        np.random.SeedSequence([int(v) for v in values]).generate_state(1, np.uint64)[0] >> 1
    )


class EpochSampler:
    """Indices of one rank for one epoch, like ``DistributedSampler`` but without a dataset.

    With ``shuffle`` the order is a permutation seeded by ``(seed, epoch)``, the same on all
    ranks; each rank takes every ``world_size``-th index. With ``even`` the order is padded
    by repeating its start so all ranks get the same count (training under DDP needs equal
    step counts); without it ranks may differ by one item (evaluation counts each item once).
    """

    def __init__(
        self,
        size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        even: bool = True,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world size {world_size}")
        self.size, self.shuffle, self.seed = size, shuffle, seed
        self.rank, self.world_size, self.even = rank, world_size, even
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def indices(self) -> torch.Tensor:
        if self.shuffle:
            order = torch.randperm(
                self.size, generator=torch.Generator().manual_seed(mix_seed(self.seed, self.epoch))
            )
        else:
            order = torch.arange(self.size)
        if self.even and self.size % self.world_size:
            pad = self.world_size - self.size % self.world_size
            order = torch.cat([order, order[:pad]])
        return order[self.rank :: self.world_size]

    def __len__(self) -> int:
        if self.even:
            return -(-self.size // self.world_size)
        return len(range(self.rank, self.size, self.world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())


class InMemoryLoader:
    """Yield ``(images, labels)`` batches of a :class:`Split`, transformed on ``device``.

    ``uint8`` batches are moved to ``device`` and turned into normalised float batches by
    ``transform``; with ``augment`` the parameters of every sample of the split are drawn
    at the start of each epoch from a generator seeded by ``(seed, epoch)``. Implements
    Lightning's stateful-loader protocol (``state_dict`` / ``load_state_dict``) for exact
    mid-epoch resume.
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        transform: BatchTransform,
        *,
        shuffle: bool = False,
        augment: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        even: bool = True,
        drop_last: bool = False,
        device: torch.device | str | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch size must be positive, got {batch_size}")
        self.split, self.batch_size, self.transform = split, batch_size, transform
        self.augment, self.seed, self.drop_last = augment, seed, drop_last
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.sampler = EpochSampler(
            len(split), shuffle=shuffle, seed=seed, rank=rank, world_size=world_size, even=even
        )
        self.batch_sampler = None  # DataLoader attributes Lightning inspects (set_epoch, shuffle)
        # (epoch, batches yielded in it) of the running iteration, and of a restored checkpoint
        self._progress = (0, 0)
        self._resume: tuple[int, int] | None = None

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch (order and augmentation); Lightning calls ``sampler.set_epoch``."""
        self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self.sampler.epoch
        start = 0
        if self._resume is not None and self._resume[0] == epoch:
            start = self._resume[1]
        self._resume = None
        self._progress = (epoch, start)
        order = self.sampler.indices()
        params: dict[str, torch.Tensor] = {}
        if self.augment:
            generator = torch.Generator().manual_seed(mix_seed(self.seed, epoch))
            params = self.transform.draw(len(self.split), generator)
        non_blocking = self.device.type == "cuda"
        for i in range(start, len(self)):
            index = order[i * self.batch_size : (i + 1) * self.batch_size]
            images = self.split.images[index].to(self.device, non_blocking=non_blocking)
            labels = self.split.labels[index].to(self.device, non_blocking=non_blocking)
            self._progress = (epoch, i + 1)
            yield self.transform(images, {k: v[index] for k, v in params.items()}), labels

    def state_dict(self) -> dict[str, int]:
        """Epoch and number of batches already yielded in it."""
        epoch, done = self._progress
        if epoch != self.sampler.epoch:  # a new epoch was set but has not started yet
            epoch, done = self.sampler.epoch, 0
        return {"epoch": epoch, "batches": done}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Make the next iteration of ``state['epoch']`` skip the batches already yielded."""
        self._resume = (int(state["epoch"]), int(state["batches"]))
        self.sampler.set_epoch(self._resume[0])
        self._progress = self._resume
