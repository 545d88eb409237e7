"""Expected types and values of model options, so a wrong value is named with what was expected.

An :class:`OptionType` says which Python type an option takes (``bool`` never passes for a
number) and which values of that type are valid; :func:`check_option` raises a one-line
ValueError naming the option, the expected type or values, and what was given.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: How each kind reads in a message ("nb_features must be an integer >= 1, ...").
KIND_WORDS = {int: "an integer", float: "a number", bool: "a bool (True or False)", str: ""}


def _is_kind(value: Any, kind: type) -> bool:
    """Whether ``value`` has type ``kind``; ints count as floats, bools as neither."""
    if kind is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if kind is int:
        return isinstance(value, numbers.Integral)
    if kind is float:
        return isinstance(value, numbers.Real)
    return isinstance(value, kind)


@dataclass(frozen=True)
class OptionType:
    """An option's ``kind`` (int, float, bool or str) and the valid values of that kind:
    ``accepts(value)`` and its wording ``rule`` (``">= 1"``, ``"'auto' or 'fft'"``)."""

    kind: type
    rule: str = ""
    accepts: Callable[[Any], bool] = lambda value: True

    def expected(self) -> str:
        """The whole expectation in words, e.g. ``"an integer >= 1"``."""
        return " ".join(part for part in (KIND_WORDS[self.kind], self.rule) if part)


def integer(minimum: int) -> OptionType:
    """An integer ``>= minimum``."""
    return OptionType(int, f">= {minimum}", lambda value: value >= minimum)


def fraction(upper_open: bool = False) -> OptionType:
    """A number in ``[0, 1]`` (``[0, 1)`` if ``upper_open``)."""
    if upper_open:
        return OptionType(float, "in [0, 1)", lambda value: 0 <= value < 1)
    return OptionType(float, "in [0, 1]", lambda value: 0 <= value <= 1)


def positive() -> OptionType:
    """A finite number ``> 0``."""
    return OptionType(float, "> 0", lambda value: 0 < value < math.inf)


def choice(*values: str) -> OptionType:
    """One of the strings ``values``."""
    quoted = [repr(v) for v in values]
    rule = f"{', '.join(quoted[:-1])} or {quoted[-1]}" if len(values) > 1 else quoted[0]
    return OptionType(str, rule, lambda value: value in values)


FLAG = OptionType(bool)


def check_option(name: str, value: Any, option: OptionType) -> None:
    """Raise ValueError naming ``name`` and the expected type/values unless ``value`` fits."""
    if not _is_kind(value, option.kind):
        raise ValueError(
            f"{name} must be {option.expected()}, got {value!r} ({type(value).__name__})"
        )
    if not option.accepts(value):
        raise ValueError(f"{name} must be {option.rule}, got {value!r}")
