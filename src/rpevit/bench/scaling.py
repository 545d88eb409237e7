"""``scaling``: whole-model forward and forward+backward time per image and peak memory as the
token count N grows (image size varies, patch size fixed), fitted exponents and crossovers."""

from __future__ import annotations

import gc
import math
import time

from rpevit.bench.common import (
    BenchContext,
    crossover,
    describe_crossover,
    fit_exponent,
    fmt,
    loglog_axes,
    md_table,
    median,
    new_record,
    preset_settings,
    time_interleaved,
    variant_style,
)
from rpevit.bench.memory import measure_peak_memory
from rpevit.bench.workloads import build_step

SETTINGS = {
    "smoke": dict(tokens=[16, 64], softmax_max_tokens=64, batch_tokens=64, patch_size=2,
                  dim=16, depth=1, heads=2, mlp_dim=32),
    "quick": dict(tokens=[16, 64, 256, 1024, 4096], softmax_max_tokens=4096, batch_tokens=4096,
                  patch_size=4, dim=64, depth=2, heads=4, mlp_dim=128, min_tokens_memory=1024),
    "full": dict(tokens=[16, 64, 256, 1024, 4096, 16384], softmax_max_tokens=4096,
                 batch_tokens=4096, patch_size=4, dim=192, depth=4, heads=6, mlp_dim=384),
}  # fmt: skip

#: Exponents are fitted on this many of the largest token counts (the asymptotic regime).
FIT_POINTS = 3

MODES = ("forward", "train")


def _spec(variant: str, tokens: int, mode: str, s: dict, ctx: BenchContext) -> dict:
    return {
        "kind": "model", "variant": variant, "mode": mode,
        "image_size": math.isqrt(tokens) * s["patch_size"], "patch_size": s["patch_size"],
        "dim": s["dim"], "depth": s["depth"], "heads": s["heads"], "mlp_dim": s["mlp_dim"],
        "batch": max(1, s["batch_tokens"] // tokens), "compile": ctx.compile, "seed": ctx.seed,
    }  # fmt: skip


def run(ctx: BenchContext) -> dict:
    """Time forward and forward+backward of every variant at each N; memory of the latter."""
    s = preset_settings(SETTINGS, ctx)
    start = time.perf_counter()
    record = new_record(ctx, "scaling", {**s, "variants": ctx.models, "fit_points": FIT_POINTS})
    rows = []
    for tokens in s["tokens"]:
        variants = [
            v
            for v in ctx.models
            if not v.startswith("softmax") or tokens <= s["softmax_max_tokens"]
        ]
        specs = {(v, m): _spec(v, tokens, m, s, ctx) for v in variants for m in MODES}
        steps = {f"{v}/{m}": build_step(spec) for (v, m), spec in specs.items()}
        times = time_interleaved(steps, ctx)
        del steps
        gc.collect()
        for variant in variants:
            spec = specs[(variant, "train")]
            row = {"variant": variant, "tokens": tokens, "batch": spec["batch"], "spec": spec,
                   "image_size": spec["image_size"]}  # fmt: skip
            for mode in MODES:
                row[f"{mode}_times_s"] = times[f"{variant}/{mode}"]
                row[f"{mode}_ms_per_image"] = (
                    median(times[f"{variant}/{mode}"]) * 1e3 / spec["batch"]
                )
            rows.append(row)
    if ctx.memory:
        measured = [r for r in rows if r["tokens"] >= s.get("min_tokens_memory", 0)]
        results = measure_peak_memory([r["spec"] for r in measured])
        for row, result in zip(measured, results, strict=True):
            row.update(memory=result, peak_mib=result.get("peak_mib"))
    record["rows"] = rows
    record["summary"] = summarise(rows, ctx.models)
    record["seconds"] = time.perf_counter() - start
    return record


def _series(rows: list[dict], variant: str, key: str) -> tuple[list[int], list[float]]:
    points = [(r["tokens"], r[key]) for r in rows if r["variant"] == variant and r.get(key)]
    return [n for n, _ in points], [t for _, t in points]


def summarise(rows: list[dict], variants: list[str]) -> dict:
    """Fitted exponents (largest ``FIT_POINTS`` N and all N) and crossovers vs softmax."""
    tokens = sorted({r["tokens"] for r in rows})
    per_variant = {}
    for variant in variants:
        entry = {}
        for mode in MODES:
            ns, ts = _series(rows, variant, f"{mode}_ms_per_image")
            entry[f"{mode}_exponent"] = fit_exponent(ns[-FIT_POINTS:], ts[-FIT_POINTS:])
            entry[f"{mode}_exponent_all"] = fit_exponent(ns, ts)
        kernel, _, position = variant.partition("-")
        if kernel != "softmax" and f"softmax-{position}" in variants:
            lookup = {
                (r["variant"], r["tokens"]): r["train_ms_per_image"]
                for r in rows
                if r.get("train_ms_per_image")
            }
            entry["crossover_vs_softmax"] = crossover(
                tokens,
                [lookup.get((f"softmax-{position}", n)) for n in tokens],
                [lookup.get((variant, n)) for n in tokens],
            )
        per_variant[variant] = entry
    return {"per_variant": per_variant, "tokens": tokens}


def markdown(record: dict) -> str:
    """Per-image time tables (train, forward), memory, exponents and crossovers."""
    rows, s = record["rows"], record["settings"]
    tokens = record["summary"]["tokens"]
    variants = s["variants"]
    lookup = {(r["variant"], r["tokens"]): r for r in rows}

    def table(key: str) -> str:
        body = [[v] + [fmt(lookup.get((v, n), {}).get(key)) for n in tokens] for v in variants]
        return md_table(["variant"] + [f"N={n}" for n in tokens], body)

    summary_rows = []
    for variant in variants:
        e = record["summary"]["per_variant"][variant]
        cross = e.get("crossover_vs_softmax")
        summary_rows.append([
            variant, fmt(e["train_exponent"], 2), fmt(e["forward_exponent"], 2),
            fmt(e["train_exponent_all"], 2),
            describe_crossover(cross, max(tokens)) if cross else "-",
        ])  # fmt: skip
    batches = ", ".join(
        f"N={n}: B={next(r['batch'] for r in rows if r['tokens'] == n)}" for n in tokens
    )
    return "\n".join([
        f"ViT dim {s['dim']}, depth {s['depth']}, heads {s['heads']}, MLP {s['mlp_dim']}, "
        f"patch {s['patch_size']}, CLS token; N patch tokens from the image size; batch "
        f"{batches}; softmax up to N={s['softmax_max_tokens']}.",
        "", "Forward+backward (cross-entropy), median ms per image:", "",
        table("train_ms_per_image"),
        "", "Forward only (inference mode), median ms per image:", "",
        table("forward_ms_per_image"),
        "", "Peak memory of one forward+backward step of the batch, MiB:", "", table("peak_mib"),
        "", f"Fitted exponent t ~ N^k (largest {FIT_POINTS} N; all N) and crossover vs softmax "
        "with the same position encoding (forward+backward):", "",
        md_table(["variant", "k train", "k forward", "k train (all N)", "faster than softmax"],
                 summary_rows),
    ])  # fmt: skip


def plot(record: dict):
    """Log-log forward+backward time per image against N with O(N) and O(N^2) guides."""
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    all_t = []
    for variant in record["settings"]["variants"]:
        ns, ts = _series(record["rows"], variant, "train_ms_per_image")
        if ns:
            left.plot(ns, ts, label=variant, **variant_style(variant))
            all_t += list(zip(ns, ts, strict=True))
        ns, ms = _series(record["rows"], variant, "peak_mib")
        if ns:
            right.plot(ns, ms, label=variant, **variant_style(variant))
    if all_t:
        n0 = min(n for n, _ in all_t)
        n1 = max(n for n, _ in all_t)
        t0 = min(t for n, t in all_t if n == n0)
        for power, name in ((1, "O(N)"), (2, "O(N^2)")):
            left.plot([n0, n1], [t0, t0 * (n1 / n0) ** power], color="grey",
                      linestyle="-." if power == 1 else (0, (1, 4)), label=name)  # fmt: skip
    loglog_axes(
        ((left, "fwd+bwd ms per image"), (right, "peak memory per batch (MiB)")),
        "Whole-model scaling with token count",
        figure,
    )
    return figure
