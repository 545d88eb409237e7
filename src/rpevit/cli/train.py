"""``rpevit train``: options generated from the config sections, and the handler.

The handler returns an exit code and raises :class:`~rpevit.errors.RpevitError` for bad
input, which the CLI prints on one line.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Collection
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_only

from rpevit.cli.options import add_option, add_section_options, given_values
from rpevit.errors import ConfigError, TrainingInterrupted
from rpevit.runs import CHECKPOINT_DIR, LAST, RunDir
from rpevit.training.checkpointing import resume_checkpoint
from rpevit.training.config import SECTIONS, ModelConfig, TrainConfig
from rpevit.training.fit import train


def _option(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE parsed as a Python literal when possible (``3``, ``True``)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key.replace("-", "_"), ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key.replace("-", "_"), value


#: ``create_model`` options with their own flag (into ``TrainConfig.model_options``); any
#: other goes through ``--option KEY=VALUE``.
MODEL_OPTIONS: dict[str, dict[str, Any]] = {
    "nb_features": dict(
        type=int, help="features per head m (FAVOR+, learnable, ReLU with a learned projection)"
    ),
    "redraw_interval": dict(
        type=int, help="FAVOR+: redraw the random projection every N training steps (0: never)"
    ),
    "redraw_stop": dict(
        type=float, help="FAVOR+: no redraw after this fraction of the training steps"
    ),
    "qk_norm": dict(type=bool, default=False, help="l2-normalise q and k"),
    "pool": dict(help="cls or mean"),
    "ape": dict(type=bool, default=True, help="no absolute position embedding"),
    "dropout": dict(type=float),
}


def add_train_arguments(parser: argparse.ArgumentParser, skip: Collection[str] = ()) -> None:
    """Options of ``rpevit train``, one group per config section, except the fields and model
    options named in ``skip``; unset options (None) come from the preset."""
    groups = add_section_options(parser, SECTIONS, skip)
    architecture = groups[ModelConfig.TITLE]
    for name, option in MODEL_OPTIONS.items():
        if name not in skip:
            add_option(architecture, name, **option)
    architecture.add_argument(
        "--option",
        type=_option,
        action="append",
        metavar="KEY=VALUE",
        help="any other create_model option, e.g. --option rope_mode=mixed (repeatable)",
    )


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """A :class:`TrainConfig` from parsed ``rpevit train`` options.

    With ``--resume PATH`` the stored config of that checkpoint is the base and only the
    options given on the command line change it.
    """
    given = given_values(args, SECTIONS)
    options = {k: getattr(args, k) for k in MODEL_OPTIONS if getattr(args, k, None) is not None}
    options.update(dict(args.option or []))
    base: dict[str, Any] = {}
    if isinstance(args.resume, str):
        stored = resume_checkpoint(args.resume)[1]["hyper_parameters"]
        base = dict(stored.get("config") or {})
        if not base:
            raise ConfigError(f"{args.resume} holds no training config to resume")
    base.update(given)
    base["model_options"] = {**base.get("model_options", {}), **options}
    if "grad_clip" in given and not given["grad_clip"]:
        base["grad_clip"] = None
    return TrainConfig.from_dict(base)


def run_train(args: argparse.Namespace) -> int:
    """Handler of ``rpevit train``: train, then print the headline numbers.

    SIGINT/SIGTERM during training save a checkpoint and exit with ``128 + signal number``
    (130, 143) after a one-line message; so does Ctrl-C outside training (nothing to save).
    """
    try:
        metrics = train(config_from_args(args))
    except TrainingInterrupted as e:
        if rank_zero_only.rank == 0:  # every DDP rank stops; one message is enough
            print(f"rpevit train: {e}", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print(
            "rpevit train: interrupted outside the training loop (loading data or evaluating): "
            f"run the same command with --resume if the run has {CHECKPOINT_DIR}/{LAST}",
            file=sys.stderr,
        )
        return 130
    if metrics:
        run = RunDir(Path(metrics["checkpoint"]).parent.parent)
        print(
            f"{metrics['model']} on {metrics['dataset']}: test accuracy "
            f"{metrics['test_accuracy']:.4f}, val accuracy {metrics['val_accuracy']:.4f}, "
            f"mean NLL {metrics['mean_nll']:.4f}; results in {run.metrics_file}"
        )
    return 0
