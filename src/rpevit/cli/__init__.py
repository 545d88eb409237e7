"""``rpevit`` command line: one sub-command per job (models, train, evaluate, ...)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rpevit.cli.bench import add_bench_arguments, run_bench
from rpevit.cli.evaluate import add_evaluate_arguments, run_evaluate
from rpevit.cli.grid import add_grid_arguments, run_grid_command
from rpevit.cli.models import add_models_arguments, run_models
from rpevit.cli.report import add_report_arguments, run_report_command
from rpevit.cli.train import add_train_arguments, run_train
from rpevit.errors import RpevitError


def build_parser() -> argparse.ArgumentParser:
    """The ``rpevit`` parser: one sub-parser per command, its handler as ``func``."""
    parser = argparse.ArgumentParser(
        prog="rpevit",
        description="Relative position encodings for linear-attention Vision Transformers.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    commands = [
        ("models", "list model variants with parameters and FLOPs", add_models_arguments,
         run_models),
        ("train", "train and evaluate one model", add_train_arguments, run_train),
        ("evaluate", "re-measure a trained model on the test set", add_evaluate_arguments,
         run_evaluate),
        ("grid", "train and evaluate models x seeds (resumable, shardable)", add_grid_arguments,
         run_grid_command),
        ("report", "tables and plots from run folders", add_report_arguments, run_report_command),
        ("bench", "speed, memory, scaling, fidelity, hardware ceiling", add_bench_arguments,
         run_bench),
    ]  # fmt: skip
    for name, help_text, add_arguments, handler in commands:
        command = sub.add_parser(name, help=help_text)
        add_arguments(command)
        command.set_defaults(func=handler)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rpevit`` console script; user errors become one-line messages."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (RpevitError, ValueError) as error:
        print(f"rpevit {args.command}: error: {error}", file=sys.stderr)
        return 2
