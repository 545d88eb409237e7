"""The exact RPE paths of linear attention (attention/toeplitz.py): values and gradients against
an independent float64 dense reference, float32 accuracy, stabilisation, the softmax bias."""

from __future__ import annotations

import pytest
import torch

import rpevit.attention.toeplitz as toeplitz
import rpevit.attention.toeplitz_fft as toeplitz_fft
from rpevit.attention import favor_features, orthogonal_gaussian_projection, rpe_linear_attention
from rpevit.attention.toeplitz import dense_relative_matrix
from rpevit.positions import KernelizedRPE, TokenGrid

F64 = torch.float64


def _weights(log_c, height, width, prefix):
    """``C [h, P+N, P+N]``: ``exp(table[r_j - r_i])`` between patches, 1 to and from prefix."""
    n = height * width
    rows, cols = torch.arange(n) // width, torch.arange(n) % width
    dr = rows[None, :] - rows[:, None] + height - 1
    dc = cols[None, :] - cols[:, None] + width - 1
    c = torch.ones(log_c.shape[0], prefix + n, prefix + n, dtype=F64)
    c[:, prefix:, prefix:] = log_c.to(F64)[:, dr, dc].exp()
    return c


def _reference(qf, kf, v, log_c, height, width, prefix):
    """``((phi(Q) phi(K)^T) * C) V`` with row normalisation, in float64."""
    scores = (qf.to(F64) @ kf.to(F64).transpose(-1, -2)) * _weights(log_c, height, width, prefix)
    return scores @ v.to(F64) / scores.sum(-1, keepdim=True)


def _features(batch, heads, n, d, m, dtype=F64):
    q, k, v = (torch.randn(batch, heads, n, d, dtype=dtype) for _ in range(3))
    w = orthogonal_gaussian_projection(m, d, dtype=dtype)
    return favor_features(q, w, is_query=True), favor_features(k, w, is_query=False), v


def _row_error(out, ref):
    return ((out.to(F64) - ref).norm(dim=-1) / ref.norm(dim=-1)).max().item()


@pytest.mark.parametrize("a", [8.0, 12.0, 16.0])
@pytest.mark.parametrize("method", ["fft", "quadratic"])
def test_float32_is_accurate_for_tables_with_a_wide_range(a, method):
    """Issue 15 defect 1: ``b = a tanh(dr)`` on 16 x 16 (one FFT transform: error 3e-2 at a = 8,
    8 at a = 16); both paths now stay within a few float32 roundings of the float64 result."""
    height = width = 16
    qf, kf, v = _features(2, 2, 1 + height * width, 16, 32, torch.float32)
    dr = torch.arange(-(height - 1), height, dtype=torch.float32)
    log_c = (a * torch.tanh(dr))[None, :, None].expand(2, -1, 2 * width - 1).contiguous()
    out = rpe_linear_attention(qf, kf, v, log_c, (height, width, 1), method=method)
    assert out.dtype == torch.float32
    assert _row_error(out, _reference(qf, kf, v, log_c, height, width, 1)) < 2e-6


@pytest.mark.parametrize("method", ["fft", "quadratic"])
@pytest.mark.parametrize("entry,prefix", [(100.0, 1), (100.0, 0), (-100.0, 1)])
def test_extreme_table_entries_give_the_exact_finite_result(method, entry, prefix):
    """Issue 15 defect 2: one entry of +-100 (exp overflows float32) off the centre, so some rows
    reach it and some do not; with prefix, -100 everywhere else leaves the CLS weight dominant."""
    height, width = 4, 5
    qf, kf, v = _features(1, 2, prefix + height * width, 8, 16, torch.float32)
    log_c = torch.randn(2, 2 * height - 1, 2 * width - 1)
    log_c[0, 5, 6] = entry  # offset (2, 2): only queries in rows 0-1, columns 0-2 reach it
    if entry < 0:
        log_c[1] = entry
    out = rpe_linear_attention(qf, kf, v, log_c, (height, width, prefix), method=method)
    assert torch.isfinite(out).all()
    assert _row_error(out, _reference(qf, kf, v, log_c, height, width, prefix)) < 2e-6


@pytest.mark.parametrize("height,width", [(3, 3), (2, 4)])
@pytest.mark.parametrize("prefix", [0, 1, 2])
def test_fft_gradients_pass_gradcheck(height, width, prefix):
    """Custom backward (conjugate-spectrum correlation) against finite differences, for every
    input; gradcheck's own reference is the forward itself, so also check it is exact."""
    qf, kf, v = _features(1, 2, prefix + height * width, 3, 4)
    log_c = torch.randn(2, 2 * height - 1, 2 * width - 1, dtype=F64)
    inputs = [t.clone().requires_grad_() for t in (qf, kf, v, log_c)]
    grid = (height, width, prefix)

    def fft(*args):
        return rpe_linear_attention(*args, grid, method="fft")

    assert torch.autograd.gradcheck(fft, inputs, fast_mode=True)
    torch.testing.assert_close(fft(qf, kf, v, log_c), _reference(qf, kf, v, log_c, *grid))


@pytest.mark.parametrize("height,width,prefix", [(4, 4, 1), (3, 6, 2), (5, 2, 0)])
@pytest.mark.parametrize("bands", [False, True])
def test_fft_values_and_gradients_equal_the_dense_reference(height, width, prefix, bands):
    """Against autograd through the dense float64 reference, with one band and (a table of spread
    30) several bands; the loss weights every output differently."""
    qf, kf, v = _features(2, 3, prefix + height * width, 4, 6)
    log_c = torch.randn(3, 2 * height - 1, 2 * width - 1, dtype=F64)
    if bands:
        log_c[:, : height - 1] += 30.0  # rows near the bottom reach only the low half
    grid = (height, width, prefix)
    weight = torch.randn(2, 3, prefix + height * width, 4, dtype=F64)
    results = []
    for fn in (_reference, lambda *a: rpe_linear_attention(*a[:4], a[4:], method="fft")):
        inputs = [t.clone().requires_grad_() for t in (qf, kf, v, log_c)]
        out = fn(*inputs, *grid)
        results.append([out, *torch.autograd.grad((out * weight).sum(), inputs)])
    for got, expected in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("setting", ["FFT_CHUNK_BYTES", "FFT_SAVE_BYTES"])
def test_fft_chunking_and_recomputation_do_not_change_values_or_gradients(monkeypatch, setting):
    """One feature per chunk, or the forward output recomputed in backward instead of saved."""
    height, width = 3, 4
    qf, kf, v = _features(2, 2, 1 + height * width, 4, 6)
    log_c = torch.randn(2, 2 * height - 1, 2 * width - 1, dtype=F64)
    results = []
    for patch in (False, True):
        if patch:
            monkeypatch.setattr(toeplitz, setting, 1 if setting == "FFT_CHUNK_BYTES" else 0)
        inputs = [t.clone().requires_grad_() for t in (qf, kf, v, log_c)]
        out = rpe_linear_attention(*inputs, (height, width, 1), method="fft")
        results.append([out, *torch.autograd.grad(out.square().sum(), inputs)])
    for got, expected in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)


def test_fft_float32_uses_float64_transforms_only_for_non_flat_tables(monkeypatch):
    """The zero-initialised table stays on the fast float32 transforms."""
    dtypes = []
    original = toeplitz_fft.ToeplitzFFT.apply
    monkeypatch.setattr(
        toeplitz_fft.ToeplitzFFT, "apply", lambda *a: dtypes.append(a[0].dtype) or original(*a)
    )
    qf, kf, v = _features(1, 1, 10, 4, 4, torch.float32)
    for scale in (0.0, 5.0):
        log_c = scale * torch.randn(1, 5, 5)
        rpe_linear_attention(qf, kf, v, log_c, (3, 3, 1), method="fft")
    assert dtypes == [torch.float32, F64]


def _dense_bias_reference(table, height, width, prefix):
    n = height * width
    out = torch.zeros(table.shape[0], prefix + n, prefix + n, dtype=table.dtype)
    for i in range(n):
        for j in range(n):
            dr, dc = j // width - i // width, j % width - i % width
            out[:, prefix + i, prefix + j] = table[:, dr + height - 1, dc + width - 1]
    return out


@pytest.mark.parametrize("height,width,prefix", [(2, 3, 1), (4, 4, 0), (3, 1, 2)])
def test_softmax_bias_is_the_relative_table_and_backpropagates(height, width, prefix):
    table = torch.randn(2, 2 * height - 1, 2 * width - 1, dtype=F64, requires_grad=True)
    expected = _dense_bias_reference(table.detach(), height, width, prefix)
    assert torch.equal(dense_relative_matrix(table, height, width, prefix), expected)
    assert dense_relative_matrix(table, height, width, prefix, torch.float32).dtype == (
        torch.float32
    )
    assert torch.autograd.gradcheck(
        lambda t: dense_relative_matrix(t, height, width, prefix), [table]
    )


def test_softmax_rpe_builds_its_bias_once_in_the_query_dtype():
    """No separate unfold/flip, pad and dtype-cast copies: one [h, P+N, P+N] tensor, already in
    the queries' dtype; the attention it gives is softmax with that bias."""
    from torch.utils._python_dispatch import TorchDispatchMode

    height = width = 8
    n = 1 + height * width
    rpe = KernelizedRPE(2, (height, width))
    with torch.no_grad():
        rpe.table.normal_()
    weights = rpe.relative_weights(TokenGrid(height, width))

    class Storages(TorchDispatchMode):
        big: set = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor) and out.untyped_storage().nbytes() >= 8 * (n - 1) ** 2:
                self.big.add(out.untyped_storage().data_ptr())
            return out

    with Storages() as mode:
        bias = weights.dense_logits(F64)
    assert len(mode.big) == 1 and bias.dtype == F64
    q, k, v = (torch.randn(1, 2, n, 4, dtype=F64) for _ in range(3))
    logits = q @ k.transpose(-1, -2) / 2.0 + _dense_bias_reference(rpe.table.to(F64), 8, 8, 1)
    torch.testing.assert_close(weights.softmax(q, k, v), logits.softmax(-1) @ v)


def test_auto_takes_the_fft_later_when_it_needs_float64_transforms(monkeypatch):
    """``auto`` compares the grid with FFT_THRESHOLD for flat tables (float32 transforms) and
    with the higher FFT64_THRESHOLD otherwise."""
    calls = []
    for name in ("_toeplitz_quadratic", "_toeplitz_fft"):
        original = getattr(toeplitz, name)
        monkeypatch.setattr(
            toeplitz, name, lambda *a, _n=name, _f=original: calls.append(_n) or _f(*a)
        )
    monkeypatch.setattr(toeplitz, "FFT_THRESHOLD", 12)
    monkeypatch.setattr(toeplitz, "FFT64_THRESHOLD", 16)
    small = _features(1, 1, 10, 4, 4, torch.float32)  # 9 < 12 patch tokens, flat: quadratic
    rpe_linear_attention(*small, torch.zeros(1, 5, 5), (3, 3, 1))
    qf, kf, v = _features(1, 1, 13, 4, 4, torch.float32)
    for scale in (0.0, 5.0):  # 12 patch tokens: flat -> fft, spread -> quadratic
        rpe_linear_attention(qf, kf, v, scale * torch.randn(1, 5, 7), (3, 4, 1))
    assert calls == ["_toeplitz_quadratic", "_toeplitz_fft", "_toeplitz_quadratic"]
