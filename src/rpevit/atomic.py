"""Crash-safe file writing: a temporary file in the target's folder, fsync, ``os.replace``.

A reader (or a resumed run) sees either the previous complete file or the new complete one,
never a truncated file, whatever kills the writer (SIGKILL, power loss after the fsync, a
full disk). Write errors become :class:`~rpevit.errors.OutputError` with a one-line cause.
:func:`write_json_atomic` writes results (``metrics.json``, summaries) that way.
"""

from __future__ import annotations

import csv
import errno
import json
import math
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from rpevit.errors import OutputError

#: Name pattern of the temporary files (``.<name>.<random>.tmp``), for clean-up after a kill.
TEMP_GLOB = ".*.tmp"

_UMASK = os.umask(0)
os.umask(_UMASK)


def _write_error(path: Path, error: OSError) -> OutputError:
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        cause = "no space left on device (or quota exceeded): free some space or choose "
        cause += "another output folder"
    else:
        cause = error.strerror or str(error)
    return OutputError(f"cannot write {path}: {cause}; any previous {path.name} is unchanged")


@contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file for writing that replaces ``path`` only when the block succeeds.

    On any error (or interruption) the temporary file is removed and ``path`` keeps its old
    content; ``OSError`` becomes :class:`OutputError`.
    """
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the usual permissions
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        _fsync_dir(path.parent)
    except OSError as e:
        raise _write_error(path, e) from e
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable (best effort: not every OS/file system allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete temporary files that a killed writer left in ``folder``; return their paths."""
    folder = Path(folder)
    stale = sorted(folder.glob(TEMP_GLOB)) if folder.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def _jsonable(value: Any) -> Any:
    """Plain JSON: tensors/numpy values to numbers or lists, paths to str, NaN/inf to None."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "tolist") and callable(value.tolist):  # tensors, numpy arrays/scalars
        return _jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> Path:
    """Write ``data`` as indented JSON with :func:`atomic_write`, so readers see either the
    old file or the complete new one (a full disk raises ``OutputError``)."""
    path = Path(path)
    text = json.dumps(_jsonable(data), indent=2, allow_nan=False) + "\n"
    with atomic_write(path, "w") as f:
        f.write(text)
    return path


def write_rows_atomic(path: str | os.PathLike[str], rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write dict ``rows`` as CSV (header: the first row's keys; no rows: an empty file) with
    :func:`atomic_write`."""
    path = Path(path)
    with atomic_write(path, "w") as f:
        if rows:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
    return path
