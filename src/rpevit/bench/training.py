"""``training``: images/s of the real training loop (``rpevit train``: Lightning, on-device
augmentation, logging, clipping, AdamW, schedule) on CIFAR-10 with the ``study`` model, in
float32 and bf16-mixed, eager and ``--compile``, and its model FLOPs utilisation against this
run's fp32 and bf16 matmul ceilings.

Each measurement is one short ``train`` run; the clock reads every training-batch end, and
images/s is taken over the steps after ``skip`` (so compilation and warm-up are excluded; the
first step's seconds, which include compilation, are reported apart). MFU = images/s x 3 x
forward FLOPs per image / best matmul FLOP/s in fp32 and in bf16 (:mod:`rpevit.bench.ceiling`).
The four runs of a variant (precision x mode) are interleaved, round by round, so load changes
hit all alike; the ratios bf16/fp32 and compiled/eager are taken within a round's variant.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

from rpevit.bench.ceiling import matmul_gflops
from rpevit.bench.common import BenchContext, fmt, md_table, median, new_record
from rpevit.data.specs import DATA_DIR_ENV
from rpevit.flops import count_flops
from rpevit.registry import create_model
from rpevit.training import TrainConfig, train
from rpevit.training.presets import PRESETS

#: The variants the issues name; ``--models`` overrides.
DEFAULT_MODELS = ["softmax-ape", "favor-ape", "favor-rpe", "relu-rope", "relu-string"]
#: Precisions compared, float32 first (the reference of the bf16/fp32 ratio).
PRECISIONS = ("32-true", "bf16-mixed")
ARCHITECTURE = ("patch_size", "dim", "depth", "heads", "mlp_dim", "batch_size")
STUDY = {k: PRESETS["study"]["cifar10"][k] for k in ARCHITECTURE}

SETTINGS = {
    "smoke": dict(matmul_sizes=[64, 128], steps=4, skip=1, rounds=1, patch_size=8, dim=16,
                  depth=1, heads=2, mlp_dim=32, batch_size=32),
    "quick": dict(matmul_sizes=[256, 512, 1024], steps=40, skip=10, rounds=1, **STUDY),
    "full": dict(matmul_sizes=[256, 512, 1024, 2048], steps=100, skip=20, rounds=2, **STUDY),
}  # fmt: skip


class StepClock(L.Callback):
    """``perf_counter`` at fit start and at every training-batch end."""

    def __init__(self) -> None:
        self.start = 0.0
        self.ends: list[float] = []

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        self.ends.append(time.perf_counter())


def find_cifar10() -> Path:
    """The first of ``$RPEVIT_DATA_DIR``, ``./data``, ``../shared/data`` holding CIFAR-10."""
    candidates = [os.environ.get(DATA_DIR_ENV), "data", "../shared/data"]
    for folder in (Path(c) for c in candidates if c):
        if any((folder / n).is_dir() for n in ("cifar-10-batches-py", "cifar-10-batches-bin")):
            return folder
    raise ValueError(
        "rpevit bench training needs CIFAR-10: put cifar-10-batches-py/ (or -bin/) under "
        f"./data or point {DATA_DIR_ENV} at its folder"
    )


def measure(
    variant: str, precision: str, compiled: bool, s: dict, data_dir: Path, ctx: BenchContext
) -> dict:
    """Steady-state training images/s of one short ``train`` run."""
    clock = StepClock()
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(
            model=variant, dataset="cifar10", preset="study", data_dir=str(data_dir), out=out,
            max_steps=s["steps"], min_steps=0, compile=compiled, seed=ctx.seed,
            precision=precision,
            max_val_samples=s["batch_size"], max_test_samples=s["batch_size"],
            progress_bar=False, **{k: s[k] for k in ARCHITECTURE},
        )  # fmt: skip
        train(config, callbacks=[clock])
    steady = clock.ends[s["skip"] :]
    return {
        "images_per_s": (len(steady) - 1) * s["batch_size"] / (steady[-1] - steady[0]),
        "first_step_s": clock.ends[0] - clock.start,
    }


def run(ctx: BenchContext) -> dict:
    """Matmul ceilings, then every variant in each precision, eager and compiled."""
    s = SETTINGS[ctx.preset]
    models = DEFAULT_MODELS if ctx.arguments.get("models", "all") == "all" else ctx.models
    data_dir = find_cifar10()
    start = time.perf_counter()
    record = new_record(ctx, "training", {**s, "variants": models, "data_dir": str(data_dir)})
    record["matmul"] = matmul_gflops(s["matmul_sizes"], ctx)
    record["matmul_bf16"] = matmul_gflops(s["matmul_sizes"], ctx, torch.bfloat16)
    peaks = {
        "fp32": max(r["best_gflops"] for r in record["matmul"]),
        "bf16": max(r["best_gflops"] for r in record["matmul_bf16"]),
    }
    cells = [(p, c) for p in PRECISIONS for c in (False, True)]
    samples: dict[tuple, list[dict]] = {(v, *cell): [] for v in models for cell in cells}
    for _ in range(s["rounds"]):
        for variant in models:
            for precision, compiled in cells:
                samples[variant, precision, compiled].append(
                    measure(variant, precision, compiled, s, data_dir, ctx)
                )
    rows = []
    for variant in models:
        model = create_model(
            variant, image_size=32, in_chans=3, num_classes=10,
            **{k: s[k] for k in ARCHITECTURE if k != "batch_size"},
        )  # fmt: skip
        flops = count_flops(model, (3, 32, 32))
        by_cell = {}
        for precision, compiled in cells:
            runs = samples[variant, precision, compiled]
            ips = median([r["images_per_s"] for r in runs])
            by_cell[precision, compiled] = row = {
                "variant": variant, "precision": precision,
                "mode": "compiled" if compiled else "eager",
                "forward_flops_per_image": flops, "images_per_s": ips,
                "images_per_s_rounds": [r["images_per_s"] for r in runs],
                "first_step_s": median([r["first_step_s"] for r in runs]),
                "mfu_fp32": 3 * flops * ips / (peaks["fp32"] * 1e9),
                "mfu_bf16": 3 * flops * ips / (peaks["bf16"] * 1e9),
            }  # fmt: skip
            row["speedup_vs_eager"] = ips / by_cell[precision, False]["images_per_s"]
            row["speedup_vs_fp32"] = ips / by_cell[PRECISIONS[0], compiled]["images_per_s"]
            rows.append(row)
    record["models"] = rows
    record["summary"] = {
        "peak_matmul_gflops": peaks["fp32"],
        "peak_bf16_matmul_gflops": peaks["bf16"],
    }
    record["seconds"] = time.perf_counter() - start
    return record


def markdown(record: dict) -> str:
    """One table: images/s, first-step seconds, MFU against both ceilings, and the ratios."""
    s, summary = record["settings"], record["summary"]
    rows = [
        [r["variant"], r["precision"], r["mode"], fmt(r["forward_flops_per_image"] / 1e6),
         fmt(r["images_per_s"]), fmt(r["first_step_s"]), f"{100 * r['mfu_fp32']:.1f}%",
         f"{100 * r['mfu_bf16']:.1f}%", fmt(r["speedup_vs_fp32"]), fmt(r["speedup_vs_eager"])]
        for r in record["models"]
    ]  # fmt: skip
    return "\n".join([
        f"Real training loop (`rpevit train`, CIFAR-10, augmentation, AdamW) of the study model: "
        f"patch {s['patch_size']}, dim {s['dim']}, depth {s['depth']}, heads {s['heads']}, MLP "
        f"{s['mlp_dim']}, batch {s['batch_size']}; images/s over steps {s['skip'] + 1}-"
        f"{s['steps']} (median of {s['rounds']} round(s)); peak matmul in this run: fp32 "
        f"{fmt(summary['peak_matmul_gflops'])}, bf16 {fmt(summary['peak_bf16_matmul_gflops'])} "
        "GFLOP/s. MFU = 3 x forward FLOPs x images/s / peak; bf16 / fp32 compares the same "
        "mode, compiled / eager the same precision.", "",
        md_table(["variant", "precision", "mode", "fwd MFLOPs/image", "images/s", "first step s",
                  "MFU (fp32 peak)", "MFU (bf16 peak)", "bf16 / fp32", "compiled / eager"], rows),
    ])  # fmt: skip


def plot(record: dict):
    """Images/s per variant for each precision and mode."""
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(9, 4.5))
    variants = list(dict.fromkeys(r["variant"] for r in record["models"]))
    cells = list(dict.fromkeys((r["precision"], r["mode"]) for r in record["models"]))
    width = 0.8 / len(cells)
    for i, (precision, mode) in enumerate(cells):
        values = [
            r["images_per_s"]
            for r in record["models"]
            if (r["precision"], r["mode"]) == (precision, mode)
        ]
        offset = (i - (len(cells) - 1) / 2) * width
        axes.bar([j + offset for j in range(len(variants))], values, width=width,
                 label=f"{precision}, {mode}")  # fmt: skip
    axes.set_xticks(range(len(variants)), variants)
    axes.set_ylabel("training images/s")
    axes.set_title("Training throughput (study model, CIFAR-10)")
    axes.legend()
    return figure
