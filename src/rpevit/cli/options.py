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


def add_option(group: Any, section: type[Section], f: Field[Any]) -> None:
    """Add the option of field ``f`` of ``section`` to ``group`` (an argparse group)."""
    option = dict(f.metadata["option"])
    default, help_text = field_default(f), f.metadata["help"]
    if "type" in option or "nargs" in option:
        kind = option.pop("type", None)
    else:
        kind = _value_type(section, f)
    if kind is bool:
        flag = option.pop("flag", f"--no-{f.name}" if default else f"--{f.name}")
        option["action"] = "store_false" if default else "store_true"
    else:
        flag = option.pop("flag", f"--{f.name}")
        if kind is not None:
            option["type"] = kind
        if default is not None and help_text is not None:
            help_text = f"{help_text} (default: {default})"
        elif default is not None:
            help_text = f"default: {default}"
    flag = flag.replace("_", "-")
    dest = {} if flag.lstrip("-").replace("-", "_") == f.name else {"dest": f.name}
    group.add_argument(flag, default=None, help=help_text, **dest, **option)


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
                add_option(group, section, f)
    return groups


def given_values(args: argparse.Namespace, sections: Sequence[type[Section]]) -> dict[str, Any]:
    """The section fields the command line set (not None)."""
    names = {f.name for s in sections for f in fields(s)}  # type: ignore[arg-type]
    return {k: v for k, v in vars(args).items() if k in names and v is not None}
