"""Config sections: dataclasses whose fields also declare their command-line option.

A field is declared once, with :func:`setting`; ``rpevit.cli`` builds the ``--option`` from
it, so a new config field is one line. Records written by older versions load through
:meth:`Section.from_record`, which takes the section's keys and keeps defaults for missing
ones.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import MISSING, field, fields
from typing import Any, TypeVar

S = TypeVar("S", bound="Section")


def setting(
    default: Any = None,
    help: str | None = None,
    *,
    factory: Callable[[], Any] | None = None,
    cli: bool = True,
    **option: Any,
) -> Any:
    """A config field and its command-line option.

    ``help`` is the option's help (the default is appended unless it is None or a bool);
    ``cli=False`` keeps the field off the command line; further keyword arguments go to
    ``argparse.add_argument`` (``flag="--no-progress"`` renames the option, ``type``,
    ``nargs``, ``const``, ``metavar``). Without ``type`` the option's type is the field's
    (``int | None`` -> int); a bool field is a switch (``--x`` if it defaults to False,
    ``--no-x`` if True).
    """
    metadata = {"help": help, "cli": cli, "option": option}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


class Section:
    """Base of config sections (dataclasses): typed parts of a run's config."""

    #: Title of the section's group of command-line options.
    TITLE = ""

    @classmethod
    def from_record(cls: type[S], record: Mapping[str, Any]) -> S:
        """This section from a (possibly older, flat) config record: its own keys, defaults
        for keys the record lacks, other keys ignored."""
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in record.items() if k in names})


def field_default(f: Any) -> Any:
    """The default value of dataclass field ``f`` (calling its factory), or MISSING."""
    if f.default_factory is not MISSING:
        return f.default_factory()
    return f.default
