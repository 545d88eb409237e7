"""Data sets by name, loaded fully into memory as ``uint8`` tensors with fixed splits.

Files are read from the standard layouts under a data folder (``--data-dir``, else
``$RPEVIT_DATA_DIR``, else ``./data``)::

    MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]
    cifar-10-batches-py/ (torchvision pickles)   or  cifar-10-batches-bin/ (official binary)
    cifar-100-python/    (torchvision pickles)   or  cifar-100-binary/
    <data-dir>/{train,val,test}/<class>/**/<image>   for ``imagefolder``
    <data-dir>/val/images/ + val/val_annotations.txt  (Tiny ImageNet's labelled val/)

If a named data set is missing, torchvision's downloader is tried (it writes exactly these
layouts); if that fails too, :class:`~rpevit.errors.DataNotFoundError` says which files
to put where. The validation split is a seeded permutation of the official training set
(``split_seed``, 42 by default, independent of the training seed); test is never touched.
"""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import torch

from rpevit.data.imagefolder import load_image_folder
from rpevit.data.named import read_named, verify_checksums
from rpevit.data.specs import ImageDataset, Split, get_spec, resolve_data_dir
from rpevit.errors import ConfigError, DataCorruptError


def split_indices(n: int, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded disjoint (train, val) index sets covering ``range(n)``, each in ascending order."""
    if not 0 < val_size < n:
        raise ConfigError(
            f"validation size {val_size} must be between 1 and {n - 1} (training set has {n})"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[val_size:].sort().values, perm[:val_size].sort().values


def seeded_subset(split: Split, max_samples: int | None, seed: int) -> Split:
    """A seeded random subset of at most ``max_samples`` items (original order kept)."""
    if max_samples is None or max_samples >= len(split):
        return split
    if max_samples < 1:
        raise ConfigError(f"sample limit must be positive, got {max_samples}")
    perm = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))
    return split.subset(perm[:max_samples].sort().values)


def _check_labels(labels: np.ndarray, num_classes: int, where: str) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataCorruptError(
            f"{where}: labels range {labels.min()}..{labels.max()}, expected 0..{num_classes - 1}"
        )


def load_dataset(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    split_seed: int = 42,
    val_size: int | None = None,
    max_train_samples: int | None = None,
    max_val_samples: int | None = None,
    max_test_samples: int | None = None,
    download: bool = True,
    image_size: int | None = None,
    in_chans: int | None = None,
    num_workers: int = 0,
    verify: bool = False,
) -> ImageDataset:
    """Load a data set by name into memory, with seeded train/val split and optional subsets.

    ``val_size`` overrides the data set's default validation size; ``max_*_samples`` take
    seeded random subsets (after splitting, so the validation set never depends on them).
    ``image_size`` / ``in_chans`` / ``num_workers`` only apply to ``imagefolder``; ``verify``
    checks published MD5 checksums first (:func:`verify_checksums`).
    """
    spec = get_spec(name)
    root = resolve_data_dir(data_dir)
    if verify:
        verify_checksums(name, root)
    if name == "imagefolder":
        spec, train, val, test = load_image_folder(
            root, image_size or spec.image_size, in_chans or spec.in_chans, num_workers
        )
    else:
        if image_size not in (None, spec.image_size) or in_chans not in (None, spec.in_chans):
            raise ConfigError(
                f"{name} images are {spec.in_chans}x{spec.image_size}x{spec.image_size}; "
                "image size and channels can only be chosen for imagefolder"
            )
        raw = read_named(name, root, download)
        _check_labels(raw.train_labels, spec.num_classes, f"{name} training labels")
        _check_labels(raw.test_labels, spec.num_classes, f"{name} test labels")
        if raw.class_names and len(raw.class_names) == spec.num_classes:
            spec = replace(spec, class_names=tuple(raw.class_names))
        elif not spec.class_names:
            spec = replace(spec, class_names=tuple(str(i) for i in range(spec.num_classes)))
        train = Split(torch.from_numpy(raw.train_images), torch.from_numpy(raw.train_labels))
        test = Split(torch.from_numpy(raw.test_images), torch.from_numpy(raw.test_labels))
        val = None
    if val is None:
        train_idx, val_idx = split_indices(len(train), val_size or spec.val_size, split_seed)
        train, val = train.subset(train_idx), train.subset(val_idx)
    return ImageDataset(
        spec=spec,
        train=seeded_subset(train, max_train_samples, split_seed),
        val=seeded_subset(val, max_val_samples, split_seed),
        test=seeded_subset(test, max_test_samples, split_seed),
    )
