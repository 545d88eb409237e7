"""``ceiling``: this machine's dense fp32 matmul throughput, and each model's training
throughput as model FLOPs utilisation (MFU).

MFU = images/s x 3 x forward FLOPs per image / peak matmul FLOP/s, with forward FLOPs from
:func:`rpevit.flops.count_flops` (matmuls + analytic FFTs; element-wise work not counted) and
x3 for forward + backward. The training step timed includes the AdamW update.
"""

from __future__ import annotations

import time

import torch

from rpevit.bench.common import (
    BenchContext,
    fmt,
    md_table,
    median,
    new_record,
    time_interleaved,
)
from rpevit.bench.workloads import build_step, kernel_options
from rpevit.flops import count_flops
from rpevit.registry import create_model

SETTINGS = {
    "smoke": dict(matmul_sizes=[64, 128], image_size=8, patch_size=2, dim=16, depth=1, heads=2,
                  mlp_dim=32, batch=4),
    "quick": dict(matmul_sizes=[512, 1024, 2048], image_size=32, patch_size=4, dim=128, depth=4,
                  heads=4, mlp_dim=256, batch=64),
    "full": dict(matmul_sizes=[512, 1024, 2048, 4096], image_size=32, patch_size=4, dim=256,
                 depth=6, heads=8, mlp_dim=512, batch=128),
}  # fmt: skip


def matmul_gflops(
    sizes: list[int], ctx: BenchContext, dtype: torch.dtype = torch.float32
) -> list[dict]:
    """Dense ``n x n @ n x n`` throughput in ``dtype`` (2 n^3 FLOPs per product) per size:
    median and best call (the ceiling is the best: load on a shared machine only lowers it)."""
    generator = torch.Generator().manual_seed(ctx.seed)
    operands = {n: (torch.randn(n, n, generator=generator).to(dtype),) * 2 for n in sizes}
    fns = {n: (lambda a=a, b=b: torch.mm(a, b)) for n, (a, b) in operands.items()}
    times = time_interleaved(fns, ctx)
    return [
        {"n": n, "times_s": times[n], "gflops": 2 * n**3 / median(times[n]) / 1e9,
         "best_gflops": 2 * n**3 / min(times[n]) / 1e9}
        for n in sizes
    ]  # fmt: skip


def model_rows(s: dict, ctx: BenchContext) -> list[dict]:
    """Training images/s and forward FLOPs per image of every variant."""
    size = {k: s[k] for k in ("image_size", "patch_size", "dim", "depth", "heads", "mlp_dim")}
    specs = {
        v: {"kind": "model", "variant": v, "mode": "step", "batch": s["batch"], **size,
            "compile": ctx.compile, "seed": ctx.seed}
        for v in ctx.models
    }  # fmt: skip
    steps = {v: build_step(spec) for v, spec in specs.items()}
    times = time_interleaved(steps, ctx)
    rows = []
    for variant in ctx.models:
        model = create_model(
            variant, in_chans=3, num_classes=10, **size, **kernel_options(variant, None, None)
        )
        flops = count_flops(model, (3, s["image_size"], s["image_size"]))
        rows.append({
            "variant": variant, "forward_flops_per_image": flops, "times_s": times[variant],
            "images_per_s": s["batch"] / median(times[variant]),
        })  # fmt: skip
    return rows


def run(ctx: BenchContext) -> dict:
    """Matmul ceiling, then each model's MFU against the best matmul size."""
    s = SETTINGS[ctx.preset]
    start = time.perf_counter()
    record = new_record(ctx, "ceiling", {**s, "variants": ctx.models})
    record["matmul"] = matmul_gflops(s["matmul_sizes"], ctx)
    peak = max(r["best_gflops"] for r in record["matmul"])
    record["models"] = model_rows(s, ctx)
    for row in record["models"]:
        row["achieved_gflops"] = 3 * row["forward_flops_per_image"] * row["images_per_s"] / 1e9
        row["mfu"] = row["achieved_gflops"] / peak
    record["summary"] = {"peak_matmul_gflops": peak}
    record["seconds"] = time.perf_counter() - start
    return record


def markdown(record: dict) -> str:
    """Matmul table and MFU table."""
    s = record["settings"]
    mm = [[f"{r['n']}x{r['n']}", fmt(r["gflops"]), fmt(r["best_gflops"])] for r in record["matmul"]]
    models = [
        [r["variant"], fmt(r["forward_flops_per_image"] / 1e6), fmt(r["images_per_s"]),
         fmt(r["achieved_gflops"]), f"{100 * r['mfu']:.1f}%"]
        for r in record["models"]
    ]  # fmt: skip
    return "\n".join([
        "Dense fp32 matmul (torch.mm), GFLOP/s:", "",
        md_table(["size", "GFLOP/s (median)", "GFLOP/s (best)"], mm), "",
        f"Peak (best call): {fmt(record['summary']['peak_matmul_gflops'])} GFLOP/s.", "",
        f"Training step (AdamW) at image {s['image_size']}, patch {s['patch_size']}, dim "
        f"{s['dim']}, depth {s['depth']}, heads {s['heads']}, MLP {s['mlp_dim']}, batch "
        f"{s['batch']}; MFU = 3 x forward FLOPs x images/s / peak:", "",
        md_table(["variant", "fwd MFLOPs/image", "images/s", "GFLOP/s", "MFU"], models),
    ])  # fmt: skip


def plot(record: dict):
    """Matmul GFLOP/s by size and MFU by model."""
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5), width_ratios=(1, 2))
    sizes = [r["n"] for r in record["matmul"]]
    left.plot(sizes, [r["gflops"] for r in record["matmul"]], marker="o", label="median")
    left.plot(sizes, [r["best_gflops"] for r in record["matmul"]], marker="x", label="best")
    left.legend()
    left.set_xscale("log", base=2)
    left.set_xlabel("n (n x n @ n x n)")
    left.set_title("fp32 matmul GFLOP/s")
    left.grid(True, alpha=0.3)
    names = [r["variant"] for r in record["models"]]
    right.bar(names, [100 * r["mfu"] for r in record["models"]])
    right.set_ylabel("MFU (%)")
    right.set_title("Training model FLOPs utilisation")
    right.tick_params(axis="x", rotation=60)
    return figure
