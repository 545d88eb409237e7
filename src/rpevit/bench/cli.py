"""Arguments and dispatch of ``rpevit bench``."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
import traceback
from pathlib import Path

import torch

from rpevit.bench.common import VARIANTS, BenchContext, load_average, write_outputs

#: Benchmark name -> module under ``rpevit.bench`` with ``run(ctx) -> record``,
#: ``markdown(record) -> str`` and ``plot(record) -> Figure``; run in order.
BENCHMARKS = {
    "layer": "rpevit.bench.layer",
    "scaling": "rpevit.bench.scaling",
    "anchors": "rpevit.bench.anchors",
    "fidelity": "rpevit.bench.fidelity",
    "ceiling": "rpevit.bench.ceiling",
    "training": "rpevit.bench.training",
    "data": "rpevit.bench.data",
}
#: Run only when named, since they need the data sets: ``training`` trains real CIFAR-10 runs
#: (minutes), ``data`` times the input pipeline.
ON_REQUEST = ("training", "data")

#: Timing defaults per preset: (warm-up calls, timed calls, seconds budget per callable).
TIMING = {"smoke": (1, 2, 0.5), "quick": (1, 5, 2.0), "full": (2, 10, 10.0)}


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


def selected_benchmarks(requested: list[str]) -> list[str]:
    """Benchmark names to run, in suite order; nothing or ``all`` means every one but the
    ``ON_REQUEST`` ones."""
    unknown = [name for name in requested if name not in BENCHMARKS and name != "all"]
    if unknown:
        raise ValueError(
            f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}, all"
        )
    if not requested or "all" in requested:
        return [name for name in BENCHMARKS if name not in ON_REQUEST]
    return [name for name in BENCHMARKS if name in requested]


def run_one(name: str, ctx: BenchContext) -> dict:
    """Run benchmark ``name``, write ``<name>.{json,md,png}`` into ``ctx.out``, return the
    record."""
    module = importlib.import_module(BENCHMARKS[name])
    record = module.run(ctx)
    write_outputs(ctx, name, record, module.markdown(record), lambda: module.plot(record))
    return record


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
