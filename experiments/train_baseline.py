#!/usr/bin/env python
"""Train one baseline model from the repository root: a thin wrapper over ``rpevit train``.

    python experiments/train_baseline.py --dataset mnist [--epochs N] [--save-model]
        [--save-metrics] [--plot] [--save-plots] [--model softmax-ape] [rpevit train options]
    python experiments/train_baseline.py --dataset cifar10 --epochs 20

Every other option goes to ``rpevit train`` unchanged (``--preset quick``, ``--data-dir``,
``--resume``, ...). ``rpevit train`` always saves the model (``checkpoints/``) and the metrics
(``metrics.json``) in the run folder, since resuming and evaluation need them, so
``--save-model`` / ``--save-metrics`` only print where they are. ``--plot`` and
``--save-plots`` both save training-curve PNGs (from the CSV logs) into ``<run>/plots/``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Other options are passed to `rpevit train` (see `rpevit train --help`).",
    )
    parser.add_argument("--dataset", default="mnist", help="mnist, cifar10, ... (default: mnist)")
    parser.add_argument("--model", default="softmax-ape", help="default: softmax-ape")
    parser.add_argument("--epochs", type=int, help="default: from the preset")
    parser.add_argument(
        "--save-model", action="store_true", help="print the checkpoint paths (always saved)"
    )
    parser.add_argument(
        "--save-metrics", action="store_true", help="print the metrics path (always saved)"
    )
    parser.add_argument(
        "--plot",
        "--save-plots",
        dest="plot",
        action="store_true",
        help="save loss/accuracy curves as PNG files in <run>/plots/",
    )
    return parser.parse_known_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args, rest = parse_args(argv)
    from rpevit.cli import build_parser
    from rpevit.cli import main as rpevit_main
    from rpevit.cli.train import config_from_args
    from rpevit.report.plots import plot_run_curves
    from rpevit.runs import RunDir

    train_argv = ["train", "--model", args.model, "--dataset", args.dataset, *rest]
    if args.epochs is not None:
        train_argv += ["--epochs", str(args.epochs)]
    code = rpevit_main(train_argv)
    if code:
        return code
    parsed = build_parser().parse_args(train_argv)
    run_dir = Path(parsed.resume) if isinstance(parsed.resume, str) else None
    run = RunDir(run_dir or config_from_args(parsed).run_dir)
    if args.save_model:
        print(f"model: {run.best} (and {run.last.name})")
    if args.save_metrics:
        print(f"metrics: {run.metrics_file}")
    if args.plot:
        for path in plot_run_curves(run.path):
            print(f"plot: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
