"""Mathematics of the attention kernels (DESIGN.md section 3)."""

from __future__ import annotations

import math

import pytest
import torch

from rpevit.attention import (
    Attention,
    FavorKernel,
    ReluKernel,
    SoftmaxKernel,
    favor_attention,
    favor_features,
    linear_attention,
    orthogonal_gaussian_projection,
    relu_features,
    schedule_redraws,
    softmax_attention,
)
from rpevit.attention.kernels import active_draw
from rpevit.positions import KernelizedRPE, TokenGrid


def _qkv(b=2, h=2, n=16, d=8, scale=1.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(b, h, n, d, generator=g, dtype=dtype) * scale for _ in range(3)]


def _dense_softmax(q, k, v):
    return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1) @ v


def test_softmax_attention_matches_dense_formula_with_bias():
    q, k, v = _qkv()
    bias = torch.randn(1, 2, 16, 16, dtype=torch.float64)
    expected = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8) + bias, dim=-1) @ v
    torch.testing.assert_close(softmax_attention(q, k, v, bias), expected)


def test_projection_blocks_are_orthogonal_with_chi_norms():
    d, m = 16, 48
    w = orthogonal_gaussian_projection(
        m, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    assert w.shape == (m, d)
    for block in w.split(d):
        directions = block / block.norm(dim=1, keepdim=True)
        torch.testing.assert_close(directions @ directions.T, torch.eye(d, dtype=torch.float64))
    # Row norms follow chi_d: mean sqrt(2) Gamma((d+1)/2) / Gamma(d/2) ~ 3.94 for d = 16.
    norms = orthogonal_gaussian_projection(4096, d, dtype=torch.float64).norm(dim=1)
    chi_mean = math.sqrt(2) * math.exp(math.lgamma((d + 1) / 2) - math.lgamma(d / 2))
    assert abs(norms.mean().item() - chi_mean) < 0.05
    # Different blocks are independent (not all the same rotation).
    assert not torch.allclose(w[:d], w[d : 2 * d])


def test_favor_features_positive_and_finite_even_for_large_norms():
    q, k, _ = _qkv(scale=30.0, dtype=torch.float32)
    w = orthogonal_gaussian_projection(64, 8)
    for x, is_query in ((q, True), (k, False)):
        f = favor_features(x, w, is_query=is_query)
        assert torch.isfinite(f).all() and (f >= 0).all()
        assert (f.amax(dim=-1) > 0).all() if is_query else (f.amax() > 0)
    out = favor_attention(q, k, q, w)
    assert torch.isfinite(out).all()


def test_favor_kernel_estimate_is_unbiased():
    d = 8
    g = torch.Generator().manual_seed(3)
    q = torch.randn(d, generator=g, dtype=torch.float64) * 0.6
    k = torch.randn(d, generator=g, dtype=torch.float64) * 0.6
    exact = math.exp(float(q @ k) / math.sqrt(d))
    estimates = []
    for i in range(400):
        w = orthogonal_gaussian_projection(
            d, d, generator=torch.Generator().manual_seed(100 + i), dtype=torch.float64
        )
        phi_q = favor_features(q[None], w, is_query=True, stabilise=False)
        phi_k = favor_features(k[None], w, is_query=False, stabilise=False)
        estimates.append(float((phi_q * phi_k).sum()))
    estimates = torch.tensor(estimates)
    stderr = estimates.std() / math.sqrt(len(estimates))
    assert abs(estimates.mean() - exact) < 4 * stderr + 1e-3
    assert stderr < 0.05 * exact  # the check has power: the standard error is small


def test_stabiliser_cancels_in_attention():
    q, k, v = _qkv(scale=0.7)
    w = orthogonal_gaussian_projection(32, 8, dtype=torch.float64)
    raw = linear_attention(
        favor_features(q, w, is_query=True, stabilise=False),
        favor_features(k, w, is_query=False, stabilise=False),
        v,
    )
    torch.testing.assert_close(favor_attention(q, k, v, w), raw)


def test_favor_error_shrinks_with_nb_features():
    q, k, v = _qkv(b=1, h=4, n=64, d=16, scale=0.5)
    exact = _dense_softmax(q, k, v)
    errors = []
    for m in (16, 64, 256, 1024):
        trial = []
        for seed in range(4):
            w = orthogonal_gaussian_projection(
                m, 16, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
            )
            out = favor_attention(q, k, v, w)
            trial.append(((out - exact).norm() / exact.norm()).item())
        errors.append(sum(trial) / len(trial))
    assert all(a > b for a, b in zip(errors, errors[1:], strict=False)), errors
    # Monte-Carlo rate: 64x more features should cut the error by roughly 8x (allow 4x).
    assert errors[0] / errors[-1] > 4, errors
    assert errors[-1] < 0.1


def test_linear_attention_equals_dense_normalised_form():
    q, k, v = _qkv()
    qf, kf = relu_features(q), relu_features(k)
    scores = qf @ kf.transpose(-1, -2)
    expected = scores @ v / scores.sum(-1, keepdim=True)
    torch.testing.assert_close(linear_attention(qf, kf, v), expected)


def test_relu_features_identity_and_learned_projection():
    x = torch.tensor([[1.0, -2.0, 0.5, 0.0]], dtype=torch.float64)
    scale = 4**-0.25
    torch.testing.assert_close(relu_features(x), torch.relu(x * scale) + 1e-3)
    p = torch.randn(6, 4, dtype=torch.float64)
    torch.testing.assert_close(relu_features(x, p), torch.relu(x * scale @ p.T) + 1e-3)


def test_redraw_only_in_training_at_interval_and_eval_is_deterministic():
    kernel = FavorKernel(head_dim=8, nb_features=16, redraw_interval=3)
    grid = TokenGrid(2, 2, num_prefix=0)
    q, k, v = _qkv(b=1, h=1, n=4, d=8, dtype=torch.float32)
    seen = [kernel.projection.clone()]
    for _ in range(7):
        kernel(q, k, v, None, grid)
        seen.append(kernel.projection.clone())
    changed = [not torch.equal(a, b) for a, b in zip(seen, seen[1:], strict=False)]
    # Redraws happen at the start of forward passes 3 and 6 (0-based): steps 3 and 6.
    assert changed == [False, False, False, True, False, False, True]
    assert int(kernel.steps) == 7
    kernel.eval()
    before = kernel.projection.clone()
    outs = [kernel(q, k, v, None, grid) for _ in range(5)]
    assert torch.equal(kernel.projection, before) and int(kernel.steps) == 7
    assert all(torch.equal(outs[0], o) for o in outs)


def test_redraws_are_reproducible_from_state():
    a = FavorKernel(head_dim=8, nb_features=16, redraw_interval=2)
    b = FavorKernel(head_dim=8, nb_features=16, redraw_interval=2)
    b.load_state_dict(a.state_dict())
    grid = TokenGrid(2, 2, num_prefix=0)
    q, k, v = _qkv(b=1, h=1, n=4, d=8, dtype=torch.float32)
    for _ in range(5):
        a(q, k, v, None, grid)
        b(q, k, v, None, grid)
    assert torch.equal(a.projection, b.projection)


def test_redraw_interval_zero_never_redraws():
    kernel = FavorKernel(head_dim=8, nb_features=16, redraw_interval=0)
    before = kernel.projection.clone()
    q, k, v = _qkv(b=1, h=1, n=4, d=8, dtype=torch.float32)
    for _ in range(5):
        kernel(q, k, v, None, TokenGrid(2, 2, num_prefix=0))
    assert torch.equal(before, kernel.projection)


@pytest.mark.parametrize(
    "interval, until, expected",
    [
        (3, None, [0, 0, 0, 1, 1, 1, 2, 2, 2, 3]),
        (3, 7, [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]),  # pass 6 < 7 still redraws, 9 does not
        (3, 6, [0, 0, 0, 1, 1, 1, 1, 1, 1, 1]),  # until is the first pass without a redraw
        (1, 4, [0, 1, 2, 3, 3, 3, 3, 3, 3, 3]),
        (2, 0, [0] * 10),
        (0, None, [0] * 10),
    ],
)
def test_active_draw_per_training_pass(interval, until, expected):
    assert [active_draw(step, interval, until) for step in range(10)] == expected


def test_no_redraw_in_the_final_phase_of_the_schedule():
    kernel = FavorKernel(head_dim=8, nb_features=16, redraw_interval=2, redraw_stop=0.5)
    kernel.schedule_redraws(total_steps=11)  # no redraw from pass floor(5.5) = 5 on
    assert kernel.redraw_until == 5
    grid = TokenGrid(2, 2, num_prefix=0)
    q, k, v = _qkv(b=1, h=1, n=4, d=8, dtype=torch.float32)
    seen = [kernel.projection.clone()]
    for _ in range(11):
        kernel(q, k, v, None, grid)
        seen.append(kernel.projection.clone())
    changed = [not torch.equal(a, b) for a, b in zip(seen, seen[1:], strict=False)]
    assert changed == [False, False, True, False, True] + [False] * 6  # passes 2 and 4 only
    assert torch.equal(kernel.projection, kernel._draw(2))


def test_schedule_redraws_reaches_every_favor_kernel_of_a_model():
    from rpevit import create_model

    model = create_model(
        "favor-ape", image_size=8, in_chans=1, num_classes=2, patch_size=4, dim=16, depth=2,
        heads=2, mlp_dim=16, redraw_stop=0.25,
    )  # fmt: skip
    schedule_redraws(model, 100)
    kernels = [m for m in model.modules() if isinstance(m, FavorKernel)]
    assert len(kernels) == 2 and all(k.redraw_until == 25 for k in kernels)


@pytest.mark.parametrize(
    "bad",
    [dict(nb_features=0), dict(redraw_interval=-1), dict(redraw_stop=-0.1), dict(redraw_stop=1.5)],
)
def test_favor_kernel_rejects_bad_hyperparameters(bad):
    with pytest.raises(ValueError, match="must be"):
        FavorKernel(head_dim=8, **bad)


@pytest.mark.parametrize("is_query", [True, False])
def test_favor_features_in_place_match_the_textbook_formula_and_gradients(is_query):
    """The in-place computation equals ``m^-1/2 exp(W x' - |x'|^2/2 - s)`` and its gradient."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 7, 8, dtype=torch.float64, requires_grad=True)
    w = orthogonal_gaussian_projection(12, 8).double()
    xs = x * 8**-0.25
    exponent = xs @ w.T - 0.5 * (xs * xs).sum(-1, keepdim=True)
    dims = (-1,) if is_query else (-2, -1)
    reference = torch.exp(exponent - exponent.detach().amax(dim=dims, keepdim=True)) / 12**0.5
    features = favor_features(x, w, is_query=is_query)
    torch.testing.assert_close(features, reference, rtol=1e-12, atol=0)
    weights = torch.randn_like(reference)
    (grad,) = torch.autograd.grad((features * weights).sum(), x)
    (expected,) = torch.autograd.grad((reference * weights).sum(), x)
    torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(
        lambda t: favor_features(t, w, is_query=is_query, stabilise=False), (x[:1, :1, :3],)
    )


def _probe(make_kernel, position, grid, heads=2, content=True):
    """The attention matrices ``[heads, n, n]`` an ``Attention`` module applies, read off its
    output: token t's value is e_t in every head and the output projection is the identity, so
    output row t of head h is row t of that head's attention matrix. ``content=False`` zeroes q
    and k, leaving only the position encoding's weights."""
    n = grid.num_tokens
    dim = heads * n
    torch.manual_seed(0)
    module = Attention(dim, heads, make_kernel(n), position).double().eval()
    with torch.no_grad():
        for p in module.position.parameters():
            p.add_(torch.randn_like(p) * 0.5)  # a generic, non-zero table
        module.qkv.weight[2 * dim :] = torch.eye(dim)
        module.qkv.bias[2 * dim :] = 0
        if not content:
            module.qkv.weight[: 2 * dim] = 0
            module.qkv.bias[: 2 * dim] = 0
        module.proj.weight.copy_(torch.eye(dim))
        module.proj.bias.zero_()
    x = torch.eye(n, dtype=torch.float64).repeat(1, heads)[None]
    return module, module(x, grid)[0].reshape(n, heads, n).transpose(0, 1)


PROBED_KERNELS = {
    "softmax": lambda d: SoftmaxKernel(),
    "favor-quadratic": lambda d: FavorKernel(d, 24, rpe_method="quadratic"),
    "favor-fft": lambda d: FavorKernel(d, 24, rpe_method="fft"),
    "relu-quadratic": lambda d: ReluKernel(d, rpe_method="quadratic"),
    "relu-fft": lambda d: ReluKernel(d, rpe_method="fft"),
}


def _offset(i, j, width):
    """``r_j - r_i`` of patch tokens ``i``, ``j`` (row-major)."""
    return j // width - i // width, j % width - i % width


@pytest.mark.parametrize("kernel", list(PROBED_KERNELS))
def test_rpe_weights_the_module_applies_are_a_function_of_the_offset(kernel):
    """With q = k = 0 only the position weights remain: ``A_ij / A_i,CLS = exp(b(r_j - r_i))``
    (the CLS weight is 1). Equal offsets must give equal weights, the table entry of that
    offset, on a non-square grid; RPE never reads coordinates, so this is its relativity."""
    height, width = 3, 4
    grid = TokenGrid(height, width, num_prefix=1)
    module, a = _probe(
        PROBED_KERNELS[kernel], KernelizedRPE(2, (height, width)), grid, content=False
    )
    log_weights = (a / a[:, :, :1]).log()
    torch.testing.assert_close(log_weights[:, 0], torch.zeros_like(log_weights[:, 0]))
    table = module.position.table.detach()
    by_offset = {}
    for i in range(height * width):
        for j in range(height * width):
            by_offset.setdefault(_offset(i, j, width), []).append(log_weights[:, 1 + i, 1 + j])
    assert len(by_offset) == (2 * height - 1) * (2 * width - 1)
    for (dr, dc), values in by_offset.items():
        expected = table[:, dr + height - 1, dc + width - 1]
        for value in values:
            torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("prefix", [0, 1])
@pytest.mark.parametrize("kernel", list(PROBED_KERNELS))
def test_rpe_attention_matrix_of_the_module_equals_a_dense_reference(kernel, prefix):
    """The full attention matrix (content and position) against one written out here:
    softmax ``softmax(q k^T / sqrt(d) + B)``, linear ``(phi(q) phi(k)^T * exp(B)) / rowsum``,
    ``B_ij = b(r_j - r_i)`` between patches and 0 to and from CLS."""
    height, width = 3, 4
    grid = TokenGrid(height, width, num_prefix=prefix)
    module, a = _probe(PROBED_KERNELS[kernel], KernelizedRPE(2, (height, width)), grid)
    n, heads, d = grid.num_tokens, module.heads, module.head_dim
    weight, bias = module.qkv.weight.detach(), module.qkv.bias.detach()
    x = torch.eye(n, dtype=torch.float64).repeat(1, heads)
    q, k = (
        (
            x @ weight[s * heads * d : (s + 1) * heads * d].T
            + bias[s * heads * d : (s + 1) * heads * d]
        )
        .reshape(n, heads, d)
        .transpose(0, 1)
        for s in (0, 1)
    )
    table = module.position.table.detach()
    logits = torch.zeros(heads, n, n, dtype=torch.float64)
    for i in range(height * width):
        for j in range(height * width):
            dr, dc = _offset(i, j, width)
            logits[:, prefix + i, prefix + j] = table[:, dr + height - 1, dc + width - 1]
    if kernel == "softmax":
        expected = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d) + logits, dim=-1)
    else:
        if kernel.startswith("favor"):
            w = module.kernel.projection.double()
            m = w.shape[0]

            def phi(t):
                t = t * d**-0.25
                return torch.exp(t @ w.T - (t * t).sum(-1, keepdim=True) / 2) / math.sqrt(m)
        else:

            def phi(t):
                return torch.relu(t * d**-0.25) + 1e-3

        scores = (phi(q) @ phi(k).transpose(-1, -2)) * logits.exp()
        expected = scores / scores.sum(-1, keepdim=True)
    torch.testing.assert_close(a, expected, rtol=1e-9, atol=1e-12)
