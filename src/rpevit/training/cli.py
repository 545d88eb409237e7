"""Arguments and handlers for the ``rpevit train`` and ``rpevit evaluate`` sub-commands.

``rpevit.cli`` adds these to its sub-parsers; the handlers return an exit code and raise
:class:`~rpevit.errors.RpevitError` for bad input, which the CLI prints on one line.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_only

from rpevit.data import list_datasets
from rpevit.errors import ConfigError, RpevitError, TrainingInterrupted
from rpevit.runs import (
    BEST,
    CHECKPOINT_DIR,
    EVALUATION,
    LAST,
    RunDir,
    checkpoint_evaluation_file,
    checkpointed_runs,
)
from rpevit.training.checkpointing import find_checkpoint, resume_checkpoint
from rpevit.training.config import PRECISIONS, PRESETS, TrainConfig
from rpevit.training.evaluation import evaluate
from rpevit.training.fit import train
from rpevit.training.transfer import RESIZE_MODES

#: CLI options that become ``create_model`` options (``TrainConfig.model_options``).
MODEL_OPTIONS = ("nb_features", "redraw_interval", "qk_norm", "pool", "ape", "dropout")


def _devices(text: str) -> int | str | list[int]:
    """``auto``, a count (``2``) or a comma-separated list of device ids (``0,1``)."""
    if text == "auto":
        return text
    try:
        return [int(d) for d in text.split(",") if d] if "," in text else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected 'auto', a count or ids like 0,1: {text!r}"
        ) from None


def _option(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE parsed as a Python literal when possible (``3``, ``True``)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key.replace("-", "_"), ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key.replace("-", "_"), value


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``rpevit train``; unset options (None) come from the preset."""
    g = parser.add_argument_group("what to train")
    g.add_argument("--model", help="model name, e.g. relu-ape, favor-rope (see `rpevit models`)")
    g.add_argument("--dataset", help=f"one of {', '.join(list_datasets())} (default: mnist)")
    g.add_argument(
        "--preset",
        help=f"one of {', '.join(PRESETS)} (default: paper); quick is sized for a CPU",
    )
    g.add_argument("--data-dir", help="data folder (default: $RPEVIT_DATA_DIR or ./data)")
    g.add_argument("--max-train-samples", type=int, help="seeded subset of the training split")
    g.add_argument("--max-val-samples", type=int, help="seeded subset of the validation split")
    g.add_argument("--max-test-samples", type=int, help="seeded subset of the test split")
    g.add_argument("--image-size", type=int, help="imagefolder only: resize images to this size")
    g.add_argument("--in-chans", type=int, help="imagefolder only: 1 (grey) or 3 (RGB) channels")
    g.add_argument(
        "--verify-data",
        action="store_true",
        default=None,
        help="check the data files' published MD5 checksums before training",
    )
    g.add_argument("--no-augment", dest="augment", action="store_false", default=None)
    g.add_argument("--no-download", dest="download", action="store_false", default=None)

    g = parser.add_argument_group("architecture (default: from the preset)")
    g.add_argument("--patch-size", type=int)
    g.add_argument("--dim", type=int)
    g.add_argument("--depth", type=int)
    g.add_argument("--heads", type=int)
    g.add_argument("--mlp-dim", type=int)
    g.add_argument(
        "--nb-features",
        type=int,
        help="features per head m (FAVOR+, learnable, ReLU with a learned projection)",
    )
    g.add_argument("--redraw-interval", type=int, help="FAVOR+ feature redraw period in steps")
    g.add_argument("--qk-norm", action="store_true", default=None, help="l2-normalise q and k")
    g.add_argument("--pool", help="cls or mean")
    g.add_argument("--no-ape", dest="ape", action="store_false", default=None)
    g.add_argument("--dropout", type=float)
    g.add_argument(
        "--option",
        type=_option,
        action="append",
        metavar="KEY=VALUE",
        help="any other create_model option, e.g. --option rope_mode=mixed (repeatable)",
    )

    g = parser.add_argument_group("optimisation (default: from the preset)")
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", type=int)
    g.add_argument("--eval-batch-size", type=int)
    g.add_argument("--lr", type=float)
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--warmup-epochs", type=float)
    g.add_argument("--min-lr-ratio", type=float, help="final LR / peak LR (default 0.01)")
    g.add_argument("--label-smoothing", type=float, help="default 0.1")
    g.add_argument("--grad-clip", type=float, help="gradient norm clip (default 1.0; 0 = off)")
    g.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    g.add_argument(
        "--min-steps",
        type=int,
        help="train at least this many optimizer steps, raising the epochs on small data "
        "(default: the preset's minimum when --epochs is not given; 0 = off)",
    )
    g.add_argument("--seed", type=int, help="training seed (default 0)")
    g.add_argument("--split-seed", type=int, help="seed of the train/val split (default 42)")

    g = parser.add_argument_group("run folder and hardware")
    g.add_argument("--out", help="parent folder of run folders (default: runs)")
    g.add_argument(
        "--run-name", help="run folder name (default: <dataset>-<model>-<preset>-seed<seed>)"
    )
    g.add_argument(
        "--resume",
        nargs="?",
        const=True,
        help=f"continue from {LAST} of this run, or of the given run folder / checkpoint",
    )
    g.add_argument("--overwrite", action="store_true", default=None, help="replace an existing run")
    g.add_argument(
        "--init-from",
        metavar="RUN_OR_CKPT",
        help="start from the weights of this run/checkpoint (e.g. a softmax model of the same "
        "position encoding and sizes); only the new attention kernel's weights are fresh. "
        "In `rpevit grid`, a grid folder: each run starts from its softmax-<position>/seed<s>",
    )
    g.add_argument("--checkpoint-every-n-steps", type=int, help=f"also save {LAST} every N steps")
    g.add_argument("--accelerator", help="auto, cpu or gpu (default: auto)")
    g.add_argument("--devices", type=_devices, help="auto, a count, or ids like 0,1")
    g.add_argument("--num-nodes", type=int)
    g.add_argument("--strategy", help="Lightning strategy, e.g. auto, ddp (default: auto)")
    g.add_argument("--precision", help=f"one of {', '.join(PRECISIONS)} (default: 32-true)")
    g.add_argument("--threads", type=int, help="torch CPU threads")
    g.add_argument(
        "--compile",
        action="store_true",
        default=None,
        help="torch.compile (inductor) the model for training; eager with a one-line note "
        "where it cannot compile",
    )
    g.add_argument("--num-workers", type=int, help="threads decoding imagefolder images")
    g.add_argument("--no-progress", dest="progress_bar", action="store_false", default=None)
    g.add_argument("--log-every-n-steps", type=int, help="logging period in steps (default 50)")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """A :class:`TrainConfig` from parsed ``rpevit train`` options.

    With ``--resume PATH`` the stored config of that checkpoint is the base and only the
    options given on the command line change it.
    """
    fields = set(TrainConfig.__dataclass_fields__)
    given = {
        k: v
        for k, v in vars(args).items()
        if k in fields and k != "model_options" and v is not None
    }
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
