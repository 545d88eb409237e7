"""``data``: throughput of the training input pipeline (index, augment, normalise) in images/s.

Runs the real training iterator (:class:`rpevit.data.InMemoryLoader` with augmentation) over
the CIFAR-10 training split (crop + flip) and MNIST (rotation) on the CPU, reading them from
``$RPEVIT_DATA_DIR`` (default ``./data``) without downloading; a data set that is not there is
skipped with a note. Images/s is the best of the timed epochs, after a warm-up of a few batches.
"""

from __future__ import annotations

import time

from rpevit.bench.common import BenchContext, fmt, log, md_table, new_record
from rpevit.data import ImageDataModule
from rpevit.errors import DataNotFoundError
from rpevit.metrics import device_name

SETTINGS = {
    "smoke": dict(datasets=["cifar10", "mnist"], batch_size=128, epochs=1,
                  max_train_samples=1024),
    "quick": dict(datasets=["cifar10", "mnist"], batch_size=128, epochs=3,
                  max_train_samples=None),
    "full": dict(datasets=["cifar10", "mnist"], batch_size=128, epochs=5,
                 max_train_samples=None),
}  # fmt: skip

#: Batches drawn before timing (allocator, kernels).
WARMUP_BATCHES = 3

DEVICE = "cpu"


def measure(dataset: str, s: dict) -> dict:
    """Images/second over full training epochs of ``dataset`` (best epoch, after a warm-up)."""
    dm = ImageDataModule(
        dataset,
        batch_size=s["batch_size"],
        max_train_samples=s["max_train_samples"],
        download=False,
        device=DEVICE,
    )
    loader = dm.loader("train", train=True)
    n = len(dm.data.train)
    warmup = iter(loader)
    for _ in range(WARMUP_BATCHES):
        next(warmup)
    rates = []
    for epoch in range(s["epochs"]):
        loader.set_epoch(epoch)
        start = time.perf_counter()
        for _images, _ in loader:
            pass
        rates.append(n / (time.perf_counter() - start))
    return {
        "dataset": dataset,
        "images": n,
        "batch_size": s["batch_size"],
        "augmentation": dm.spec.augment,
        "images_per_second": max(rates),
        "images_per_second_each_epoch": rates,
    }


def run(ctx: BenchContext) -> dict:
    """Time the training iterator of every data set that is present."""
    s = SETTINGS[ctx.preset]
    start = time.perf_counter()
    record = new_record(ctx, "data", {**s, "device": device_name(DEVICE)})
    rows = []
    for dataset in s["datasets"]:
        try:
            row = measure(dataset, s)
        except DataNotFoundError as error:
            log(f"  skipping {dataset}: {error}")
            rows.append({"dataset": dataset, "note": f"skipped: {error}"})
            continue
        log(f"  {dataset}: {row['images_per_second']:,.0f} images/s ({row['augmentation']})")
        rows.append(row)
    record["rows"] = rows
    record["summary"] = {r["dataset"]: r.get("images_per_second") for r in rows}
    record["seconds"] = time.perf_counter() - start
    return record


def markdown(record: dict) -> str:
    """One table: images/s of the best epoch and of every epoch, per data set."""
    s = record["settings"]
    rows = [
        [r["dataset"], f"{r['images']:,}", r["augmentation"], fmt(r["images_per_second"]),
         ", ".join(fmt(x) for x in r["images_per_second_each_epoch"])]
        if "images" in r else [r["dataset"], "-", "-", "-", r["note"]]
        for r in record["rows"]
    ]  # fmt: skip
    return "\n".join([
        f"Training input pipeline (index, augment, normalise) on {s['device']}, batch "
        f"{s['batch_size']}, {s['epochs']} timed epoch(s) after {WARMUP_BATCHES} warm-up "
        "batches; images/s of the best epoch:", "",
        md_table(["data set", "training images", "augmentation", "images/s", "each epoch"], rows),
    ])  # fmt: skip


def plot(record: dict):
    """Images/s per data set."""
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    measured = [r for r in record["rows"] if "images_per_second" in r]
    axes.bar([r["dataset"] for r in measured], [r["images_per_second"] for r in measured])
    axes.set_ylabel("training images/s")
    axes.set_title("Input pipeline throughput")
    return figure
