"""The command line is generated from the config sections: every field with an option can be
set from it, to a value other than its default, and the grid owns exactly its own options."""

from __future__ import annotations

import argparse
import typing
from dataclasses import fields

import pytest

from rpevit.cli.grid import add_grid_arguments
from rpevit.cli.train import MODEL_OPTIONS, add_train_arguments, config_from_args
from rpevit.config import field_default
from rpevit.training.config import SECTIONS, TrainConfig

#: A command-line value per declared field type, and the value it must become in the config.
SAMPLES = {int: ("7", 7), float: ("0.25", 0.25), str: ("abc", "abc")}
#: Fields whose type is not a plain one: the argv to set them and the value expected.
SPECIAL = {"devices": (["--devices", "0,1"], [0, 1]), "resume": (["--resume"], True)}
HINTS = typing.get_type_hints(TrainConfig)


def _declared_type(name: str) -> type:
    """A field's annotated type without None (``int | None`` -> int)."""
    kinds = [k for k in typing.get_args(HINTS[name]) if k is not type(None)] or [HINTS[name]]
    assert len(kinds) == 1, name
    return kinds[0]


def _train_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    return parser


def _flags(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions if a.option_strings}


CLI_FIELDS = [f for s in SECTIONS for f in fields(s) if f.metadata["cli"]]


def test_sections_are_the_config_fields_in_order():
    assert [f.name for s in SECTIONS for f in fields(s)] == [f.name for f in fields(TrainConfig)]


@pytest.mark.parametrize("f", CLI_FIELDS, ids=lambda f: f.name)
def test_every_field_option_sets_that_field(f):
    action = _flags(_train_parser())[f.name]
    default = field_default(f)
    if f.name in SPECIAL:
        argv, expected = SPECIAL[f.name]
    elif _declared_type(f.name) is bool:  # a switch that flips the default
        assert isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))
        argv, expected = [action.option_strings[0]], not default
    else:
        text, expected = SAMPLES[_declared_type(f.name)]
        argv = [action.option_strings[0], text]
    assert expected != default
    config = config_from_args(_train_parser().parse_args(argv))
    assert getattr(config, f.name) == expected
    assert type(getattr(config, f.name)) is type(expected)
    untouched = TrainConfig()
    for other in fields(TrainConfig):  # and nothing else
        if other.name not in (f.name, "model_options"):
            assert getattr(config, other.name) == getattr(untouched, other.name), other.name


def test_fields_off_the_command_line_have_no_option():
    flags = _flags(_train_parser())
    hidden = [f.name for s in SECTIONS for f in fields(s) if not f.metadata["cli"]]
    assert hidden and not set(hidden) & set(flags)
    assert set(flags) == {f.name for f in CLI_FIELDS} | set(MODEL_OPTIONS) | {"option", "help"}


def test_options_are_grouped_by_section():
    parser = _train_parser()
    titles = {a.dest: g.title for g in parser._action_groups for a in g._group_actions}
    for section in SECTIONS:
        for f in fields(section):
            if f.metadata["cli"]:
                assert titles[f.name] == section.TITLE


def test_grid_takes_every_train_option_but_its_own():
    grid = argparse.ArgumentParser()
    add_grid_arguments(grid)
    train_flags = {a.option_strings[0] for a in _train_parser()._actions if a.option_strings}
    grid_train = {
        a.option_strings[0]
        for g in grid._action_groups
        if g.title != "grid"
        for a in g._group_actions
    }
    owned = {"--model", "--seed", "--run-name", "--resume", "--out", "--nb-features"}
    assert grid_train == train_flags - owned
