"""Mathematics of the position encodings (DESIGN.md sections 4 and 5)."""

from __future__ import annotations

import pytest
import torch

from rpevit.attention import (
    Attention,
    FavorKernel,
    ReluKernel,
    SoftmaxKernel,
    favor_features,
    orthogonal_gaussian_projection,
    relu_features,
    rpe_linear_attention,
)
from rpevit.attention.toeplitz import dense_relative_matrix
from rpevit.positions import CirculantString, KernelizedRPE, Rope2D, TokenGrid
from rpevit.positions.string import circulant_generator, string_rotate

F64 = torch.float64


def _dense_rpe_reference(qf, kf, v, log_c, height, width, prefix):
    """``(phi(Q) phi(K)^T * C) V / rownorm`` with an explicitly looped C (independent code)."""
    n = height * width
    c = torch.ones(log_c.shape[0], prefix + n, prefix + n, dtype=qf.dtype)
    for i in range(n):
        for j in range(n):
            dr = j // width - i // width
            dc = j % width - i % width
            c[:, prefix + i, prefix + j] = log_c[:, dr + height - 1, dc + width - 1].exp()
    scores = (qf @ kf.transpose(-1, -2)) * c
    return scores @ v / scores.sum(-1, keepdim=True)


@pytest.mark.parametrize("height,width", [(3, 5), (7, 7), (1, 4)])
@pytest.mark.parametrize("prefix", [0, 1])
@pytest.mark.parametrize("features", ["favor", "relu"])
@pytest.mark.parametrize("method", ["fft", "quadratic"])
def test_rpe_linear_attention_equals_dense_reference(height, width, prefix, features, method):
    heads, d, m = 2, 8, 12
    n = prefix + height * width
    q, k, v = (torch.randn(2, heads, n, d, dtype=F64) for _ in range(3))
    log_c = torch.randn(heads, 2 * height - 1, 2 * width - 1, dtype=F64)
    if features == "favor":
        w = orthogonal_gaussian_projection(m, d, dtype=F64)
        qf, kf = favor_features(q, w, is_query=True), favor_features(k, w, is_query=False)
    else:
        qf, kf = relu_features(q), relu_features(k)
    expected = _dense_rpe_reference(qf, kf, v, log_c, height, width, prefix)
    out = rpe_linear_attention(qf, kf, v, log_c, (height, width, prefix), method=method)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("method", ["fft", "quadratic"])
def test_rpe_chunked_with_recomputation_matches_and_backpropagates(monkeypatch, method):
    import rpevit.attention.toeplitz as toeplitz

    heads, d, height, width = 2, 4, 4, 6
    q, k, v = (torch.randn(1, heads, 1 + height * width, d, dtype=F64) for _ in range(3))
    log_c = torch.randn(heads, 2 * height - 1, 2 * width - 1, dtype=F64, requires_grad=True)
    qf, kf = relu_features(q), relu_features(k)
    grids = (height, width, 1)
    ref = rpe_linear_attention(qf, kf, v, log_c, grids, method="quadratic")
    (g_ref,) = torch.autograd.grad(ref.square().sum(), log_c)
    monkeypatch.setattr(toeplitz, "CHUNK_BYTES", 1)  # one feature (or query row) per chunk
    out = rpe_linear_attention(qf, kf, v, log_c, grids, method=method)
    (g_chunked,) = torch.autograd.grad(out.square().sum(), log_c)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(g_chunked, g_ref, rtol=1e-8, atol=1e-10)


def test_rpe_auto_method_switches_at_threshold(monkeypatch):
    import rpevit.attention.toeplitz as toeplitz

    calls = []
    for name in ("_toeplitz_quadratic", "_toeplitz_fft"):
        original = getattr(toeplitz, name)
        monkeypatch.setattr(
            toeplitz, name, lambda *a, _n=name, _f=original: calls.append(_n) or _f(*a)
        )
    monkeypatch.setattr(toeplitz, "FFT_THRESHOLD", 12)
    for height in (3, 4):  # 9 < 12 patch tokens, then 12
        qf = torch.rand(1, 1, 1 + 3 * height, 4)
        log_c = torch.zeros(1, 2 * height - 1, 5)
        rpe_linear_attention(qf, qf, qf, log_c, (height, 3, 1))
    assert calls == ["_toeplitz_quadratic", "_toeplitz_fft"]


def test_rpe_fft_path_never_builds_an_n_by_n_tensor():
    from conftest import LargestTensor

    height = width = 32  # N = 1024: an N x N tensor would have 1,048,576 elements per head
    n, heads, d, m = height * width, 1, 4, 4
    qf, kf = (torch.rand(1, heads, n + 1, m) for _ in range(2))
    v = torch.randn(1, heads, n + 1, d)
    log_c = torch.zeros(heads, 2 * height - 1, 2 * width - 1)
    with LargestTensor() as mode:
        rpe_linear_attention(qf, kf, v, log_c, (height, width, 1), method="fft")
    assert mode.max_numel < n * n // 4


def _relative_pair_products(rotate, a, b, shift):
    """``(R(a) q) . (R(b) k)`` against the same with both coordinates shifted by ``shift``."""
    q, k = torch.randn(1, 1, 1, 8, dtype=F64), torch.randn(1, 1, 1, 8, dtype=F64)
    first = (rotate(q, a) * rotate(k, b)).sum()
    second = (rotate(q, a + shift) * rotate(k, b + shift)).sum()
    return first, second


def _string_module(d=8, heads=1):
    module = CirculantString(d, heads).double()
    with torch.no_grad():  # move away from the RoPE-like initialisation: a generic generator
        module.c_row.add_(torch.randn_like(module.c_row) * 0.3)
        module.c_col.add_(torch.randn_like(module.c_col) * 0.3)
    return module


def test_string_rotation_is_orthogonal_relative_and_equals_matrix_exp():
    d = 8
    module = _string_module(d)
    basis = torch.eye(d, dtype=F64)
    coords = torch.tensor([[2.0, -3.0]], dtype=F64)
    r = string_rotate(
        basis[:, None, :].transpose(0, 1), coords.expand(d, 2), module.c_row, module.c_col
    )[0].T  # column j = R e_j
    torch.testing.assert_close(r.T @ r, torch.eye(d, dtype=F64))
    generator = 2.0 * circulant_generator(module.c_row[0]) - 3.0 * circulant_generator(
        module.c_col[0]
    )
    torch.testing.assert_close(r, torch.linalg.matrix_exp(generator), rtol=1e-10, atol=1e-10)
    assert not torch.allclose(r, torch.eye(d, dtype=F64))

    def rotate(x, pos):
        return string_rotate(x, pos[None].to(F64), module.c_row, module.c_col)

    first, second = _relative_pair_products(
        rotate, torch.tensor([1.0, 2.0]), torch.tensor([4.0, -1.0]), torch.tensor([3.0, 5.0])
    )
    torch.testing.assert_close(first, second)


@pytest.mark.parametrize("mode", ["axial", "mixed"])
def test_rope_rotation_is_orthogonal_and_relative(mode):
    module = Rope2D(8, heads=1, mode=mode).double()
    grid = TokenGrid(1, 1, num_prefix=0)

    def rotate(x, pos):
        shifted = TokenGrid(1, 1, num_prefix=0, origin=(int(pos[0]), int(pos[1])))
        return module.rotate(x, x, shifted)[0]

    first, second = _relative_pair_products(
        rotate, torch.tensor([1.0, 2.0]), torch.tensor([4.0, -1.0]), torch.tensor([3.0, 5.0])
    )
    torch.testing.assert_close(first, second)
    x = torch.randn(1, 1, 1, 8, dtype=F64)
    rotated = rotate(x, torch.tensor([3.0, 7.0]))
    torch.testing.assert_close(rotated.norm(), x.norm())  # orthogonal: norms preserved
    assert not torch.allclose(rotated, x)
    assert grid.num_tokens == 1


def test_rope_rotates_patches_only_not_cls():
    module = Rope2D(8, heads=2).double()
    q = torch.randn(1, 2, 1 + 6, 8, dtype=F64)
    rq, _ = module.rotate(q, q, TokenGrid(2, 3, num_prefix=1, origin=(1, 1)))
    assert torch.equal(rq[:, :, 0], q[:, :, 0])
    assert not torch.allclose(rq[:, :, 1:], q[:, :, 1:])


def _attention(kernel, position, dim=16, heads=2):
    torch.manual_seed(7)
    return Attention(dim, heads, kernel, position).double()


def _randomise_positions(module):
    with torch.no_grad():
        for name, p in module.position.named_parameters():
            p.add_(torch.randn_like(p) * (0.5 if "table" in name else 0.1))


POSITIONS = {
    "rpe": lambda: KernelizedRPE(2, (3, 4)),
    "string": lambda: CirculantString(8, 2),
    "rope": lambda: Rope2D(8, 2, "axial"),
    "rope-mixed": lambda: Rope2D(8, 2, "mixed"),
}


EXACTLY_RELATIVE = [("softmax", p) for p in POSITIONS] + [("favor", "rpe"), ("relu", "rpe")]


@pytest.mark.parametrize("kernel,position", EXACTLY_RELATIVE)
def test_translation_invariance(kernel, position):
    """Shifting every patch coordinate leaves attention unchanged (exactly relative).

    Rotations are relative between patch tokens; an unrotated CLS token sees absolute phases
    (as in Heo et al.), so rotation encodings are checked on a CLS-free sequence. Feature maps
    of rotated q/k are relative only in expectation (FAVOR+), so those are not listed."""
    make_kernel = {
        "softmax": SoftmaxKernel,
        "favor": lambda: FavorKernel(8, 16),
        "relu": lambda: ReluKernel(8),
    }[kernel]
    module = _attention(make_kernel(), POSITIONS[position]()).eval()
    _randomise_positions(module)
    prefix = 1 if position == "rpe" else 0
    x = torch.randn(2, prefix + 12, 16, dtype=F64)
    out = module(x, TokenGrid(3, 4, prefix))
    shifted = module(x, TokenGrid(3, 4, prefix, origin=(5, -2)))
    torch.testing.assert_close(out, shifted)
    if position != "rpe":  # and the check has power: a non-relative change is detected
        with torch.no_grad():
            other = module(x, TokenGrid(4, 3, prefix))
        assert not torch.allclose(out, other)


@pytest.mark.parametrize("position", ["rpe", "string", "rope", "rope-mixed"])
def test_favor_converges_to_softmax_with_same_weights(position):
    """FAVOR+-X estimates softmax-X: the error falls as the number of features grows."""
    soft = _attention(SoftmaxKernel(), POSITIONS[position]()).eval()
    _randomise_positions(soft)
    x = torch.randn(2, 13, 16, dtype=F64) * 0.8
    exact = soft(x, TokenGrid(3, 4, 1))
    errors = []
    for m in (64, 512, 4096):
        trial = []
        for seed in range(3):
            torch.manual_seed(seed)
            favor = _attention(FavorKernel(8, m), POSITIONS[position]()).eval()
            missing, unexpected = favor.load_state_dict(soft.state_dict(), strict=False)
            assert not unexpected and all(k.startswith("kernel.") for k in missing)
            out = favor(x, TokenGrid(3, 4, 1))
            trial.append(((out - exact).norm() / exact.norm()).item())
        errors.append(sum(trial) / len(trial))
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[0] / errors[2] > 3, errors  # ~sqrt(64) = 8 expected
    assert errors[2] < 0.05, errors


def test_softmax_rpe_bias_is_the_relative_table():
    table = torch.randn(1, 3, 5, dtype=F64)
    dense = dense_relative_matrix(table, 2, 3, 1, fill=0.0)[0]
    assert torch.equal(dense[0], torch.zeros(7, dtype=F64))
    assert torch.equal(dense[:, 0], torch.zeros(7, dtype=F64))
    # token (0, 2) -> token (1, 0): offset (1, -2) -> table index (1 + 1, -2 + 2)
    assert dense[1 + 2, 1 + 3] == table[0, 2, 0]


def test_rpe_table_resizes_by_clamping_offsets():
    rpe = KernelizedRPE(1, (2, 2))
    with torch.no_grad():
        rpe.table.copy_(torch.arange(9.0).reshape(1, 3, 3))
    bigger = rpe.relative_table(TokenGrid(3, 3))
    assert bigger.shape == (1, 5, 5)
    assert torch.equal(bigger[0, 2], torch.tensor([3.0, 3.0, 4.0, 5.0, 5.0]))  # offset 0 row
    assert torch.equal(rpe.relative_table(TokenGrid(1, 2))[0], rpe.table[0, 1:2])


@pytest.mark.parametrize("position", list(POSITIONS))
@pytest.mark.parametrize("kernel", ["softmax", "favor", "relu"])
def test_gradients_reach_position_parameters_and_bf16_is_finite(position, kernel):
    make_kernel = {
        "softmax": SoftmaxKernel,
        "favor": lambda: FavorKernel(8, 16),
        "relu": lambda: ReluKernel(8),
    }[kernel]
    module = Attention(16, 2, make_kernel(), POSITIONS[position]())
    _randomise_positions(module)
    x = torch.randn(2, 13, 16)
    module(x, TokenGrid(3, 4, 1)).square().sum().backward()
    params = dict(module.position.named_parameters())
    assert params or position == "rope"
    for name, p in params.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(x * 10, TokenGrid(3, 4, 1))
    assert torch.isfinite(out).all()
