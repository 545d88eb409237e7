"""Shared fixtures and helpers for the test suite."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

torch.set_num_threads(min(2, os.cpu_count() or 1))

SMALL = dict(dim=32, depth=2, heads=4, mlp_dim=64)


#: The devices of device-parametrised tests: the CPU, and CUDA where there is one (skipped
#: otherwise); ``scripts/gpu-check.sh`` runs the CUDA cases (``pytest -k cuda``).
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")),
]


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    """A device to run the test on (see :data:`DEVICES`)."""
    return torch.device(request.param)


def shared_data_dir() -> Path | None:
    """The real MNIST/CIFAR-10 copies beside the repository (or RPEVIT_DATA_DIR), if present."""
    env = os.environ.get("RPEVIT_DATA_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[2] / "shared" / "data")
    return next((p for p in candidates if (p / "MNIST" / "raw").is_dir()), None)


class LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an operation produced."""

    def __init__(self) -> None:
        super().__init__()
        self.max_numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.max_numel = max(self.max_numel, t.numel())
        return out


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
