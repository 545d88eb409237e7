"""Command-line options built from config sections: one ``--option`` per :func:`setting`.

Every option defaults to None (unset), so only what the command line gives overrides the
preset, the defaults or a resumed run's stored config.
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Collection, Sequence
from dataclasses import Field, fields
from typing import Any

from rpevit.config import Section, field_default


def _value_type(section: type[Section], f: Field[Any]) -> Any:
    """The parse type of a field from its annotation: ``int | None`` -> int, ``str`` -> None."""
    hint = typing.get_type_hints(section)[f.name]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        kinds = [k for k in typing.get_args(hint) if k is not type(None)]
        hint = kinds[0] if len(kinds) == 1 else None
    if hint in (int, float, bool):
        return hint
    if hint is str:
        return None
    raise TypeError(f"{section.__name__}.{f.name}: give its option a type= or nargs=")


def add_option(
    group: Any,
    name: str,
    *,
    default: Any = None,
    help: str | None = None,
    type: Any = None,
    flag: str | None = None,
    **option: Any,
) -> None:
    """Add the option of setting ``name`` to ``group`` (an argparse group): ``--name VALUE``
    parsed by ``type``, or for ``type=bool`` a switch (``--name`` if ``default`` is False,
    ``--no-name`` if True); non-bool defaults are appended to the help."""
    if type is bool:
        flag = flag or (f"--no-{name}" if default else f"--{name}")
        option["action"] = "store_false" if default else "store_true"
    else:
        flag = flag or f"--{name}"
        if type is not None:
            option["type"] = type
        if default is not None:
            help = f"{help} (default: {default})" if help else f"default: {default}"
    group.add_argument(flag.replace("_", "-"), dest=name, default=None, help=help, **option)


def _field_option(section: type[Section], f: Field[Any]) -> dict[str, Any]:
    """:func:`add_option`'s arguments for field ``f``: its default, help and option
    settings, the type from the annotation unless given (or ``nargs`` says otherwise)."""
    option = dict(f.metadata["option"])
    if "type" not in option and "nargs" not in option:
        option["type"] = _value_type(section, f)
    return dict(default=field_default(f), help=f.metadata["help"], **option)


def add_section_options(
    parser: argparse.ArgumentParser, sections: Sequence[type[Section]], skip: Collection[str] = ()
) -> dict[str, argparse._ArgumentGroup]:
    """One argument group per section (its ``TITLE``) with an option per command-line field,
    except the fields named in ``skip``; returns the groups by title."""
    groups = {}
    for section in sections:
        group = groups[section.TITLE] = parser.add_argument_group(section.TITLE)
        for f in fields(section):  # type: ignore[arg-type]
            if f.metadata.get("cli", False) and f.name not in skip:
                add_option(group, f.name, **_field_option(section, f))
    return groups


def given_values(args: argparse.Namespace, sections: Sequence[type[Section]]) -> dict[str, Any]:
    """The section fields the command line set (not None)."""
    names = {f.name for s in sections for f in fields(s)}  # type: ignore[arg-type]
    return {k: v for k, v in vars(args).items() if k in names and v is not None}
