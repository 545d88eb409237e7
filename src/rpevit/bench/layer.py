"""``layer``: forward + backward time and peak memory of ONE attention layer, every variant
(the 12 core ones and ``*-frpe``), with ``batch * tokens`` held constant, plus favor-rpe's
quadratic vs FFT Toeplitz paths."""

from __future__ import annotations

import gc
import time
from pathlib import Path

from rpevit.attention.toeplitz import FFT_THRESHOLD
from rpevit.bench.common import (
    BenchContext,
    describe_crossover,
    fmt,
    loglog_axes,
    md_table,
    median,
    new_record,
    preset_settings,
    ratio,
    time_interleaved,
    variant_style,
    verdict,
)
from rpevit.bench.layer_summary import NEAR_APE_COST, lookup, other_method, summarise
from rpevit.bench.memory import measure_peak_memory
from rpevit.bench.workloads import build_step
from rpevit.registry import PERFORMER_KERNELS

SETTINGS = {
    "smoke": dict(tokens=[16, 64], batch_tokens=64, heads=2, head_dim=8, nb_features=8,
                  memory_all_paths=True),
    "quick": dict(tokens=[64, 256, 1024, 4096], batch_tokens=1024, heads=8, head_dim=32,
                  nb_features=64, memory_all_paths=False, min_tokens_other_path=1024,
                  min_tokens_memory=1024),
    "full": dict(tokens=[64, 256, 1024, 4096, 16384], batch_tokens=4096, heads=8, head_dim=32,
                 nb_features=64, memory_all_paths=True, memory_only=[["favor-rpe", 16384]]),
}  # fmt: skip


def available_mib() -> float:
    """MemAvailable in MiB (infinite where unknown)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("inf")


def estimated_mib(variant: str, tokens: int, heads: int) -> float:
    """Rough peak of the dense parts: softmax-rpe and softmax-frpe expand their bias to
    ``[h, N, N]`` (gather, pad, gradient); other variants are O(N)."""
    if variant not in ("softmax-rpe", "softmax-frpe"):
        return 0.0
    return (3 * 8 * tokens**2 + 4 * 4 * heads * tokens**2) / 2**20


def _spec(label: str, tokens: int, s: dict, ctx: BenchContext) -> dict:
    variant, _, method = label.partition("[")
    return {
        "kind": "layer",
        "variant": variant,
        "rpe_method": method.rstrip("]") or None,
        "tokens": tokens,
        "batch": max(1, s["batch_tokens"] // tokens),
        "heads": s["heads"],
        "head_dim": s["head_dim"],
        "nb_features": s["nb_features"],
        "compile": ctx.compile,
        "seed": ctx.seed,
    }


def run(ctx: BenchContext) -> dict:
    """Time and measure every variant (and favor-rpe's two Toeplitz paths) at each N."""
    s = preset_settings(SETTINGS, ctx)
    start = time.perf_counter()
    labels = list(ctx.models)
    if "favor-rpe" in labels:
        labels += [f"favor-rpe[{m}]" for m in dict.fromkeys(map(other_method, s["tokens"]))]
    record = new_record(ctx, "layer", {**s, "labels": labels, "fft_threshold": FFT_THRESHOLD})
    rows = []
    for tokens in s["tokens"]:
        specs, skipped = {}, {}
        for label in labels:
            if label.startswith("favor-rpe[") and (
                label != f"favor-rpe[{other_method(tokens)}]"  # auto's own row has that path
                or tokens < s.get("min_tokens_other_path", 0)
            ):
                continue
            need = estimated_mib(label, tokens, s["heads"])
            if need > 0.6 * available_mib():
                skipped[label] = f"skipped: needs ~{need / 1024:.0f} GiB (dense N x N bias)"
            else:
                specs[label] = _spec(label, tokens, s, ctx)
        steps = {label: build_step(spec) for label, spec in specs.items()}
        times = time_interleaved(steps, ctx)
        del steps
        gc.collect()
        for label in labels:
            if label in skipped:
                rows.append({"label": label, "tokens": tokens, "note": skipped[label]})
            if label not in specs:
                continue
            spec = specs[label]
            rows.append({
                "label": label, "tokens": tokens, "batch": spec["batch"], "spec": spec,
                "time_ms": median(times[label]) * 1e3,
                "time_per_seq_ms": median(times[label]) * 1e3 / spec["batch"],
                "times_s": times[label],
            })  # fmt: skip
    for label, tokens in s.get("memory_only", []) if ctx.memory else []:
        if label not in labels or tokens in s["tokens"]:
            continue  # not selected, or already measured with the timed rows
        spec = _spec(label, tokens, s, ctx)
        rows.append({"label": spec["variant"], "tokens": spec["tokens"], "batch": spec["batch"],
                     "spec": spec, "note": "memory only"})  # fmt: skip
    if ctx.memory:
        measured = [
            r for r in rows
            if "spec" in r and (s["memory_all_paths"] or "[" not in r["label"])
            and r["tokens"] >= s.get("min_tokens_memory", 0)
        ]  # fmt: skip
        results = measure_peak_memory([r["spec"] for r in measured])
        for row, result in zip(measured, results, strict=True):
            row.update(memory=result, peak_mib=result.get("peak_mib"))
    record["rows"] = rows
    record["summary"] = summarise(rows, s["tokens"])
    record["seconds"] = time.perf_counter() - start
    return record


def _ratio_line(label: str, result: dict, target: float, up_to: int | None = None) -> str:
    """One target line: the time ratios per N (those up to ``up_to``), the bound, the verdict."""
    ratios = ", ".join(
        f"{n}: {fmt(v, 2)}x" for n, v in result["ratios"].items() if up_to is None or n <= up_to
    )
    return f"- {label}: {ratios} (target <= {target}): {verdict(result['pass'])}"


def markdown(record: dict) -> str:
    """Time and memory tables plus the target checks."""
    rows, summary = record["rows"], record["summary"]
    tokens = record["settings"]["tokens"]
    labels = record["settings"]["labels"]
    t = lookup(rows, "time_ms")
    mem = lookup(rows, "peak_mib")
    notes = {(r["label"], r["tokens"]): r["note"] for r in rows if "note" in r}
    batch = {r["tokens"]: r["batch"] for r in rows if "batch" in r}
    head = ["variant"] + [f"N={n} (B={batch.get(n, '-')})" for n in tokens]
    time_rows = []
    for label in labels:
        cells = [label]
        for n in tokens:
            base = t.get(("favor-ape", n))
            value = t.get((label, n))
            cells.append(
                f"{fmt(value)} ({fmt(ratio(value, base), 2)}x)"
                if value
                else notes.get((label, n), "-")
            )
        time_rows.append(cells)
    mem_tokens = sorted({r["tokens"] for r in rows if r.get("peak_mib") is not None})
    mem_rows = [[label] + [fmt(mem.get((label, n))) for n in mem_tokens] for label in labels]
    s = record["settings"]
    lines = [
        f"One attention layer, {s['heads']} heads x d={s['head_dim']}, m={s['nb_features']} "
        f"FAVOR+ features (ReLU: identity features, m=d), CLS + N patch tokens, "
        f"B*N={s['batch_tokens']}; forward+backward, median ms per call "
        "(ratio to favor-ape at the same N); favor-rpe[path] is the Toeplitz path that "
        f"rpe_method='auto' does not take at that N (auto: quadratic below "
        f"FFT_THRESHOLD={s['fft_threshold']} patch tokens, else fft):",
        "",
        md_table(head, time_rows),
        "",
        "Peak memory of one forward+backward step, MiB (RSS increase, fresh worker process):",
        "",
        md_table(["variant"] + [f"N={n}" for n in mem_tokens], mem_rows)
        if mem_tokens
        else "(not measured)",
        "",
        "Targets:",
        "",
    ]
    lines.append(
        _ratio_line("favor-rpe / favor-ape at N <= 256", summary["favor_rpe_vs_ape"], 3, 256)
    )
    for position in NEAR_APE_COST:
        r = summary[f"favor_{position}_vs_ape"]
        lines.append(_ratio_line(f"favor-{position} / favor-ape", r, 1.5))
    g = summary["growth_1024_to_4096"]
    lines.append(
        "- per-sequence time growth N=1024 -> 4096: "
        + ", ".join(f"{k}: {fmt(v, 2)}x" for k, v in g["per_sequence_time_ratio"].items())
        + f" (target linear <= ~5x, softmax ~16x): {verdict(g['pass'])}"
    )
    lines.append(
        "- favor-rpe faster than softmax-rpe: "
        + describe_crossover(summary["favor_rpe_beats_softmax_rpe"], max(tokens))
    )
    f = summary["fft_vs_quadratic"]
    lines.append(
        "- favor-rpe Toeplitz path, quadratic time / FFT time: "
        + ", ".join(f"{n}: {fmt(v, 2)}" for n, v in f["quadratic_over_fft"].items())
        + f"; FFT faster {describe_crossover(f['fft_faster_from'], max(tokens))} "
        f"(current FFT_THRESHOLD = {f['current_fft_threshold']})"
    )
    m = summary["favor_rpe_memory_16384"]
    lines.append(
        f"- favor-rpe peak memory at N=16384 (B=1): {fmt(m['peak_mib'])} MiB "
        f"(bound {m['bound_mib']} MiB): {verdict(m['pass'])}"
    )
    for kernel in PERFORMER_KERNELS:
        r = summary[f"{kernel}_frpe_vs_ape"]
        lines.append(_ratio_line(f"{kernel}-frpe / {kernel}-ape", r, 1.5))
        c = summary[f"{kernel}_frpe_beats_softmax_rpe"]
        lines.append(
            f"- {kernel}-frpe faster than softmax-rpe: "
            f"{describe_crossover(c['crossover'], max(tokens))} (target: from N <= 512): "
            f"{verdict(c['pass'])}"
        )
    m = summary["favor_frpe_memory_16384"]
    lines.append(
        f"- favor-frpe peak memory at N=16384 (B=1): {fmt(m['peak_mib'])} MiB, "
        f"{fmt(m['ratio'], 2)}x favor-ape's {fmt(m['favor_ape_mib'])} MiB (target <= 2x): "
        f"{verdict(m['pass'])}"
    )
    return "\n".join(lines)


def plot(record: dict):
    """Per-sequence time and peak memory against N, log-log."""
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    for label in record["settings"]["labels"]:
        pts = [(r["tokens"], r["time_per_seq_ms"]) for r in record["rows"]
               if r["label"] == label and r.get("time_per_seq_ms")]  # fmt: skip
        mem = [(r["tokens"], r["peak_mib"]) for r in record["rows"]
               if r["label"] == label and r.get("peak_mib")]  # fmt: skip
        style = variant_style(label)
        if pts:
            left.plot(*zip(*pts, strict=True), label=label, **style)
        if mem:
            right.plot(*zip(*mem, strict=True), label=label, **style)
    loglog_axes(
        ((left, "fwd+bwd time per sequence (ms)"), (right, "peak memory (MiB)")),
        "One attention layer (B*N constant)",
        figure,
    )
    return figure
