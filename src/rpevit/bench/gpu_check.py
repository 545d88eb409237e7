"""The GPU check (``scripts/gpu-check.sh``): on one CUDA device, without any download, train one
short run per kernel (a relative encoding each) with the ``paper``-size model in float32,
bf16-mixed and 16-mixed, check that every loss stayed finite and that a float32 forward pass
agrees between the CPU and the GPU, and write ``gpu_check.json`` with images/s per run.

The data are synthetic MNIST-format digits (a bright block whose place is the class, plus
noise) written as the four IDX files, so the real loader, split and augmentation run.

``python -m rpevit.bench.gpu_check --out DIR [--steps N]``
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rpevit.bench.training import StepClock
from rpevit.errors import RpevitError
from rpevit.registry import create_model
from rpevit.training import TrainConfig, train
from rpevit.training.presets import PRESETS

#: One relative encoding per kernel, as the issue asks.
VARIANTS = ("softmax-rpe", "favor-rope", "relu-string")
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")
ARCHITECTURE = ("patch_size", "dim", "depth", "heads", "mlp_dim")
PAPER = {k: PRESETS["paper"]["mnist"][k] for k in ARCHITECTURE}
#: Largest relative difference accepted between CPU and GPU float32 logits (TF32 off).
AGREEMENT_TOLERANCE = 1e-4


def _write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file (gzipped) of a uint8 array, the MNIST distribution format."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def synthetic_mnist(root: Path, train: int = 8000, test: int = 1000, seed: int = 0) -> Path:
    """Write ``root/MNIST/raw`` with ``train`` + ``test`` learnable 28x28 digits; return root."""
    rng = np.random.default_rng(seed)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", train), ("t10k", test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        for i, label in enumerate(labels):
            row, col = 2 + 8 * (label // 4), 2 + 8 * (label % 4)
            images[i, row : row + 7, col : col + 7] = 255
        _write_idx(raw / f"{prefix}-images-idx3-ubyte.gz", images)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return root


def agreement(variant: str, device: torch.device) -> float:
    """Relative max difference of float32 logits of one model on the CPU and on ``device``."""
    torch.manual_seed(0)
    model = create_model(variant, image_size=28, in_chans=1, num_classes=10, **PAPER).eval()
    images = torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        cpu = model(images)
        gpu = model.to(device)(images.to(device)).cpu()
    if not (torch.isfinite(cpu).all() and torch.isfinite(gpu).all()):
        return float("inf")
    return float((gpu - cpu).abs().max() / cpu.abs().max())


def training_run(
    variant: str, precision: str, data: Path, steps: int, skip: int, accelerator: str = "gpu"
) -> dict:
    """Images/s (steps after ``skip``) and test accuracy of one short run; the error if any."""
    clock = StepClock()
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(
            model=variant, dataset="mnist", preset="paper", data_dir=str(data), out=out,
            max_steps=steps, epochs=100, min_steps=0, precision=precision, accelerator=accelerator,
            devices=1, progress_bar=False, download=False, max_val_samples=1024,
            max_test_samples=1024,
        )  # fmt: skip
        try:
            metrics = train(config, callbacks=[clock])
        except (RpevitError, RuntimeError) as error:  # e.g. a non-finite loss: reported
            return {"variant": variant, "precision": precision, "error": str(error)[:300]}
    steady = clock.ends[skip:]
    batch = PRESETS["paper"]["mnist"]["batch_size"]
    return {
        "variant": variant,
        "precision": precision,
        "images_per_s": (len(steady) - 1) * batch / (steady[-1] - steady[0]),
        "first_step_s": clock.ends[0] - clock.start,
        "test_accuracy": metrics["test_accuracy"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json")
    parser.add_argument("--steps", type=int, default=60, help="training steps per run")
    parser.add_argument("--skip", type=int, default=15, help="warm-up steps not timed")
    parser.add_argument("--tests-exit-code", type=int, help="exit code of the CUDA tests")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu-check: no CUDA device here; nothing to check", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    start = time.perf_counter()
    record: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "model": {**PAPER, "batch_size": PRESETS["paper"]["mnist"]["batch_size"]},
        "tests_exit_code": args.tests_exit_code,
        "agreement_tolerance": AGREEMENT_TOLERANCE,
        "cpu_gpu_float32_agreement": {v: agreement(v, device) for v in VARIANTS},
        "runs": [],
    }
    with tempfile.TemporaryDirectory() as folder:
        data = synthetic_mnist(Path(folder))
        for variant in VARIANTS:
            for precision in PRECISIONS:
                run = training_run(variant, precision, data, args.steps, args.skip)
                print(json.dumps(run), flush=True)
                record["runs"].append(run)
    for run in record["runs"]:
        base = next(r for r in record["runs"] if r["variant"] == run["variant"])
        if "images_per_s" in run and "images_per_s" in base:
            run["speedup_vs_float32"] = run["images_per_s"] / base["images_per_s"]
    agree = all(e <= AGREEMENT_TOLERANCE for e in record["cpu_gpu_float32_agreement"].values())
    finite = all("error" not in r for r in record["runs"])
    record["passed"] = agree and finite and args.tests_exit_code in (None, 0)
    record["seconds"] = time.perf_counter() - start
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: v for k, v in record.items() if k != "runs"}, indent=2))
    return 0 if record["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
