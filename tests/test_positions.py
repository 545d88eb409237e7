"""Mathematics of the position encodings (DESIGN.md sections 4 and 5)."""

from __future__ import annotations

import math

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
from rpevit.positions import CirculantString, FourierRPE, KernelizedRPE, Rope2D, TokenGrid
from rpevit.positions.gates import PositionGate
from rpevit.positions.string import (
    angles_to_first_column,
    circulant_generator,
    first_column_to_angles,
)

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
def test_rpe_linear_attention_equals_dense_reference(
    height, width, prefix, features, method, device
):
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
    qf, kf, v, log_c = (t.to(device) for t in (qf, kf, v, log_c))
    out = rpe_linear_attention(qf, kf, v, log_c, (height, width, prefix), method=method)
    torch.testing.assert_close(out.cpu(), expected, rtol=1e-10, atol=1e-10)


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
    # one feature (fft) or one query row (quadratic) per chunk
    monkeypatch.setattr(toeplitz, "FFT_CHUNK_BYTES" if method == "fft" else "CHUNK_BYTES", 1)
    out = rpe_linear_attention(qf, kf, v, log_c, grids, method=method)
    (g_chunked,) = torch.autograd.grad(out.square().sum(), log_c)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(g_chunked, g_ref, rtol=1e-8, atol=1e-10)


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


def _string_module(d=8, heads=2):
    """STRING moved away from its RoPE-like initialisation: generic angles on every bin."""
    module = CirculantString(d, heads).double()
    with torch.no_grad():
        module.freq_row.add_(torch.randn_like(module.freq_row) * 0.3)
        module.freq_col.add_(torch.randn_like(module.freq_col) * 0.3)
    return module


def _mixed_rope_module(d=8, heads=2):
    module = Rope2D(d, heads, "mixed").double()
    with torch.no_grad():
        module.freqs.add_(torch.randn_like(module.freqs) * 0.3)
    return module


ROTATIONS = {
    "string": _string_module,
    "rope": lambda: Rope2D(8, 2, "axial").double(),
    "rope-mixed": _mixed_rope_module,
}


def _circulant(first_column):
    """``C[i, j] = c[(i - j) mod d]``, written out."""
    d = len(first_column)
    return torch.stack(
        [torch.stack([first_column[(i - j) % d] for j in range(d)]) for i in range(d)]
    )


def _reference_generator(angles, d):
    """The skew-symmetric circulant whose DFT eigenvalues are ``i angles_k`` on bins ``k = 1..``:
    first column ``l[n] = -(2/d) sum_k angles_k sin(2 pi k n / d)``."""
    n = torch.arange(d, dtype=F64)
    bins = torch.arange(1, len(angles) + 1, dtype=F64)
    column = -(2 / d) * (angles[:, None] * torch.sin(2 * math.pi * bins[:, None] * n / d)).sum(0)
    return _circulant(column)


def test_string_rotates_each_patch_by_the_matrix_exp_of_both_axes():
    d, heads = 8, 2
    module = _string_module(d, heads)
    grid = TokenGrid(2, 3, num_prefix=1, origin=(3, -2))  # rows 3..4, columns -2..0
    q, k = (torch.randn(2, heads, grid.num_tokens, d, dtype=F64) for _ in range(2))
    rq, rk = module.rotate(q, k, grid)
    assert torch.equal(rq[:, :, 0], q[:, :, 0]) and torch.equal(rk[:, :, 0], k[:, :, 0])
    for h in range(heads):
        generators = []
        for angles in (module.freq_row[h].detach(), module.freq_col[h].detach()):
            generators.append(_reference_generator(angles, d))
            dense = circulant_generator(angles_to_first_column(angles, d))  # the module's helper
            torch.testing.assert_close(dense, generators[-1], rtol=1e-12, atol=1e-12)
        for t, (row, col) in enumerate(grid.coords(dtype=F64)):
            r = torch.linalg.matrix_exp(row * generators[0] + col * generators[1])
            torch.testing.assert_close(r.T @ r, torch.eye(d, dtype=F64))
            assert (r - torch.eye(d, dtype=F64)).abs().max() > 0.1
            for x, rx in ((q, rq), (k, rk)):
                expected = x[:, h, 1 + t] @ r.T
                torch.testing.assert_close(rx[:, h, 1 + t], expected, rtol=1e-10, atol=1e-10)


def test_string_angles_and_first_columns_convert_both_ways():
    angles = torch.randn(3, 7, dtype=F64)
    for d in (15, 16):
        column = angles_to_first_column(angles, d)
        torch.testing.assert_close(first_column_to_angles(column), angles, rtol=0, atol=1e-12)
        torch.testing.assert_close(column, -column[..., (-torch.arange(d)) % d])  # odd


def test_string_every_parameter_acts_and_is_counted():
    """No dead parameters: every angle moves the logits (a dense first column had d/2 + 1 of its
    d entries per axis and head with gradient exactly 0)."""
    d, heads = 16, 4
    module = _string_module(d, heads)
    assert {name: p.shape for name, p in module.named_parameters()} == {
        "freq_row": (heads, d // 2 - 1),
        "freq_col": (heads, d // 2 - 1),
    }
    grid = TokenGrid(3, 4, num_prefix=1)
    q, k = (torch.randn(1, heads, grid.num_tokens, d, dtype=F64) for _ in range(2))
    rq, rk = module.rotate(q, k, grid)
    logits = rq @ rk.transpose(-1, -2)
    (logits * torch.randn_like(logits)).sum().backward()
    for name, p in module.named_parameters():
        assert (p.grad.abs() > 1e-8).all(), (name, p.grad)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_string_loads_first_column_checkpoints_with_identical_outputs(dtype):
    """A former checkpoint (learnable first columns ``c_row``, ``c_col`` ``[h, d]``) loads with
    strict key checking and rotates exactly as the former first-column forward pass did."""
    d, heads = 8, 2
    attention = Attention(16, heads, SoftmaxKernel(), CirculantString(d, heads)).to(dtype)
    c_row, c_col = (torch.randn(heads, d, dtype=dtype) for _ in range(2))
    state = attention.state_dict()
    del state["position.freq_row"], state["position.freq_col"]
    state["position.c_row"], state["position.c_col"] = c_row, c_col
    attention.load_state_dict(state)
    grid = TokenGrid(3, 4, num_prefix=1, origin=(1, -2))
    coords = grid.coords(dtype=dtype)
    q, k = (torch.randn(2, heads, grid.num_tokens, d, dtype=dtype) for _ in range(2))
    rq, rk = attention.position.rotate(q, k, grid)
    phase = (
        coords[:, 0, None] * 2 * torch.fft.rfft(c_row).imag[:, None]
        + coords[:, 1, None] * 2 * torch.fft.rfft(c_col).imag[:, None]
    )  # the former forward pass, verbatim
    for x, rx in ((q, rq), (k, rk)):
        spectrum = torch.fft.rfft(x[:, :, 1:]) * torch.polar(torch.ones_like(phase), phase)
        assert torch.equal(rx[:, :, 1:], torch.fft.irfft(spectrum, n=d))
    if dtype == F64:  # and that is exp(row (C_row - C_row^T) + col (C_col - C_col^T))
        for h in range(heads):
            generators = [_circulant(c[h]) - _circulant(c[h]).T for c in (c_row, c_col)]
            (row, col) = coords[5]
            r = torch.linalg.matrix_exp(row * generators[0] + col * generators[1])
            torch.testing.assert_close(rq[:, h, 1 + 5], q[:, h, 1 + 5] @ r.T)


@pytest.mark.parametrize("mode", ["axial", "mixed"])
def test_rope_rotates_each_patch_by_reference_angles_of_both_axes(mode):
    """Pairs ``(x_t, x_{t + d/2})`` turn by ``row theta_t`` (first d/4 pairs) and ``col theta_t``
    (the others), ``theta_t = 100^(-t/(d/4))``; mixed: by ``row f_row + col f_col`` per head."""
    d, heads = 8, 2
    module = Rope2D(d, heads, "axial").double() if mode == "axial" else _mixed_rope_module()
    grid = TokenGrid(2, 3, num_prefix=1, origin=(3, -2))
    q, k = (torch.randn(2, heads, grid.num_tokens, d, dtype=F64) for _ in range(2))
    rq, rk = module.rotate(q, k, grid)
    assert torch.equal(rq[:, :, 0], q[:, :, 0]) and torch.equal(rk[:, :, 0], k[:, :, 0])
    quarter, half = d // 4, d // 2
    for h in range(heads):
        for t, (row, col) in enumerate(grid.coords(dtype=F64)):
            for p in range(half):
                if mode == "axial":
                    angle = (row if p < quarter else col) * 100.0 ** (-(p % quarter) / quarter)
                else:
                    angle = row * module.freqs[0, h, p] + col * module.freqs[1, h, p]
                cos, sin = torch.cos(angle), torch.sin(angle)
                for x, rx in ((q, rq), (k, rk)):
                    a, b = x[:, h, 1 + t, p], x[:, h, 1 + t, p + half]
                    torch.testing.assert_close(rx[:, h, 1 + t, p], a * cos - b * sin)
                    torch.testing.assert_close(rx[:, h, 1 + t, p + half], a * sin + b * cos)


@pytest.mark.parametrize("shift", [(0, 3), (2, 0), (5, -2)])
@pytest.mark.parametrize("position", list(ROTATIONS))
def test_rotation_shift_keeps_patch_logits_and_changes_cls_logits(position, shift):
    """The invariance statement of DESIGN.md sec. 4 for rotations, logit by logit: a common shift
    of the patch coordinates (also along one axis alone) keeps every patch-to-patch logit and the
    CLS-to-CLS logit, and changes every CLS-to-patch and patch-to-CLS logit (CLS is not rotated,
    so those see absolute phases) and every rotated vector."""
    module = ROTATIONS[position]()
    grid = TokenGrid(3, 4, num_prefix=1)
    q, k = (torch.randn(2, 2, grid.num_tokens, 8, dtype=F64) for _ in range(2))
    rq, rk = module.rotate(q, k, grid)
    sq, sk = module.rotate(q, k, TokenGrid(3, 4, num_prefix=1, origin=shift))
    logits, shifted = rq @ rk.transpose(-1, -2), sq @ sk.transpose(-1, -2)
    torch.testing.assert_close(shifted[..., 1:, 1:], logits[..., 1:, 1:])
    torch.testing.assert_close(shifted[..., 0, 0], logits[..., 0, 0])
    assert ((shifted[..., 0, 1:] - logits[..., 0, 1:]).abs() > 1e-6).all()
    assert ((shifted[..., 1:, 0] - logits[..., 1:, 0]).abs() > 1e-6).all()
    assert ((sq - rq)[..., 1:, :].norm(dim=-1) > 1e-3).all()


def _attention(kernel, position, dim=16, heads=2):
    torch.manual_seed(7)
    return Attention(dim, heads, kernel, position).double()


def _randomise_positions(module):
    with torch.no_grad():
        for name, p in module.position.named_parameters():
            p.add_(torch.randn_like(p) * (0.5 if name in ("table", "amplitudes") else 0.1))


POSITIONS = {
    "rpe": lambda: KernelizedRPE(2, (3, 4)),
    "string": lambda: CirculantString(8, 2),
    "rope": lambda: Rope2D(8, 2, "axial"),
    "rope-mixed": lambda: Rope2D(8, 2, "mixed"),
    "frpe": lambda: FourierRPE(2, (3, 4), terms=3),
}

KERNELS = {
    "softmax": SoftmaxKernel,
    "favor": lambda: FavorKernel(8, 16),
    "relu": lambda: ReluKernel(8),
}


@pytest.mark.parametrize("position", ["string", "rope", "rope-mixed"])
def test_softmax_rotation_outputs_are_shift_invariant_exactly_without_prefix_tokens(position):
    """Without prefix tokens (``pool="mean"``) every logit is patch-to-patch, so the whole softmax
    output is invariant to a common shift; with CLS no output row is (each row has a CLS logit);
    and linear kernels are not exactly invariant even without CLS (features of rotated q, k)."""
    module = _attention(SoftmaxKernel(), POSITIONS[position]()).eval()
    _randomise_positions(module)
    for prefix in (0, 1):
        x = torch.randn(2, prefix + 12, 16, dtype=F64)
        out = module(x, TokenGrid(3, 4, prefix))
        shifted = module(x, TokenGrid(3, 4, prefix, origin=(5, -2)))
        if prefix == 0:
            torch.testing.assert_close(out, shifted)
            other = module(x, TokenGrid(4, 3, prefix))  # the check has power
            assert not torch.allclose(out, other)
        else:
            assert ((shifted - out).norm(dim=-1) > 1e-4).all()  # CLS row and every patch row
    for kernel in ("favor", "relu"):
        linear = _attention(KERNELS[kernel](), POSITIONS[position]()).eval()
        x = torch.randn(2, 12, 16, dtype=F64)
        out = linear(x, TokenGrid(3, 4, 0))
        assert not torch.allclose(out, linear(x, TokenGrid(3, 4, 0, origin=(5, -2))))


@pytest.mark.parametrize("position", ["rpe", "string", "rope", "rope-mixed", "frpe"])
def test_favor_converges_to_softmax_with_same_weights(position, device):
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
            out = favor.to(device)(x.to(device), TokenGrid(3, 4, 1)).cpu()
            trial.append(((out - exact).norm() / exact.norm()).item())
        errors.append(sum(trial) / len(trial))
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[0] / errors[2] > 3, errors  # ~sqrt(64) = 8 expected
    assert errors[2] < 0.05, errors


def test_softmax_rpe_bias_is_the_relative_table():
    table = torch.randn(1, 3, 5, dtype=F64)
    dense = dense_relative_matrix(table, 2, 3, 1)[0]
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
    module = Attention(16, 2, KERNELS[kernel](), POSITIONS[position]())
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


GRADCHECK = {
    "string": (SoftmaxKernel, lambda: CirculantString(8, 2)),
    "rope-mixed": (SoftmaxKernel, lambda: Rope2D(8, 2, "mixed")),
    "rpe": (SoftmaxKernel, lambda: KernelizedRPE(2, (2, 3))),
    "rpe-relu-quadratic": (
        lambda: ReluKernel(8, rpe_method="quadratic"),
        lambda: KernelizedRPE(2, (2, 3)),
    ),
    "rpe-relu-fft": (lambda: ReluKernel(8, rpe_method="fft"), lambda: KernelizedRPE(2, (2, 3))),
    "irpe-gate": (SoftmaxKernel, lambda: PositionGate(2, (2, 3), 1)),
    "string-gate": (SoftmaxKernel, lambda: PositionGate(2, (2, 3), 8)),
}


@pytest.mark.parametrize("name", list(GRADCHECK))
def test_position_parameter_gradients_match_finite_differences(name):
    """Autograd's gradient of every learnable position tensor equals finite differences of the
    module's forward: a parameter path dropped or detached on the q or on the k side fails."""
    make_kernel, make_position = GRADCHECK[name]
    module = _attention(make_kernel(), make_position())
    _randomise_positions(module)
    grid = TokenGrid(2, 3, num_prefix=1)
    x = torch.randn(1, grid.num_tokens, 16, dtype=F64)
    names, values = zip(*module.position.named_parameters(), strict=True)
    values = tuple(v.detach().clone().requires_grad_() for v in values)

    def forward(*tensors):
        params = {f"position.{n}": t for n, t in zip(names, tensors, strict=True)}
        return torch.func.functional_call(module, params, (x, grid))

    assert torch.autograd.gradcheck(forward, values)
