"""Numerical safety under adversarial activations and low precision (FAVOR+ is known to NaN)."""

from __future__ import annotations

import pytest
import torch

import rpevit
from rpevit.attention import (
    Attention,
    FavorKernel,
    ReluKernel,
    SoftmaxKernel,
    favor_attention,
    orthogonal_gaussian_projection,
)
from rpevit.positions import CirculantString, KernelizedRPE, Rope2D, TokenGrid
from rpevit.registry import CORE_MODELS

LOW_PRECISION = [torch.bfloat16, torch.float16]


@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("scale", [1e-3, 1.0, 30.0, 300.0])
def test_favor_attention_is_finite_for_any_norm_under_autocast(dtype, scale):
    q, k, v = (torch.randn(2, 2, 33, 16) for _ in range(3))
    w = orthogonal_gaussian_projection(64, 16)
    with torch.autocast("cpu", dtype=dtype):
        out = favor_attention(q * scale, k * scale, v, w)
    assert torch.isfinite(out).all()
    # The output is a convex combination of values: it stays inside their range.
    assert out.float().amax() <= v.amax() + 1e-2 and out.float().amin() >= v.amin() - 1e-2


POSITIONS = {
    "rpe": lambda: KernelizedRPE(2, (4, 4)),
    "string": lambda: CirculantString(8, 2),
    "rope": lambda: Rope2D(8, 2),
}
KERNELS = {
    "softmax": SoftmaxKernel,
    "favor": lambda: FavorKernel(8, 32),
    "relu": lambda: ReluKernel(8),
}


@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("position", list(POSITIONS))
@pytest.mark.parametrize("kernel", list(KERNELS))
def test_attention_finite_with_large_activations_in_half_precision(kernel, position, dtype):
    module = Attention(16, 2, KERNELS[kernel](), POSITIONS[position]())
    with torch.no_grad():
        for p in module.position.parameters():
            p.add_(torch.randn_like(p) * 3)  # large relative logits: exp(b) spans many decades
    x = torch.randn(2, 17, 16) * 50
    with torch.autocast("cpu", dtype=dtype):
        out = module(x, TokenGrid(4, 4, 1))
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", CORE_MODELS)
@pytest.mark.parametrize(
    "images",
    [torch.zeros(2, 1, 28, 28), torch.full((2, 1, 28, 28), 7.0), torch.randn(2, 1, 28, 28) * 1e4],
    ids=["zeros", "constant", "huge"],
)
def test_models_finite_on_degenerate_images(name, images):
    model = rpevit.create_model(
        name,
        image_size=28,
        in_chans=1,
        num_classes=10,
        patch_size=4,
        dim=32,
        depth=2,
        heads=4,
        mlp_dim=64,
    ).eval()
    with torch.no_grad():
        assert torch.isfinite(model(images)).all()


@pytest.mark.parametrize("name", CORE_MODELS)
def test_single_patch_token(name):
    """A 1x1 grid (one patch, plus CLS or not) is a valid, if degenerate, input."""
    for pool in ("cls", "mean"):
        model = rpevit.create_model(
            name,
            image_size=4,
            in_chans=1,
            num_classes=3,
            patch_size=4,
            dim=16,
            depth=1,
            heads=2,
            mlp_dim=16,
            pool=pool,
        )
        logits = model(torch.randn(2, 1, 4, 4))
        logits.sum().backward()
        assert torch.isfinite(logits).all()
