"""``rpevit bench``: options, the validated benchmark context, and the handler."""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path

import torch

from rpevit.bench.common import VARIANTS, BenchContext, load_average
from rpevit.bench.suite import BENCHMARKS, ON_REQUEST, TIMING, run_one, selected_benchmarks


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``bench`` options to ``parser`` (the CLI's sub-command parser)."""
    parser.add_argument(
        "benchmarks",
        nargs="*",
        default=[],
        metavar="BENCHMARK",
        help=f"which to run: {', '.join(BENCHMARKS)} or all (default: all but "
        f"{', '.join(ON_REQUEST)})",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--quick", action="store_true", help="small sizes: the whole suite in < 10 min on 2 cores"
    )
    size.add_argument(
        "--smoke", action="store_true", help="tiny sizes, seconds; checks the plumbing only"
    )
    parser.add_argument("--out", type=Path, default=Path("bench_out"), help="output folder")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up calls per callable")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per callable")
    parser.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds per timed callable; slower ones get fewer (>= 3) repeats",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument(
        "--models",
        default="all",
        help="comma-separated variants for layer/scaling/ceiling (default: all 15, *-frpe too)",
    )
    parser.add_argument(
        "--tokens",
        default=None,
        help="comma-separated patch-token counts (perfect squares) for layer/scaling/anchors",
    )
    parser.add_argument(
        "--no-memory", action="store_true", help="skip the peak-memory subprocesses"
    )
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the layers/models (needs a compiler)"
    )
    parser.add_argument("--seed", type=int, default=0)


def context_from_args(args: argparse.Namespace) -> BenchContext:
    """Validated :class:`BenchContext` from parsed arguments."""
    preset = "smoke" if args.smoke else "quick" if args.quick else "full"
    warmup, repeats, budget = TIMING[preset]
    models = VARIANTS if args.models == "all" else args.models.split(",")
    unknown = [m for m in models if m not in VARIANTS]
    if unknown:
        raise ValueError(
            f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}"
        )
    for name, value in (("--warmup", args.warmup), ("--repeats", args.repeats)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    tokens = [int(t) for t in args.tokens.split(",")] if args.tokens else None
    if tokens and any(t < 1 or int(t**0.5) ** 2 != t for t in tokens):
        raise ValueError(f"--tokens must be perfect squares (square grids), got {args.tokens}")
    return BenchContext(
        tokens=tokens,
        preset=preset,
        out=args.out,
        warmup=args.warmup or warmup,
        repeats=args.repeats or repeats,
        budget_s=args.budget or budget,
        memory=not args.no_memory,
        compile=args.compile,
        models=list(models),
        seed=args.seed,
        arguments={k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                   if k != "func"},
    )  # fmt: skip


def run_bench(args: argparse.Namespace) -> int:
    """Run the selected benchmarks; 0 if all ran (whatever their targets), 1 if one failed."""
    ctx = context_from_args(args)
    names = selected_benchmarks(args.benchmarks)
    if args.threads:
        torch.set_num_threads(args.threads)
    load = load_average()
    if load and load[0] > (os.cpu_count() or 1):
        print(
            f"rpevit bench: machine busy (1-min load {load[0]} on {os.cpu_count()} cores): "
            "absolute times are noisy, ratios within a run remain comparable; with several "
            "torch threads, --threads 1 is often far less noisy under load",
            file=sys.stderr,
        )
    start, failed = time.perf_counter(), []
    for name in names:
        torch.manual_seed(ctx.seed)
        try:
            run_one(name, ctx)
        except Exception:
            traceback.print_exc()
            print(f"rpevit bench {name}: failed (see the traceback above)", file=sys.stderr)
            failed.append(name)
    print(
        f"rpevit bench: {len(names) - len(failed)}/{len(names)} benchmarks done in "
        f"{time.perf_counter() - start:.0f} s; outputs in {ctx.out}/"
    )
    return 1 if failed else 0
