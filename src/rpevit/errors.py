"""Exceptions for problems the user can fix (bad options, missing files).

The CLI catches :class:`RpevitError`, prints its message on one line and exits non-zero;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class RpevitError(Exception):
    """Base class: an error caused by the user's input or environment, not by a bug."""


class ConfigError(RpevitError, ValueError):
    """An unknown name (model, dataset, preset) or an impossible combination of options."""


class DataNotFoundError(RpevitError, FileNotFoundError):
    """A data set's files are missing and could not be downloaded."""


class DataCorruptError(RpevitError):
    """A data file exists but is truncated or not in the expected format."""


class CheckpointError(RpevitError):
    """A checkpoint or run folder is missing, unreadable or incompatible."""


class OutputError(RpevitError):
    """A result file (checkpoint, JSON, plot) could not be written, e.g. the disk is full."""


class NonFiniteLossError(RpevitError):
    """Training produced a NaN/Inf loss or gradient; no update was applied for that step."""


class TrainingInterrupted(RpevitError):
    """SIGINT/SIGTERM stopped training at a batch boundary after saving a resumable checkpoint."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


def one_line(error: BaseException) -> str:
    """``Type: first line of the message``: a cause short enough to quote in another error."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"
