"""The benchmark suite: which benchmarks exist, in what order, and how one is run."""

from __future__ import annotations

import importlib

from rpevit.bench.common import BenchContext, write_outputs

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
