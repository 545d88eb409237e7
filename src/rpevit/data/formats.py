"""Parsers for the standard on-disk formats (IDX, CIFAR binary, CIFAR pickle, image folders).

Each parser returns numpy arrays (``uint8`` images ``[N, C, H, W]``, integer labels) and
raises :class:`~rpevit.errors.DataCorruptError` with the file name when a file is
truncated or not in the expected format, so a bad download never becomes a silent
shape error later on.
"""

from __future__ import annotations

import gzip
import hashlib
import pickle
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from rpevit.errors import DataCorruptError

# IDX type codes (http://yann.lecun.com/exdb/mnist/): code -> big-endian numpy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

CIFAR_PIXELS = 3 * 32 * 32
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def md5(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex MD5 digest of a file, read in chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _read_bytes(path: Path) -> bytes:
    """Read a file, transparently gunzipping ``*.gz``."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataCorruptError(f"cannot read {path}: {e}") from e


def read_idx(path: str | Path) -> np.ndarray:
    """Parse an IDX file (MNIST format, optionally gzipped) into a numpy array."""
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataCorruptError(f"{path} is not an IDX file (bad magic number)")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataCorruptError(f"{path} is truncated (incomplete IDX header)")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise DataCorruptError(
            f"{path} is truncated or corrupt: header says shape {shape} ({expected} bytes), "
            f"file has {len(raw)} bytes"
        )
    return (
        np.frombuffer(raw, dtype=dtype, offset=header)
        .reshape(shape)
        .astype(dtype.newbyteorder("="))
    )


def read_cifar_binary(path: str | Path, label_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """Parse one official CIFAR binary file: records of ``label_bytes`` labels + 3072 CHW pixels.

    CIFAR-10 records have one label byte; CIFAR-100 records have two (coarse, fine) and the
    fine label (the last one) is returned.
    """
    path = Path(path)
    raw = np.frombuffer(_read_bytes(path), dtype=np.uint8)
    record = label_bytes + CIFAR_PIXELS
    if raw.size == 0 or raw.size % record:
        raise DataCorruptError(
            f"{path} is truncated or corrupt: {raw.size} bytes is not a multiple of the "
            f"{record}-byte CIFAR record"
        )
    raw = raw.reshape(-1, record)
    return raw[:, label_bytes:].reshape(-1, 3, 32, 32).copy(), raw[:, label_bytes - 1].astype(
        np.int64
    )


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that only builds numpy arrays and builtins: CIFAR pickles need no more."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def read_cifar_pickle(path: str | Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Parse one CIFAR python-version pickle (``data`` [N, 3072] + ``label_key`` list)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            entry = _NumpyOnlyUnpickler(f, encoding="latin1").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as e:
        raise DataCorruptError(f"cannot read CIFAR pickle {path}: {e}") from e
    if not isinstance(entry, dict) or "data" not in entry or label_key not in entry:
        raise DataCorruptError(f"{path} is not a CIFAR pickle (no 'data'/'{label_key}' entries)")
    data = np.asarray(entry["data"], dtype=np.uint8)
    labels = np.asarray(entry[label_key], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != CIFAR_PIXELS or data.shape[0] != labels.shape[0]:
        raise DataCorruptError(
            f"{path} is corrupt: data shape {data.shape}, {labels.shape[0]} labels "
            f"(expected [N, {CIFAR_PIXELS}] and N labels)"
        )
    return data.reshape(-1, 3, 32, 32), labels


def read_label_names_pickle(path: str | Path, key: str) -> list[str] | None:
    """Class names from a CIFAR ``meta`` pickle, or None if the file is absent or unreadable."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with open(path, "rb") as f:
            names = _NumpyOnlyUnpickler(f, encoding="latin1").load().get(key)
    except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ValueError):
        return None
    return [str(n) for n in names] if names else None


def read_label_names_text(path: str | Path) -> list[str] | None:
    """Class names from a text file with one name per line, or None if absent."""
    path = Path(path)
    if not path.is_file():
        return None
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return names or None


def list_image_folder(root: Path) -> tuple[list[Path], list[int], list[str]]:
    """Files under ``root/<class>/**`` with image suffixes, their class indices and class names.

    Classes are the sorted sub-folder names (like torchvision's ``ImageFolder``); files may
    sit in nested folders (Tiny ImageNet keeps them in ``<class>/images/``).
    """
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    files: list[Path] = []
    labels: list[int] = []
    for index, name in enumerate(classes):
        found = sorted(
            p
            for p in (root / name).rglob("*")
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        )
        files.extend(found)
        labels.extend([index] * len(found))
    return files, labels, classes


def read_annotations(path: Path, images: Path) -> tuple[list[Path], list[str]]:
    """Files and class names from a Tiny ImageNet ``val_annotations.txt`` (``file<TAB>class
    <TAB>box...`` per line), with the files under ``images``."""
    files, names = [], []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 2:
            raise DataCorruptError(f"{path} line {number}: expected 'file<TAB>class', got {line!r}")
        file = images / parts[0].strip()
        if not file.is_file():
            raise DataCorruptError(f"{path} line {number}: {file} does not exist")
        files.append(file)
        names.append(parts[1].strip())
    return files, names


def decode_images(
    files: Sequence[Path], size: int, channels: int, num_workers: int = 0
) -> np.ndarray:
    """Decode image files into one ``uint8 [N, channels, size, size]`` array.

    Pillow decodes and resizes (antialiased bilinear) each file; ``num_workers`` threads
    work in parallel (Pillow releases the GIL while decoding and resizing).
    """
    from PIL import Image, UnidentifiedImageError

    mode = "L" if channels == 1 else "RGB"

    def load(path: Path) -> np.ndarray:
        try:
            with Image.open(path) as image:
                image = image.convert(mode)
                if image.size != (size, size):
                    image = image.resize((size, size), Image.Resampling.BILINEAR)
                array = np.asarray(image, dtype=np.uint8)
        except (OSError, UnidentifiedImageError, ValueError) as e:
            raise DataCorruptError(f"cannot decode image {path}: {e}") from e
        return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)

    out = np.empty((len(files), channels, size, size), dtype=np.uint8)
    with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
        for i, image in enumerate(pool.map(load, files)):
            out[i] = image
    return out
