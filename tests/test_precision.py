"""Mixed precision: bf16 autocast agrees with float32 for every study variant, the linear
kernels' feature maps and sums stay float32, and the softmax core runs in float32 on the CPU
(where PyTorch's bf16 flash attention is slow) and in bf16 on a GPU, returning the autocast
dtype. Each test runs on the CPU and, where there is one, on CUDA (``device`` fixture)."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import rpevit
from rpevit.attention import Attention
from rpevit.positions import TokenGrid
from rpevit.registry import KERNELS, POSITIONS, STUDY_MODELS

#: Largest |bf16 logits - fp32 logits| relative to the largest |fp32 logit| accepted for the tiny
#: model: bf16 keeps 8 significant bits (relative rounding 2^-9 = 0.002 per value); through the
#: 2-layer model the measured errors are 0.0032 (softmax-ape) to 0.0065 (relu-frpe).
BF16_TOLERANCE = 0.02

#: Ops whose dtype decides the precision of a kernel's features and sums.
WATCHED = ("mm", "bmm", "addmm", "baddbmm", "exp", "exp_", "div", "scaled_dot_product")


class DtypeLog(TorchDispatchMode):
    """Records ``(op name, output dtype)`` of every watched op run inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, torch.dtype]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if any(name == w or (w == "scaled_dot_product" and w in name) for w in WATCHED):
            first = out[0] if isinstance(out, tuple | list) else out
            if isinstance(first, torch.Tensor):
                self.seen.append((name, first.dtype))
        return out


def _tiny(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return rpevit.create_model(
        name, image_size=16, in_chans=3, num_classes=10, patch_size=4, dim=32, depth=2, heads=2,
        mlp_dim=64,
    ).eval()  # fmt: skip


@pytest.mark.parametrize("name", STUDY_MODELS)
def test_bf16_autocast_forward_agrees_with_float32(name, device):
    model = _tiny(name).to(device)
    images = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(1)).to(device)
    with torch.no_grad():
        reference = model(images)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            mixed = model(images)
    assert mixed.dtype == torch.bfloat16
    error = (mixed.float() - reference).abs().max() / reference.abs().max()
    assert error < BF16_TOLERANCE, f"{name}: relative error {error:.4f}"


@pytest.mark.parametrize("kernel", ["favor", "relu", "exp", "learnable"])
@pytest.mark.parametrize("position", ["ape", "rpe", "frpe", "rope", "string"])
def test_linear_kernel_features_and_sums_stay_float32_under_bf16_autocast(kernel, position, device):
    grid = TokenGrid(4, 4, num_prefix=1)
    config = type("Config", (), dict(head_dim=8, heads=2, grid_size=(4, 4), pool="cls"))()
    attention = Attention(16, 2, KERNELS[kernel][0](config, {}), POSITIONS[position][0](config))
    attention = attention.to(device).eval()
    x = torch.randn(2, 17, 16, device=device)
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
        q, k, v = (
            t.to(torch.bfloat16)
            for t in attention.qkv(x).unflatten(-1, (3, 2, 8)).permute(2, 0, 3, 1, 4)
        )
        q, k = attention.position.rotate(q, k, grid)
        with DtypeLog() as log:
            out = attention.kernel(q, k, v, attention.position.relative_weights(grid), grid)
    assert out.dtype == torch.bfloat16  # the result comes back in the autocast dtype
    assert log.seen and {dtype for _, dtype in log.seen} == {torch.float32}, log.seen


@pytest.mark.parametrize("position", ["ape", "rpe", "frpe"])
def test_softmax_core_runs_in_float32_on_the_cpu_and_bf16_on_a_gpu(position, device):
    model = _tiny(f"softmax-{position}").to(device)
    images = torch.randn(2, 3, 16, 16, device=device)
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16), DtypeLog() as log:
        out = model(images)
    cores = [dtype for name, dtype in log.seen if "scaled_dot_product" in name]
    expected = torch.float32 if device.type == "cpu" else torch.bfloat16
    assert len(cores) == 2 and set(cores) == {expected}  # one per layer
    assert out.dtype == torch.bfloat16


def _record(root, model: str, seed: int, acc: float, precision: str) -> None:
    """A finished run's records (config and metrics) trained with ``precision``."""
    import json

    run = root / model / f"seed{seed}"
    run.mkdir(parents=True)
    config = {"model": model, "seed": seed, "dataset": "cifar10", "precision": precision}
    (run / "config.json").write_text(json.dumps(config))
    metrics = {"model": model, "seed": seed, "dataset": "cifar10", "test_accuracy": acc}
    (run / "metrics.json").write_text(json.dumps({**metrics, "config": config}))


def test_the_bf16_accuracy_comparison_pairs_seeds_and_applies_the_target(tmp_path):
    """bf16 - fp32 per model over common seeds; target: interval contains 0, |mean| <= 0.5 pp."""
    from rpevit.errors import ConfigError
    from rpevit.experiments.precision import compare
    from rpevit.report import load_runs

    fp32 = {42: 0.550, 43: 0.560, 44: 0.540}
    shifts = {
        "softmax-ape": (0.001, -0.002, 0.002),
        "relu-ape": (-0.004, -0.0045, -0.0035),  # |mean| <= 0.5 pp, but interval excludes 0
        "favor-rope": (0.030, -0.010, 0.0),  # interval contains 0, but |mean| > 0.5 pp
    }
    for model, shift in shifts.items():
        for (seed, acc), delta in zip(fp32.items(), shift, strict=True):
            _record(tmp_path / "fp32", model, seed, acc, "32-true")
            _record(tmp_path / "bf16", model, seed, acc + delta, "bf16-mixed")
    _record(tmp_path / "fp32", "favor-ape", 42, 0.5, "32-true")  # not run in bf16: left out
    rows = compare(load_runs(tmp_path / "bf16")[0], load_runs(tmp_path / "fp32")[0])
    by = {r["variant"]: r for r in rows}
    assert set(by) == {"softmax-ape", "relu-ape", "favor-rope"}
    assert by["softmax-ape"]["difference"] == pytest.approx(0.001 / 3)
    assert by["softmax-ape"]["target_met"] is True
    assert by["relu-ape"]["difference"] == pytest.approx(-0.004)
    assert by["relu-ape"]["difference_ci"][1] < 0 and by["relu-ape"]["target_met"] is False
    ci = by["favor-rope"]["difference_ci"]
    assert ci[0] < 0 < ci[1] and by["favor-rope"]["target_met"] is False
    with pytest.raises(ConfigError, match="expected 'bf16-mixed'"):
        compare(load_runs(tmp_path / "fp32")[0], load_runs(tmp_path / "fp32")[0])
