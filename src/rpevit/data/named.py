"""MNIST and CIFAR-10/100 files: find, parse, download via torchvision, check published MD5s."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rpevit.data import formats
from rpevit.data.specs import DATA_DIR_ENV, get_spec, resolve_data_dir
from rpevit.errors import DataCorruptError, DataNotFoundError


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


def read_named(name: str, root: Path, download: bool) -> _Raw:
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
