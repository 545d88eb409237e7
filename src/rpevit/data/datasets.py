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
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from rpevit.data import formats
from rpevit.errors import ConfigError, DataCorruptError, DataNotFoundError

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


# --- named data sets: find files, parse, fall back to torchvision's download ---------------


@dataclass(frozen=True)
class _Raw:
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: list[str] | None = None


def _find(folder: Path, names: list[str]) -> list[Path] | None:
    """Paths of ``names`` in ``folder`` (each plain or ``.gz``), or None if any is missing."""
    found = []
    for name in names:
        candidates = [folder / name, folder / f"{name}.gz"]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            return None
        found.append(path)
    return found


_MNIST_FILES = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
]


def _read_mnist(root: Path) -> _Raw | None:
    paths = _find(root / "MNIST" / "raw", _MNIST_FILES)
    if paths is None:
        return None
    arrays = [formats.read_idx(p) for p in paths]
    for images, labels, (pi, pl) in (
        (arrays[0], arrays[1], paths[:2]),
        (arrays[2], arrays[3], paths[2:]),
    ):
        if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
            raise DataCorruptError(f"{pi} has shape {images.shape}, expected [N, 28, 28] uint8")
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise DataCorruptError(
                f"{pl} has {labels.shape} labels for {images.shape[0]} images in {pi}"
            )
    return _Raw(
        arrays[0][:, None],
        arrays[1].astype(np.int64),
        arrays[2][:, None],
        arrays[3].astype(np.int64),
    )


def _read_cifar(
    root: Path,
    py_dir: str,
    py_train: list[str],
    py_test: str,
    py_label_key: str,
    py_meta: tuple[str, str],
    bin_dir: str,
    bin_train: list[str],
    bin_test: str,
    bin_label_bytes: int,
    bin_names: str,
) -> _Raw | None:
    """Read either the torchvision pickle layout or the official binary layout of CIFAR."""
    folder = root / py_dir
    if _find(folder, [*py_train, py_test]) is not None:
        train = [formats.read_cifar_pickle(folder / f, py_label_key) for f in py_train]
        test = formats.read_cifar_pickle(folder / py_test, py_label_key)
        names = formats.read_label_names_pickle(folder / py_meta[0], py_meta[1])
    else:
        folder = root / bin_dir
        paths = _find(folder, [*bin_train, bin_test])
        if paths is None:
            return None
        train = [formats.read_cifar_binary(p, bin_label_bytes) for p in paths[:-1]]
        test = formats.read_cifar_binary(paths[-1], bin_label_bytes)
        names = formats.read_label_names_text(folder / bin_names)
    return _Raw(
        np.concatenate([x for x, _ in train]),
        np.concatenate([y for _, y in train]),
        test[0],
        test[1],
        names,
    )


def _read_cifar10(root: Path) -> _Raw | None:
    return _read_cifar(
        root,
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        "test_batch",
        "labels",
        ("batches.meta", "label_names"),
        "cifar-10-batches-bin",
        [f"data_batch_{i}.bin" for i in range(1, 6)],
        "test_batch.bin",
        1,
        "batches.meta.txt",
    )


def _read_cifar100(root: Path) -> _Raw | None:
    return _read_cifar(
        root,
        "cifar-100-python",
        ["train"],
        "test",
        "fine_labels",
        ("meta", "fine_label_names"),
        "cifar-100-binary",
        ["train.bin"],
        "test.bin",
        2,
        "fine_label_names.txt",
    )


@dataclass(frozen=True)
class _Source:
    read: Callable[[Path], _Raw | None]
    torchvision_class: str
    expected: str  # what to put where, for the error message


_SOURCES = {
    "mnist": _Source(
        _read_mnist, "MNIST", "MNIST/raw/ with " + ", ".join(f"{f}.gz" for f in _MNIST_FILES)
    ),
    "cifar10": _Source(
        _read_cifar10,
        "CIFAR10",
        "cifar-10-batches-py/ (data_batch_1..5, test_batch, batches.meta) or "
        "cifar-10-batches-bin/ (data_batch_1..5.bin, test_batch.bin)",
    ),
    "cifar100": _Source(
        _read_cifar100,
        "CIFAR100",
        "cifar-100-python/ (train, test, meta) or cifar-100-binary/ (train.bin, test.bin)",
    ),
}


def _download(name: str, root: Path) -> str | None:
    """Try torchvision's downloader; return None on success or a one-line failure reason."""
    import torchvision.datasets

    try:
        root.mkdir(parents=True, exist_ok=True)
        getattr(torchvision.datasets, _SOURCES[name].torchvision_class)(
            str(root), train=True, download=True
        )
    except Exception as e:  # any failure (network, disk, checksum) means "not available"
        return " ".join(f"{type(e).__name__}: {e}".split())
    return None


def _read_named(name: str, root: Path, download: bool) -> _Raw:
    source = _SOURCES[name]
    raw = source.read(root)
    if raw is None:
        reason = _download(name, root) if download else "download disabled"
        raw = None if reason else source.read(root)
        if raw is None:
            reason = reason or "downloaded files not found"
            raise DataNotFoundError(
                f"{name} not found in {root.resolve()} ({reason}): put {source.expected} "
                f"under {root.resolve()} (or pass --data-dir / set {DATA_DIR_ENV})"
            )
    return raw


def _check_labels(labels: np.ndarray, num_classes: int, where: str) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataCorruptError(
            f"{where}: labels range {labels.min()}..{labels.max()}, expected 0..{num_classes - 1}"
        )


# --- checksums ----------------------------------------------------------------------------------

#: Published MD5 of each data file (torchvision's lists; the MNIST IDX and CIFAR-10 binary
#: values as published with the data sets), by data set and path under the data folder.
KNOWN_MD5: dict[str, dict[str, str]] = {
    "mnist": {
        "MNIST/raw/train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "MNIST/raw/train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "MNIST/raw/t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "MNIST/raw/t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        "MNIST/raw/train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "MNIST/raw/train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "MNIST/raw/t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "MNIST/raw/t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    },
    "cifar10": {
        "cifar-10-batches-py/data_batch_1": "c99cafc152244af753f735de768cd75f",
        "cifar-10-batches-py/data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
        "cifar-10-batches-py/data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
        "cifar-10-batches-py/data_batch_4": "634d18415352ddfa80567beed471001a",
        "cifar-10-batches-py/data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
        "cifar-10-batches-py/test_batch": "40351d587109b95175f43aff81a1287e",
        "cifar-10-batches-py/batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
        "cifar-10-batches-bin/data_batch_1.bin": "5dd7e06a14cb22eb9f671a540d1b7c25",
        "cifar-10-batches-bin/data_batch_2.bin": "5ea93a67294ea407fff1d09f752e9692",
        "cifar-10-batches-bin/data_batch_3.bin": "942cd6a4bcdd0dd3c604fbe906cb4421",
        "cifar-10-batches-bin/data_batch_4.bin": "ae636b3ba5c66a11e91e8cb52e771fcb",
        "cifar-10-batches-bin/data_batch_5.bin": "53f37980c15c3d472c316c40844f3f0d",
        "cifar-10-batches-bin/test_batch.bin": "803d5f7f4d78ea53de84dbe85f74fb6d",
    },
    "cifar100": {
        "cifar-100-python/train": "16019d7e3df5f24257cddd939b257f8d",
        "cifar-100-python/test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
        "cifar-100-python/meta": "7973b15100ade9c7d40fb424638fde48",
    },
}


def verify_checksums(name: str, data_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """Compare the MD5 of every present file of data set ``name`` with its published value.

    Returns the files checked; raises DataCorruptError on a mismatch and DataNotFoundError if
    no file with a published checksum is present (e.g. CIFAR-100's binary version).
    """
    get_spec(name)
    root = resolve_data_dir(data_dir)
    checked = []
    for relative, expected in KNOWN_MD5.get(name, {}).items():
        path = root / relative
        if not path.is_file():
            continue
        actual = formats.md5(path)
        if actual != expected:
            raise DataCorruptError(
                f"{path} has MD5 {actual}, expected the published {expected}: the file is "
                "corrupt or another version; delete it and download or copy it again"
            )
        checked.append(path)
    if not checked:
        raise DataNotFoundError(
            f"no {name} file with a published checksum under {root.resolve()} "
            "(checksums are known for MNIST, CIFAR-10 and CIFAR-100's python version)"
        )
    return checked


# --- image folders ----------------------------------------------------------------------------


def _channel_stats(
    images: torch.Tensor, chunk: int = 4096
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images on the 0-1 scale, accumulated in float64."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for start in range(0, images.shape[0], chunk):
        x = images[start : start + chunk].to(torch.float64).div_(255)
        total += x.sum(dim=(0, 2, 3))
        squares += x.square().sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(1e-12).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())


def _class_names(root: Path, classes: list[str]) -> list[str]:
    """Readable names for class folders from Tiny ImageNet's ``words.txt`` (``wnid<TAB>name,
    synonyms``) if present, else the folder names."""
    words = root / "words.txt"
    if not words.is_file():
        return classes
    table = {}
    for line in words.read_text(errors="replace").splitlines():
        wnid, _, text = line.partition("\t")
        table[wnid.strip()] = text.split(",")[0].strip()
    return [table.get(c) or c for c in classes]


def _load_image_folder(
    root: Path, image_size: int, in_chans: int, num_workers: int
) -> tuple[DatasetSpec, Split, Split | None, Split]:
    """Load ``root/train`` plus ``root/val`` and/or ``root/test``.

    Held-out folders either have class sub-folders like ``train/`` or, as in Tiny ImageNet,
    an ``images/`` folder listed in ``val_annotations.txt`` (``file<TAB>class...``); a folder
    with only unlabelled ``images/`` (Tiny ImageNet's ``test/``) is ignored. With two labelled
    held-out folders, they are used as they are; with one, it becomes the test split and
    validation is split off ``train/``.
    """
    where = root.resolve()
    if not (root / "train").is_dir():
        raise DataNotFoundError(
            f"image folder {where} has no train/ folder: put images in {where}/train/<class>/ "
            f"and {where}/test/<class>/ (optionally {where}/val/<class>/)"
        )
    files, labels, classes = formats.list_image_folder(root / "train")
    if not files:
        raise DataNotFoundError(f"no images found under {where / 'train'}/<class>/")
    present = set(labels)
    empty = [c for i, c in enumerate(classes) if i not in present]
    if empty:
        raise DataCorruptError(
            f"class folder(s) without images in {where / 'train'}: {', '.join(empty[:5])} "
            f"(image files end in {', '.join(formats.IMAGE_SUFFIXES)}); remove or fill them"
        )
    index = {name: i for i, name in enumerate(classes)}

    def labelled(folder: Path) -> tuple[list[Path], list[int]] | None:
        annotations = folder / "val_annotations.txt"
        if annotations.is_file():
            paths, names = formats.read_annotations(annotations, folder / "images")
        else:
            paths, sub_labels, sub_classes = formats.list_image_folder(folder)
            if sub_classes == ["images"] and "images" not in index:
                return None  # unlabelled test images
            names = [sub_classes[y] for y in sub_labels]
        unknown = sorted(set(names) - set(index))
        if unknown:
            raise DataCorruptError(f"{folder} has classes not in train/: {', '.join(unknown[:5])}")
        return paths, [index[n] for n in names]

    def load(paths: list[Path], split_labels: list[int]) -> Split:
        images = formats.decode_images(paths, image_size, in_chans, num_workers)
        return Split(torch.from_numpy(images), torch.tensor(split_labels, dtype=torch.int64))

    held_out = [labelled(root / n) for n in ("val", "test") if (root / n).is_dir()]
    held_out = [h for h in held_out if h is not None and h[0]]
    if not held_out:
        raise DataNotFoundError(
            f"image folder {where} needs a labelled test/ (or val/) folder: class sub-folders, "
            "or images/ with val_annotations.txt"
        )
    train = load(files, labels)
    val = load(*held_out[0]) if len(held_out) == 2 else None
    test = load(*held_out[-1])
    mean, std = _channel_stats(train.images)
    spec = DatasetSpec(
        "imagefolder",
        len(classes),
        in_chans,
        image_size,
        mean,
        std,
        max(1, len(train) // 10),
        "crop_flip",
        tuple(_class_names(root, classes)),
    )
    return spec, train, val, test


# --- public entry point -------------------------------------------------------------------------


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
        spec, train, val, test = _load_image_folder(
            root, image_size or spec.image_size, in_chans or spec.in_chans, num_workers
        )
    else:
        if image_size not in (None, spec.image_size) or in_chans not in (None, spec.in_chans):
            raise ConfigError(
                f"{name} images are {spec.in_chans}x{spec.image_size}x{spec.image_size}; "
                "image size and channels can only be chosen for imagefolder"
            )
        raw = _read_named(name, root, download)
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
