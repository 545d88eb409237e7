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
