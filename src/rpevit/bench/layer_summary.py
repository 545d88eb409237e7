"""The ``layer`` benchmark's targets: ratios and verdicts from its rows, apart from measuring."""

from __future__ import annotations

from rpevit.attention.toeplitz import FFT_THRESHOLD
from rpevit.bench.common import crossover, ratio
from rpevit.registry import PERFORMER_KERNELS


def other_method(tokens: int) -> str:
    """The Toeplitz path favor-rpe's ``auto`` does NOT take at ``tokens``: timed beside it."""
    return "fft" if tokens < FFT_THRESHOLD else "quadratic"


#: Position encodings whose favor variant should cost at most 1.5x favor-ape (the issue's target).
NEAR_APE_COST = ("string", "rope")

#: favor-rpe memory bound of the issue at N = 16384 (B = 1, 8 heads, d = 32, m = 64).
MEMORY_BOUND_MIB = 6 * 1024


def lookup(rows: list[dict], key: str) -> dict[tuple[str, int], float]:
    """``(label, tokens) -> row[key]`` over the rows that have ``key``."""
    return {(r["label"], r["tokens"]): r[key] for r in rows if r.get(key) is not None}


def summarise(rows: list[dict], tokens: list[int]) -> dict:
    """The issue's targets, each as measured ratio(s) plus a verdict."""
    t = lookup(rows, "time_per_seq_ms")
    mem = lookup(rows, "peak_mib")
    summary: dict = {}
    rpe_ratios = {n: ratio(t.get(("favor-rpe", n)), t.get(("favor-ape", n))) for n in tokens}
    small = [r for n, r in rpe_ratios.items() if n <= 256 and r is not None]
    summary["favor_rpe_vs_ape"] = {
        "ratios": rpe_ratios, "target": "<= 3 at N <= 256",
        "pass": all(r <= 3 for r in small) if small else None,
    }  # fmt: skip
    for position in NEAR_APE_COST:
        ratios = {
            n: ratio(t.get((f"favor-{position}", n)), t.get(("favor-ape", n))) for n in tokens
        }
        known = [r for r in ratios.values() if r is not None]
        summary[f"favor_{position}_vs_ape"] = {
            "ratios": ratios, "target": "<= 1.5 at every N",
            "pass": all(r <= 1.5 for r in known) if known else None,
        }  # fmt: skip
    growth = {}
    for label in sorted({r["label"] for r in rows}):
        g = ratio(t.get((label, 4096)), t.get((label, 1024)))
        if g is not None:
            growth[label] = g
    summary["growth_1024_to_4096"] = {
        "per_sequence_time_ratio": growth,
        "target": "linear <= ~5 (O(N) gives 4), softmax ~16 (O(N^2))",
        "pass": all(g <= 5 for k, g in growth.items() if not k.startswith("softmax"))
        if growth else None,
    }  # fmt: skip
    summary["favor_rpe_beats_softmax_rpe"] = crossover(
        tokens,
        [t.get(("softmax-rpe", n)) for n in tokens],
        [t.get(("favor-rpe", n)) for n in tokens],
    )
    quad, fft = [], []
    for n in tokens:  # auto's own row covers the path it takes
        auto_path, other = (
            ("quadratic", "fft") if other_method(n) == "fft" else ("fft", "quadratic")
        )
        path = {auto_path: t.get(("favor-rpe", n)), other: t.get((f"favor-rpe[{other}]", n))}
        quad.append(path["quadratic"])
        fft.append(path["fft"])
    summary["fft_vs_quadratic"] = {
        "quadratic_over_fft": {n: ratio(q, f) for n, q, f in zip(tokens, quad, fft, strict=True)},
        "fft_faster_from": crossover(tokens, quad, fft),
        "current_fft_threshold": FFT_THRESHOLD,
    }
    peak = mem.get(("favor-rpe", 16384))
    summary["favor_rpe_memory_16384"] = {
        "peak_mib": peak, "bound_mib": MEMORY_BOUND_MIB,
        "pass": None if peak is None else peak <= MEMORY_BOUND_MIB,
    }  # fmt: skip
    summary.update(summarise_frpe(t, mem, tokens))
    return summary


def summarise_frpe(t: dict, mem: dict, tokens: list[int]) -> dict:
    """The linear-cost Fourier RPE's targets: <= 1.5x its kernel's APE time at every N,
    faster than softmax-rpe from N <= 512, peak memory at N = 16384 within 2x favor-ape's."""
    summary = {}
    for kernel in PERFORMER_KERNELS:
        ratios = {
            n: ratio(t.get((f"{kernel}-frpe", n)), t.get((f"{kernel}-ape", n))) for n in tokens
        }
        known = [r for r in ratios.values() if r is not None]
        summary[f"{kernel}_frpe_vs_ape"] = {
            "ratios": ratios, "target": "<= 1.5 at every N",
            "pass": all(r <= 1.5 for r in known) if known else None,
        }  # fmt: skip
        cross = crossover(
            tokens,
            [t.get(("softmax-rpe", n)) for n in tokens],
            [t.get((f"{kernel}-frpe", n)) for n in tokens],
        )
        summary[f"{kernel}_frpe_beats_softmax_rpe"] = {
            "crossover": cross, "target": "faster from N <= 512",
            "pass": None if cross[0] == "unmeasured" else cross[0] in ("at", "below")
            and cross[1] <= 512,
        }  # fmt: skip
    peak, base = mem.get(("favor-frpe", 16384)), mem.get(("favor-ape", 16384))
    summary["favor_frpe_memory_16384"] = {
        "peak_mib": peak, "favor_ape_mib": base, "ratio": ratio(peak, base),
        "target": "<= 2x favor-ape",
        "pass": None if peak is None or base is None else peak <= 2 * base,
    }  # fmt: skip
    return summary
