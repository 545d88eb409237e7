"""What every finished run reports (DESIGN.md section 6), as plain functions.

Classification scores use ``torchmetrics`` (so their conventions, e.g. how macro averages
treat classes absent from both predictions and targets, are torchmetrics'); the
statistical fit (log-likelihood, AIC, BIC), parameter counts, latency, peak memory and
environment facts are computed here.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)


def log_likelihood(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """``sum_i log p(y_i | x_i)`` (natural log) under ``softmax(logits)``, in float64."""
    log_probs = torch.log_softmax(logits.double(), dim=-1)
    return float(log_probs.gather(1, targets.long()[:, None]).sum())


def information_criteria(log_lik: float, num_params: int, num_samples: int) -> dict[str, float]:
    """``AIC = 2k - 2 LL`` and ``BIC = k ln(n) - 2 LL`` for ``k`` parameters and ``n`` samples."""
    return {
        "aic": 2 * num_params - 2 * log_lik,
        "bic": num_params * math.log(num_samples) - 2 * log_lik,
    }


def classification_metrics(
    logits: torch.Tensor,
    targets: torch.Tensor,
    num_classes: int,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Top-1 / top-5 accuracy, macro and per-class precision / recall / F1, support, LL, NLL.

    Top-5 accuracy is reported only with more than 10 classes (None otherwise);
    ``per_class`` holds one record per class.
    """
    logits, targets = logits.float(), targets.long()
    kwargs = {"num_classes": num_classes}
    per_class = {
        "precision": multiclass_precision(logits, targets, average="none", **kwargs),
        "recall": multiclass_recall(logits, targets, average="none", **kwargs),
        "f1": multiclass_f1_score(logits, targets, average="none", **kwargs),
    }
    support = torch.bincount(targets, minlength=num_classes)
    names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
    ll = log_likelihood(logits, targets)
    return {
        "accuracy": float(multiclass_accuracy(logits, targets, average="micro", **kwargs)),
        "top5_accuracy": (
            float(multiclass_accuracy(logits, targets, average="micro", top_k=5, **kwargs))
            if num_classes > 10
            else None
        ),
        "precision_macro": float(multiclass_precision(logits, targets, average="macro", **kwargs)),
        "recall_macro": float(multiclass_recall(logits, targets, average="macro", **kwargs)),
        "f1_macro": float(multiclass_f1_score(logits, targets, average="macro", **kwargs)),
        "per_class": [
            {
                "class": c,
                "name": names[c],
                "precision": float(per_class["precision"][c]),
                "recall": float(per_class["recall"][c]),
                "f1": float(per_class["f1"][c]),
                "support": int(support[c]),
            }
            for c in range(num_classes)
        ],
        "num_samples": int(targets.numel()),
        "log_likelihood": ll,
        "mean_nll": -ll / max(1, targets.numel()),
    }


def count_parameters(model: torch.nn.Module) -> dict[str, int]:
    """Trainable and total parameter counts (buffers such as random features excluded)."""
    params = list(model.parameters())
    return {
        "trainable": sum(p.numel() for p in params if p.requires_grad),
        "total": sum(p.numel() for p in params),
    }


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def inference_ms_per_sample(
    model: torch.nn.Module | Callable[[torch.Tensor], torch.Tensor],
    batch: torch.Tensor,
    *,
    warmup: int = 3,
    repeats: int = 10,
) -> float:
    """Median wall time of ``repeats`` forward passes on ``batch`` after ``warmup`` passes,
    divided by the batch size, in milliseconds (eval mode, no autograd)."""
    was_training = getattr(model, "training", False)
    if isinstance(model, torch.nn.Module):
        model.eval()
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            _synchronize(batch.device)
            start = time.perf_counter()
            model(batch)
            _synchronize(batch.device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    if isinstance(model, torch.nn.Module):
        model.train(was_training)
    return statistics.median(times) * 1000 / batch.shape[0]


def reset_peak_memory(device: torch.device | str = "cpu") -> bool:
    """Start a new peak-memory measurement, e.g. at the start of a run, so a worker process
    that trains several runs reports each run's own peak: CUDA's peak statistics, or on Linux
    the process's RSS high-water mark (``/proc/self/clear_refs``). False where the CPU peak
    cannot be reset: :func:`peak_memory_mb` then covers the whole process lifetime."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")  # 5: reset the peak RSS to the current RSS (Linux >= 4.0)
    except OSError:
        return False
    return True


def peak_memory_mb(device: torch.device | str = "cpu") -> float | None:
    """Peak memory in MiB since the last :func:`reset_peak_memory` (or process start): CUDA
    ``max_memory_allocated`` on GPUs, else the process's peak RSS.

    Peak RSS counts everything in the process (data, model, framework), so it is an upper
    bound on what training needed; None where it cannot be measured (Windows).
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def git_commit(path: str | os.PathLike[str] | None = None) -> str | None:
    """Commit hash of the git work tree holding ``path`` (default: this package), with
    ``-dirty`` appended if tracked files are modified; None outside git."""
    cwd = Path(path) if path else Path(__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}-dirty" if dirty else commit


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device | str) -> str:
    """Human-readable device, e.g. ``cuda:0 (NVIDIA A100)`` or ``cpu (AMD EPYC ..., 2 threads)``."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"{device.type} ({_cpu_name()}, {torch.get_num_threads()} threads)"


def environment_info() -> dict[str, Any]:
    """Hardware and software versions for the run record."""
    import lightning
    import torchmetrics
    import torchvision

    return {
        "hardware": {
            "cpu": _cpu_name(),
            "cpu_count": os.cpu_count(),
            "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        },
        "software": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "lightning": lightning.__version__,
            "torchmetrics": torchmetrics.__version__,
            "cuda": torch.version.cuda,
        },
    }
