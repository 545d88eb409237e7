"""``rpevit`` command line: one sub-command per job (models, train, evaluate, ...)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rpevit.errors import RpevitError
from rpevit.flops import count_flops
from rpevit.registry import create_model, list_available_models, parse_model_name


def _models_command(args: argparse.Namespace) -> int:
    """Print every registered variant with its parameter count and forward FLOPs per image."""
    names = list_available_models() if args.models == "all" else args.models.split(",")
    for name in names:
        parse_model_name(name)
    size = dict(
        image_size=args.image_size,
        in_chans=args.in_chans,
        num_classes=args.num_classes,
        patch_size=args.patch_size,
        dim=args.dim,
        depth=args.depth,
        heads=args.heads,
        mlp_dim=args.mlp_dim,
    )
    tokens = (args.image_size // args.patch_size) ** 2
    print(
        f"{len(names)} models at image {args.in_chans}x{args.image_size}x{args.image_size}, "
        f"patch {args.patch_size} ({tokens} patch tokens), dim {args.dim}, depth {args.depth}, "
        f"heads {args.heads}, MLP {args.mlp_dim}"
    )
    width = max(len(name) for name in [*names, "model"])
    print(f"| {'model':<{width}} | {'parameters':>10} | {'MFLOPs/image':>12} |")
    print(f"| {'-' * width} | {'-' * 10}:| {'-' * 12}:|")
    for name in names:
        model = create_model(name, **size)
        params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        flops = count_flops(model, (args.in_chans, args.image_size, args.image_size))
        print(f"| {name:<{width}} | {params:>10,} | {flops / 1e6:>12.1f} |")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rpevit",
        description="Relative position encodings for linear-attention Vision Transformers.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    models = sub.add_parser("models", help="list model variants with parameters and FLOPs")
    models.add_argument("--models", default="all", help="'all' or a comma-separated list")
    models.add_argument("--image-size", type=int, default=28)
    models.add_argument("--in-chans", type=int, default=1)
    models.add_argument("--num-classes", type=int, default=10)
    models.add_argument("--patch-size", type=int, default=4)
    models.add_argument("--dim", type=int, default=256)
    models.add_argument("--depth", type=int, default=6)
    models.add_argument("--heads", type=int, default=8)
    models.add_argument("--mlp-dim", type=int, default=512)
    models.set_defaults(func=_models_command)

    from rpevit.bench import add_bench_arguments, run_bench
    from rpevit.cli.evaluate import add_evaluate_arguments, run_evaluate
    from rpevit.cli.grid import add_grid_arguments, run_grid_command
    from rpevit.cli.train import add_train_arguments, run_train
    from rpevit.report import add_report_arguments, run_report_command

    commands = [
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

