"""Shared benchmark machinery: run context, interleaved timing, fits, machine info, outputs.

Timing convention: every callable is warmed up, then the callables being compared are run
round-robin (one call each per round) so load changes on a shared machine hit them alike;
the median of each one's timed calls is reported and comparisons are ratios of medians taken
in the same round-robin.
"""

from __future__ import annotations

import math
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rpevit.atomic import atomic_write, write_json_atomic
from rpevit.metrics import git_commit
from rpevit.registry import STUDY_MODELS

#: The study's variants (the 12 core ones and each kernel's linear-cost Fourier RPE) by kernel,
#: each ``*-frpe`` right after its exact ``*-rpe`` (a stable sort on the exact RPE's place).
VARIANTS = sorted(STUDY_MODELS, key=lambda name: STUDY_MODELS.index(name.replace("-frpe", "-rpe")))


@dataclass
class BenchContext:
    """Options shared by every benchmark of one invocation."""

    preset: str = "quick"  # "smoke" (tiny, for tests), "quick" (< 10 min suite) or "full"
    out: Path = Path("bench_out")
    warmup: int = 1
    repeats: int = 5
    budget_s: float = 2.0  # per timed callable: fewer repeats (>= 3) when calls are slow
    memory: bool = True
    compile: bool = False
    models: list[str] = field(default_factory=lambda: list(VARIANTS))
    tokens: list[int] | None = None  # overrides the preset's token counts (layer/scaling/anchors)
    seed: int = 0
    command: str = field(default_factory=lambda: command_line())
    arguments: dict = field(default_factory=dict)  # the parsed bench arguments


def preset_settings(table: dict[str, dict], ctx: BenchContext) -> dict:
    """A copy of ``table[ctx.preset]`` with ``tokens`` replaced by ``ctx.tokens`` if given."""
    settings = dict(table[ctx.preset])
    if ctx.tokens and "tokens" in settings:
        settings["tokens"] = list(ctx.tokens)
    return settings


def command_line() -> str:
    """The invoking process's command line, the console script's path shortened to ``rpevit``."""
    program = "rpevit" if Path(sys.argv[0]).name == "rpevit" else sys.argv[0]
    return " ".join([program, *(shlex.quote(a) for a in sys.argv[1:])])


def variant_style(label: str) -> dict:
    """Colour by position encoding, line style by kernel."""
    colours = {"ape": "C0", "rpe": "C1", "string": "C2", "rope": "C3", "frpe": "C6"}
    lines = {"softmax": "-", "favor": "--", "relu": ":"}
    kernel, _, rest = label.partition("-")
    position, _, method = rest.partition("[")
    style = {
        "color": colours.get(position, "k"),
        "linestyle": lines.get(kernel, "-"),
        "marker": "o",
    }
    if method:
        style.update(color="C4" if method.startswith("q") else "C5", marker="x")
    return style


def time_once(fn: Callable[[], Any]) -> float:
    """Wall seconds of one call."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


#: Calls slower than this many timing budgets are timed once (their warm-up call).
SLOW_CALLS = 5


def log(message: str) -> None:
    """Progress line on stderr (stdout carries the tables)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def time_interleaved(
    fns: dict[str, Callable[[], Any]], ctx: BenchContext
) -> dict[str, list[float]]:
    """Timed seconds per callable, run round-robin after ``ctx.warmup`` warm-up calls each
    (at least 1; 2 with ``--compile``, whose first call compiles).

    A callable gets ``ctx.repeats`` timed calls, or as many as fit in ``ctx.budget_s`` seconds
    by its last warm-up call, but at least ``min(3, repeats)``, or 1 if one call exceeds the
    budget. Without ``--compile``, a call slower than ``SLOW_CALLS x budget_s`` is not repeated:
    its warm-up call is the sample (one-time initialisation is negligible at that length).
    """
    targets, times = {}, {name: [] for name in fns}
    warmup = max(ctx.warmup, 2 if ctx.compile else 1)
    for name, fn in fns.items():
        for _ in range(warmup):
            estimate = time_once(fn)
        floor = 1 if estimate > ctx.budget_s else min(3, ctx.repeats)
        targets[name] = max(floor, min(ctx.repeats, int(ctx.budget_s / max(estimate, 1e-9))))
        if estimate > SLOW_CALLS * ctx.budget_s and not ctx.compile:
            times[name], targets[name] = [estimate], 0
        log(f"  {name}: warm-up {estimate * 1e3:.1f} ms -> {targets[name] or 'no more'} calls")
    for round_index in range(max(targets.values(), default=0)):
        for name, fn in fns.items():
            if round_index < targets[name]:
                times[name].append(time_once(fn))
    return times


def median(values: Sequence[float]) -> float | None:
    """Median, or None for no values."""
    return statistics.median(values) if values else None


def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b``, None if either is missing."""
    return a / b if a is not None and b else None


def fit_exponent(ns: Sequence[float], ts: Sequence[float]) -> float | None:
    """Least-squares slope of ``log t`` against ``log N``: t ~ c N^slope (None for < 2 points)."""
    pairs = [(math.log(n), math.log(t)) for n, t in zip(ns, ts, strict=True) if t and t > 0]
    if len(pairs) < 2:
        return None
    mean_x = sum(x for x, _ in pairs) / len(pairs)
    mean_y = sum(y for _, y in pairs) / len(pairs)
    sxx = sum((x - mean_x) ** 2 for x, _ in pairs)
    if sxx == 0:
        return None
    return sum((x - mean_x) * (y - mean_y) for x, y in pairs) / sxx


def crossover(ns: Sequence[float], slow: Sequence[float | None], fast: Sequence[float | None]):
    """Smallest N from which ``fast`` stays below ``slow``, log-log interpolated between the
    bracketing points: ``("at", N)``; ``("below", N0)`` if already faster at the first N;
    if never faster, ``("extrapolated", N)`` from the last two points' trend (``("never",
    None)`` if that trend does not close the gap). Pairs with a missing value are ignored."""
    points = [(n, s, f) for n, s, f in zip(ns, slow, fast, strict=True) if s and f]
    if not points:
        return ("unmeasured", None)
    if points[-1][2] >= points[-1][1]:
        if len(points) < 2:
            return ("never", None)
        n_star = _log_root(*points[-2], *points[-1])
        return ("extrapolated", n_star) if n_star and n_star > points[-1][0] else ("never", None)
    index = len(points) - 1
    while index > 0 and points[index - 1][2] < points[index - 1][1]:
        index -= 1
    if index == 0:
        return ("below", points[0][0])
    return ("at", _log_root(*points[index - 1], *points[index]))


def _log_root(n0: float, s0: float, f0: float, n1: float, s1: float, f1: float) -> float | None:
    """N where the straight line through ``(log n, log f/s)`` at both points crosses zero."""
    g0, g1 = math.log(f0 / s0), math.log(f1 / s1)
    if g0 == g1:
        return None
    frac = g0 / (g0 - g1)
    return math.exp(math.log(n0) + frac * (math.log(n1) - math.log(n0)))


def describe_crossover(result: tuple[str, float | None], largest: float) -> str:
    """Human-readable form of :func:`crossover`'s answer."""
    kind, n = result
    if kind == "at":
        return f"N ~ {n:,.0f}"
    if kind == "below":
        return f"faster already at N = {n:,.0f}"
    if kind == "extrapolated":
        return f"not faster up to N = {largest:,.0f}; trend extrapolates to N ~ {n:,.0f}"
    if kind == "never":
        return f"not faster up to N = {largest:,.0f}"
    return "not measured"


def _read_proc(path: str, key: str) -> str | None:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def load_average() -> list[float] | None:
    """1/5/15-minute load averages (None where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_info() -> dict[str, Any]:
    """Hardware, software and load, recorded with every result."""
    return {
        "cpu": _read_proc("/proc/cpuinfo", "model name") or platform.processor(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_total": _read_proc("/proc/meminfo", "MemTotal"),
        "cuda": torch.cuda.is_available(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": git_commit(),
        "load_average_start": load_average(),
    }


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """GitHub Markdown table; first column left-aligned, the rest right-aligned."""
    lines = [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join([":--"] + ["--:"] * (len(header) - 1)) + " |",
    ]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt(value: float | None, digits: int = 3) -> str:
    """Compact number: ``-`` if missing, thousands separators from 1000, else ``digits``
    significant digits (scientific below 1e-3)."""
    if value is None:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if value == 0 or abs(value) >= 1e-3:
        return f"{value:.{digits}g}"
    return f"{value:.2e}"


def verdict(ok: bool | None) -> str:
    """PASS / FAIL / n/a for a target check."""
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def loglog_axes(axes_titles, suptitle: str, figure) -> None:
    """Shared styling of the N-scaling plots: log2 x (patch tokens), log y, grid, legend."""
    for axis, title in axes_titles:
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xlabel("patch tokens N")
        axis.set_title(title)
        axis.grid(True, which="both", alpha=0.3)
    axes_titles[0][0].legend(fontsize=7, ncol=2)
    figure.suptitle(suptitle)


def write_outputs(ctx: BenchContext, name: str, record: dict, markdown: str, plot) -> dict:
    """Write ``<name>.json``, ``<name>.md`` and ``<name>.png`` (via ``plot(path)``) into
    ``ctx.out`` atomically, print the Markdown, and return the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(ctx.out)
    record["machine"]["load_average_end"] = load_average()
    paths = {"json": out / f"{name}.json", "md": out / f"{name}.md", "png": out / f"{name}.png"}
    write_json_atomic(paths["json"], record)
    header = (
        f"# rpevit bench {name} ({ctx.preset})\n\n"
        f"Machine: {record['machine']['cpu']}, {record['machine']['cpu_count']} cores, "
        f"{record['machine']['torch_threads']} torch threads, torch {record['machine']['torch']}; "
        f"load {record['machine']['load_average_start']} -> "
        f"{record['machine']['load_average_end']}; {record['seconds']:.0f} s.  \n"
        f"Command: `{record['command']}`\n\n"
    )
    text = header + markdown.rstrip() + "\n"
    with atomic_write(paths["md"], "w") as f:
        f.write(text)
    figure = plot()
    with atomic_write(paths["png"]) as f:
        figure.savefig(f, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    print(text)
    return {k: str(v) for k, v in paths.items()}


def new_record(ctx: BenchContext, name: str, settings: dict) -> dict:
    """Skeleton of a result record: what ran, where, how."""
    return {
        "benchmark": name,
        "preset": ctx.preset,
        "command": ctx.command,
        "arguments": ctx.arguments,
        "machine": machine_info(),
        "settings": settings,
        "timing": {
            "warmup": ctx.warmup,
            "repeats": ctx.repeats,
            "budget_s": ctx.budget_s,
            "statistic": "median of timed calls, callables interleaved round-robin",
            "compile": ctx.compile,
        },
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
