"""``rpevit evaluate``: re-measure trained models (run folders, checkpoints, grids)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from rpevit.errors import ConfigError, RpevitError
from rpevit.runs import (
    BEST,
    CHECKPOINT_DIR,
    EVALUATION,
    RunDir,
    checkpoint_evaluation_file,
    checkpointed_runs,
)
from rpevit.training.checkpointing import find_checkpoint
from rpevit.training.evaluation import evaluate
from rpevit.training.transfer import RESIZE_MODES


def _sizes(text: str) -> tuple[int, ...]:
    """``40`` or ``28,32,40`` -> a tuple of positive ints."""
    try:
        sizes = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected positive sizes like 28,32,40, got {text!r}")
    return sizes


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``rpevit evaluate``."""
    parser.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help=f"run folder (uses {CHECKPOINT_DIR}/{BEST}), .ckpt file, or a folder of runs (e.g. a "
        f"grid's --out: every run below it, each writing its own {EVALUATION})",
    )
    parser.add_argument("--data-dir", help="data folder (default: the one used for training)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--batch-size", type=int, help="evaluation batch size")
    parser.add_argument("--max-test-samples", type=int, help="evaluate a seeded test subset")
    parser.add_argument(
        "--dataset",
        help="evaluate on another data set with the same channels and classes "
        "(default: the training data set)",
    )
    parser.add_argument(
        "--image-size",
        type=_sizes,
        default=(),
        metavar="SIZE[,SIZE...]",
        help="also evaluate the test set resized to these sizes (resolution transfer), "
        "e.g. 28,32,40; results under resolution_transfer in the JSON",
    )
    parser.add_argument(
        "--resize-mode",
        choices=RESIZE_MODES,
        default="pad",
        help="pad: zero border, the image at its centring offset rounded down to whole "
        "patches (objects keep their pixel size, patches their content); upscale: bilinear "
        "resize (objects grow with the image) (default: pad)",
    )
    parser.add_argument(
        "--out",
        help=f"JSON file for the results (default: <run folder>/{EVALUATION}, or "
        f"<checkpoint>-{EVALUATION} beside a checkpoint file)",
    )


def evaluation_targets(paths: Sequence[str]) -> list[Path]:
    """Run folders and checkpoint files to evaluate: each path itself, or for a folder that is
    not a run (no ``checkpoints/``) every run folder below it."""
    targets: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir() and not RunDir(path).checkpoint_dir.is_dir():
            runs = checkpointed_runs(path)
            if not runs:
                raise ConfigError(f"{path} holds no run folders (no {CHECKPOINT_DIR}/*.ckpt)")
            targets += [run.path for run in runs]
        else:
            targets.append(path)
    return targets


def run_evaluate(args: argparse.Namespace) -> int:
    """Handler of ``rpevit evaluate``: evaluate each target, write JSON, print the headline
    numbers. With several targets one that cannot be evaluated is reported and skipped (exit
    code 1 at the end); with one, its error is the command's error."""
    targets = evaluation_targets(args.paths)
    if args.out and len(targets) > 1:
        raise ConfigError(
            f"--out names one file but {len(targets)} runs are evaluated; leave it out "
            f"(each run writes <run>/{EVALUATION})"
        )
    if len(targets) == 1:
        evaluate_one(targets[0], args)
        return 0
    failed = []
    for target in targets:
        try:
            evaluate_one(target, args)
        except RpevitError as error:
            failed.append(target)
            print(f"rpevit evaluate: skipped {target}: {error}", file=sys.stderr)
    if failed:
        print(f"rpevit evaluate: {len(failed)} of {len(targets)} not evaluated", file=sys.stderr)
    return 1 if failed else 0


def evaluate_one(path: Path, args: argparse.Namespace) -> None:
    """Evaluate one run folder or checkpoint as the ``rpevit evaluate`` options say."""
    ckpt = find_checkpoint(path)
    if args.out:
        out = Path(args.out)
    elif path.is_dir():
        out = RunDir(path).evaluation_file
    else:
        out = checkpoint_evaluation_file(ckpt)
    metrics = evaluate(
        ckpt,
        dataset=args.dataset,
        data_dir=args.data_dir,
        device=args.device,
        batch_size=args.batch_size,
        max_test_samples=args.max_test_samples,
        image_sizes=args.image_size,
        resize_mode=args.resize_mode,
        out=out,
    )
    print(
        f"{metrics['model']} on {metrics['dataset']} ({ckpt}): test accuracy "
        f"{metrics['test_accuracy']:.4f}, mean NLL {metrics['mean_nll']:.4f}, "
        f"{metrics['inference_ms_per_sample']:.3f} ms/sample; results in {out}"
    )
    transfer = metrics.get("resolution_transfer")
    if transfer:
        print(
            f"resolution transfer ({transfer['resize_mode']}): "
            + ", ".join(
                f"{r['image_size']}px {r['test_accuracy']:.4f}" for r in transfer["results"]
            )
        )
