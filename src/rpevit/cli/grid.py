"""Arguments and handler of the ``rpevit grid`` sub-command.

Every ``rpevit train`` option is accepted and passed to each run, except those the grid sets
per run itself (``--model``, ``--seed``, ``--run-name``, ``--resume``), ``--out``, which
here names the grid folder, and ``--nb-features``, which here takes a list (an ablation).
"""

from __future__ import annotations

import argparse
import sys

from rpevit.cli.train import add_train_arguments, config_from_args
from rpevit.errors import ConfigError, TrainingInterrupted
from rpevit.experiments.grid import default_jobs, run_grid
from rpevit.experiments.parallel import run_grid_parallel
from rpevit.experiments.plan import parse_shard, plan_grid
from rpevit.registry import CORE_MODELS, STUDY_MODELS, list_available_models

#: ``rpevit train`` options that the grid decides per run (or, for --out and --nb-features,
#: redefines): config fields and model options by name.
GRID_OWNED = ("model", "seed", "run_name", "resume", "out", "nb_features")


def _integers(text: str) -> list[int]:
    try:
        values = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def add_grid_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``rpevit grid``: the grid's own, then every ``rpevit train`` option."""
    g = parser.add_argument_group("grid")
    g.add_argument(
        "--models",
        default="all",
        help="'all' (the 12 core variants), 'study' (those and softmax/favor/relu-frpe), "
        "'registry' (every registered model) or a comma-separated list, e.g. softmax-ape,favor-rpe",
    )
    g.add_argument(
        "--seeds", type=_integers, default=[42], help="comma-separated training seeds (default 42)"
    )
    g.add_argument(
        "--nb-features",
        type=_integers,
        default=[],
        metavar="M[,M...]",
        help="random-feature ablation: train each FAVOR+ / learnable model (ReLU with a learned "
        "projection) once per feature count, e.g. 16,32,64,128; other models once",
    )
    g.add_argument(
        "--out",
        help="grid folder; runs go to <out>/<model>/seed<seed> "
        "(default: runs/grid-<dataset>-<preset>)",
    )
    g.add_argument(
        "--shard",
        metavar="I/N",
        help="run only the I-th (1-based) of N round-robin slices of the sorted run list",
    )
    g.add_argument(
        "--records",
        metavar="DIR",
        help="copy every finished run's records (config, metrics, predictions, CSV logs; no "
        "checkpoints) to DIR/<model>/seed<seed>, and count runs recorded there as finished: "
        "commit DIR and a fresh machine continues the grid",
    )
    g.add_argument(
        "--jobs",
        default="auto",
        help="parallel worker processes, each running a shard ('auto': one single-threaded "
        "worker per CPU core on a CPU-only machine, else 1)",
    )
    add_train_arguments(parser, skip=GRID_OWNED)


def run_grid_command(args: argparse.Namespace) -> int:
    """Handler of ``rpevit grid``: 0 if every run of the grid (or shard) finished, 1 if some
    failed, ``128 + signal`` (130, 143) if a signal stopped it (re-running continues)."""
    if args.models == "all":
        models = list(CORE_MODELS)
    elif args.models == "study":
        models = list(STUDY_MODELS)
    elif args.models == "registry":
        models = list_available_models()
    else:
        models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not models:
        raise ConfigError("--models is empty; pass 'all' or model names")
    train_args = argparse.Namespace(
        **{**vars(args), "resume": None, "out": None, "nb_features": None}
    )
    config = config_from_args(train_args)
    shard = parse_shard(args.shard) if args.shard else None
    runs = len(plan_grid(models, args.seeds, args.nb_features, config.model_options))
    if args.jobs == "auto":
        jobs = 1 if shard else default_jobs(config, runs)
    elif args.jobs.isdigit() and int(args.jobs) >= 1:
        jobs = min(int(args.jobs), runs)
    else:
        raise ConfigError(f"--jobs expects a positive integer or 'auto', got {args.jobs!r}")
    if shard and jobs > 1:
        raise ConfigError("--shard and --jobs > 1 do not combine; use one or the other")
    rerun = "run the same `rpevit grid` command to continue"
    try:
        if jobs > 1:
            summary = run_grid_parallel(
                config,
                jobs=jobs,
                models=models,
                seeds=args.seeds,
                out=args.out,
                nb_features=args.nb_features,
                records=args.records,
            )
        else:
            summary = run_grid(
                config,
                models=models,
                seeds=args.seeds,
                out=args.out,
                shard=shard,
                nb_features=args.nb_features,
                records=args.records,
            )
    except TrainingInterrupted as error:
        print(f"rpevit grid: {str(error).split(';')[0]}; {rerun}", file=sys.stderr)
        return 128 + error.signum
    except KeyboardInterrupt:
        print(f"rpevit grid: interrupted; {rerun}", file=sys.stderr)
        return 130
    unfinished = [r for r in summary["runs"] if r["selected"] and r["status"] != "finished"]
    return 1 if unfinished else 0
