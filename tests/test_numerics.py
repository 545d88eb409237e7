"""Numerical safety under adversarial activations and low precision (FAVOR+ is known to NaN)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

import rpevit
from rpevit.attention import (
    Attention,
    FavorKernel,
    ReluKernel,
    SoftmaxKernel,
    exp_feature_pair,
    favor_attention,
    linear_attention,
    orthogonal_gaussian_projection,
)
from rpevit.attention.kernels import ExpKernel, LearnableKernel
from rpevit.positions import CirculantString, KernelizedRPE, Rope2D, TokenGrid
from rpevit.registry import CORE_MODELS

LOW_PRECISION = [torch.bfloat16, torch.float16]


def _log_favor(x: Tensor, w: Tensor) -> Tensor:
    """float64 log of the raw FAVOR+ features, up to the constant ``-ln(m)/2``."""
    x = x.double() * x.shape[-1] ** -0.25
    return x @ w.double().T - 0.5 * (x * x).sum(-1, keepdim=True)


def _log_exp(x: Tensor) -> Tensor:
    """float64 log of the EXP kernel's features ``exp(x d^-1/4)``."""
    return x.double() * x.shape[-1] ** -0.25


def _estimator(log_q: Tensor, log_k: Tensor, v: Tensor, bias: Tensor | None = None) -> Tensor:
    """Linear attention with features ``exp(log_q)``, ``exp(log_k)`` (and weights ``exp(bias)``)
    evaluated in log space in float64: the estimator itself, free of under- and overflow."""
    logits = torch.logsumexp(log_q[..., :, None, :] + log_k[..., None, :, :], dim=-1)
    return torch.softmax(logits if bias is None else logits + bias, dim=-1) @ v.double()


def _exact_softmax(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    q, k, v = q.double(), k.double(), v.double()
    return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1) @ v


def _row_error(out: Tensor, ref: Tensor) -> Tensor:
    return (out.double() - ref).norm(dim=-1) / ref.norm(dim=-1)


def _assert_rows_are_sound(out: Tensor, v: Tensor, exact: Tensor) -> None:
    """Each output row stays in the box of the values (a convex combination) and none has
    collapsed: its norm is comparable to the exact softmax output's (both are averages of v)."""
    out, v = out.double(), v.double()
    assert (out >= v.amin(-2, keepdim=True) - 1e-2).all()
    assert (out <= v.amax(-2, keepdim=True) + 1e-2).all()
    ratio = out.norm(dim=-1) / exact.norm(dim=-1)
    assert ratio.min() > 0.05, f"{(ratio < 1e-3).float().mean():.1%} of rows collapsed"


LARGE_NORM_KERNELS = {
    "favor": lambda: FavorKernel(16, 64),
    "learnable": lambda: LearnableKernel(16, 64),
    "exp": ExpKernel,
}


def _log_features(kernel, q, k):
    if isinstance(kernel, ExpKernel):
        return _log_exp(q), _log_exp(k)
    w = kernel.projection if isinstance(kernel, FavorKernel) else kernel.feature_weight
    return _log_favor(q, w), _log_favor(k, w)


@pytest.mark.parametrize("scale", [1.0, 10.0, 30.0, 300.0])
@pytest.mark.parametrize("name", list(LARGE_NORM_KERNELS))
def test_exponential_kernels_in_float32_equal_their_estimator_at_any_norm(name, scale):
    """Defect 3 of issue 15: with one key stabiliser per (batch, head), q, k x 30 zeroed 84% of
    FAVOR+ rows. The float32 kernel must equal its own estimator computed in log space in float64,
    and stay a convex combination of v as large as exact softmax's output."""
    kernel = LARGE_NORM_KERNELS[name]().eval()
    q, k, v = (torch.randn(2, 4, 64, 16) for _ in range(3))
    q, k = q * scale, k * scale
    with torch.no_grad():
        out = kernel(q, k, v, None, TokenGrid(8, 8, 0))
    assert out.dtype == torch.float32
    reference = _estimator(*_log_features(kernel, q, k), v)
    assert _row_error(out, reference).max() < 1e-3  # float32 exponents of size ~|q'|^2 / 2
    _assert_rows_are_sound(out, v, _exact_softmax(q, k, v))


@pytest.mark.parametrize("method", ["quadratic", "fft"])
def test_favor_rpe_at_large_norm_equals_its_estimator(method):
    """The RPE path receives the jointly stabilised features and weights them by exp(b)."""
    kernel = FavorKernel(16, 64, rpe_method=method).eval()
    position = KernelizedRPE(4, (4, 4))
    with torch.no_grad():
        position.table.normal_()
    grid = TokenGrid(4, 4, 1)
    q, k, v = (torch.randn(2, 4, 17, 16) for _ in range(3))
    q, k = q * 30, k * 30
    relative = position.relative_weights(grid)
    with torch.no_grad():
        out = kernel(q, k, v, relative, grid)
        bias = relative.dense_logits().double()
    reference = _estimator(
        _log_favor(q, kernel.projection), _log_favor(k, kernel.projection), v, bias
    )
    assert _row_error(out, reference).max() < 1e-3


def test_joint_stabiliser_keeps_every_product_and_cannot_underflow_a_row():
    """``exp_feature_pair`` gives ``phi(q_i)_a phi(k_j)_a = exp(e^q_ia + e^k_ja - s_i)`` with
    ``s_i = max_ja (e^q_ia + e^k_ja)``: features <= 1 and a product of exactly 1 in every row."""
    e_q, e_k = torch.randn(3, 20, 12) * 300, torch.randn(3, 30, 12) * 300
    q_features, k_features = exp_feature_pair(e_q.clone(), e_k.clone())
    products = q_features[:, :, None, :] * k_features[:, None, :, :]  # [b, i, j, a]
    logits = e_q.double()[:, :, None, :] + e_k.double()[:, None, :, :]
    expected = torch.exp(logits - logits.amax(dim=(2, 3), keepdim=True))
    torch.testing.assert_close(products.double(), expected, rtol=1e-4, atol=1e-30)
    assert q_features.max() <= 1 and k_features.max() <= 1
    assert (products.amax(dim=(2, 3)) == 1).all()  # so every denominator is >= 1


def test_linear_attention_does_not_depend_on_the_scale_of_the_features():
    """Positive factors cancel in the ratio, however small the denominators get (an absolute
    1e-12 clamp zeroed these rows)."""
    q_features, k_features = torch.rand(2, 2, 10, 6) + 0.1, torch.rand(2, 2, 12, 6) + 0.1
    v = torch.randn(2, 2, 12, 4)
    reference = linear_attention(q_features, k_features, v)
    for factor in (1e-10, 1e-16):
        scaled = linear_attention(q_features * factor, k_features * factor, v)
        torch.testing.assert_close(scaled, reference)


def test_favor_gradients_equal_the_estimator_gradients():
    """The detached stabilisers cancel exactly, so they carry no gradient (float64)."""
    q, k, v = (torch.randn(1, 2, 12, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    w = torch.randn(16, 8, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(1, 2, 12, 8, dtype=torch.float64)
    ours = torch.autograd.grad((favor_attention(q * 2, k * 2, v, w) * weights).sum(), (q, k, v, w))
    ref = _estimator(_log_favor(q * 2, w), _log_favor(k * 2, w), v)
    expected = torch.autograd.grad((ref * weights).sum(), (q, k, v, w))
    for a, b in zip(ours, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_favor_in_float32_converges_to_exact_softmax_as_m_grows():
    q, k, v = (torch.randn(1, 4, 64, 16) * s for s in (0.5, 0.5, 1.0))
    exact = _exact_softmax(q, k, v)
    errors = []
    for m in (32, 512, 8192):
        outs = [favor_attention(q, k, v, orthogonal_gaussian_projection(m, 16)) for _ in range(3)]
        errors.append(sum((o.double() - exact).norm() / exact.norm() for o in outs).item() / 3)
    assert errors[0] > errors[1] > errors[2] and errors[0] / errors[2] > 5, errors
    assert errors[2] < 0.05, errors


def _cpu_low_precision(dtype: torch.dtype) -> bool:
    """Whether this CPU build runs matmuls of ``dtype`` under autocast."""
    try:
        with torch.autocast("cpu", dtype=dtype):
            return (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == dtype
    except (RuntimeError, TypeError):
        return False


@pytest.mark.parametrize("scale", [1e-3, 1.0, 30.0, 300.0])
@pytest.mark.parametrize("mode", ["inputs", "autocast"])
@pytest.mark.parametrize("dtype", LOW_PRECISION)
def test_favor_attention_in_low_precision_matches_float64_and_exact_softmax(dtype, mode, scale):
    """Low-precision q, k, v (given, or made by a linear layer under CPU autocast): the output
    has their dtype, equals the float64 estimator of the same inputs to that dtype's precision
    (features are computed in float32) and no row collapses against exact softmax."""
    if mode == "autocast" and not _cpu_low_precision(dtype):
        pytest.skip(f"CPU autocast does not run {dtype} matmuls here")
    x = torch.randn(2, 2, 33, 16)
    layer = torch.nn.Linear(16, 48, bias=False)
    w = orthogonal_gaussian_projection(64, 16)
    with torch.no_grad():
        if mode == "inputs":
            q, k, v = (t.to(dtype) for t in layer(x).chunk(3, dim=-1))
            out = favor_attention(q * scale, k * scale, v, w)
        else:
            with torch.autocast("cpu", dtype=dtype):
                q, k, v = layer(x).chunk(3, dim=-1)
                out = favor_attention(q * scale, k * scale, v, w)
    assert q.dtype == dtype and out.dtype == dtype
    q, k = q * scale, k * scale  # as the function saw them, in dtype
    reference = _estimator(_log_favor(q, w), _log_favor(k, w), v)
    error = (out.double() - reference).abs().max() / v.double().abs().max()
    assert error < 4 * torch.finfo(dtype).eps + 1e-3 * (scale > 1)
    exact = _exact_softmax(q, k, v)
    _assert_rows_are_sound(out, v, exact)
    if scale <= 1e-3:  # nearly uniform attention: the estimator is then exact softmax
        assert (out.double() - exact).abs().max() < 4 * torch.finfo(dtype).eps * v.abs().max()


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
