"""Throughput of the training input pipeline (index, augment, normalise) in images/second.

Runs the real training iterator (:class:`rpevit.data.InMemoryLoader` with augmentation)
over the CIFAR-10 training split (crop + flip) and, if present, MNIST (rotation), and
prints and writes the result as JSON. Example::

    python benchmarks/bench_data.py --data-dir ../shared/data --threads 1
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from rpevit.data import ImageDataModule
from rpevit.errors import DataNotFoundError
from rpevit.metrics import device_name, write_json_atomic


def measure(dataset: str, data_dir: str | None, batch_size: int, epochs: int, device: str) -> dict:
    """Images/second over full training epochs of ``dataset`` (best epoch, after a warm-up)."""
    dm = ImageDataModule(dataset, data_dir, batch_size=batch_size, download=False, device=device)
    loader = dm.loader("train", train=True)
    n = len(dm.data.train)
    warmup = iter(loader)
    for _ in range(3):  # warm-up: allocator, kernels
        next(warmup)
    rates = []
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        start = time.perf_counter()
        for _images, _ in loader:
            pass
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        rates.append(n / (time.perf_counter() - start))
    return {
        "dataset": dataset,
        "images": n,
        "batch_size": batch_size,
        "augmentation": dm.spec.augment,
        "images_per_second": max(rates),
        "images_per_second_each_epoch": rates,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-dir",
        default=None,
        help="folder with the data sets (default: $RPEVIT_DATA_DIR or ./data)",
    )
    parser.add_argument("--datasets", nargs="+", default=["cifar10", "mnist"])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("bench_out/data_throughput.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = []
    for name in args.datasets:
        try:
            result = measure(name, args.data_dir, args.batch_size, args.epochs, args.device)
        except DataNotFoundError as e:
            print(f"skipping {name}: {e}")
            continue
        results.append(result)
        rate, policy = result["images_per_second"], result["augmentation"]
        print(f"{name}: {rate:,.0f} images/s ({policy}, batch {args.batch_size})")
    report = {
        "results": results,
        "device": device_name(args.device),
        "torch_version": torch.__version__,
    }
    write_json_atomic(args.out, report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
