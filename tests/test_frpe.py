"""The Fourier RPE (``frpe``): its weight function, the exact O(N) low-rank computation against
a dense reference built from the formula, relativity, CLS handling, gradients, FAVOR+
convergence, resolution transfer and the registry (DESIGN.md section 4)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import rpevit
from rpevit.attention import Attention, FavorKernel, ReluKernel, SoftmaxKernel
from rpevit.attention.lowrank import fourier_linear_attention, fourier_weight
from rpevit.positions import FourierRPE, TokenGrid

F64 = torch.float64


def reference_f(offset: tuple[float, float], freq, phase, amp, beta) -> float:
    """``f(D)`` of one head, term by term from the definition."""
    a0 = sum(abs(a) for a in amp.tolist()) + math.log1p(math.exp(float(beta)))
    value = a0
    for (w_row, w_col), s, a in zip(freq.tolist(), phase.tolist(), amp.tolist(), strict=True):
        value += a * math.cos(w_row * offset[0] + w_col * offset[1] + s)
    return value


def reference_weights(grid: TokenGrid, freq, phase, amp, beta) -> torch.Tensor:
    """``[h, P+N, P+N]``: ``f(r_j - r_i)`` between patches, 1 to and from prefix tokens."""
    coords = grid.coords(dtype=F64).tolist()
    p, total = grid.num_prefix, grid.num_tokens
    c = torch.ones(freq.shape[0], total, total, dtype=F64)
    for h in range(freq.shape[0]):
        for i, ri in enumerate(coords):
            for j, rj in enumerate(coords):
                offset = (rj[0] - ri[0], rj[1] - ri[1])
                c[h, p + i, p + j] = reference_f(offset, freq[h], phase[h], amp[h], beta[h])
    return c


def dense_linear_reference(qf, kf, v, c):
    """Row-normalised ``((phi(Q) phi(K)^T) * C) V``."""
    weights = (qf @ kf.transpose(-1, -2)) * c
    return (weights @ v) / weights.sum(-1, keepdim=True)


def random_parameters(heads: int, terms: int, seed: int = 0):
    """Non-trivial parameters: O(1) frequencies, phases and amplitudes of both signs."""
    g = torch.Generator().manual_seed(seed)
    freq = torch.randn(heads, terms, 2, generator=g, dtype=F64)
    phase = torch.rand(heads, terms, generator=g, dtype=F64) * 2 * math.pi
    amp = torch.randn(heads, terms, generator=g, dtype=F64)
    beta = torch.randn(heads, generator=g, dtype=F64)
    return freq, phase, amp, beta


def randomised(position: FourierRPE, seed: int = 0) -> FourierRPE:
    """``position`` with :func:`random_parameters` copied in."""
    heads, terms, _ = position.frequencies.shape
    with torch.no_grad():
        for p, value in zip(
            (position.frequencies, position.phases, position.amplitudes, position.beta),
            random_parameters(heads, terms, seed),
            strict=True,
        ):
            p.copy_(value)
    return position


def test_weight_function_matches_definition_and_stays_above_softplus_beta():
    freq, phase, amp, beta = random_parameters(3, 4)
    amp = amp * 5  # large oscillations: the constant term must still dominate
    offsets = torch.randn(50, 2, dtype=F64) * 10
    f = fourier_weight(offsets, freq, phase, amp, beta)
    expected = torch.tensor(
        [[reference_f(o, freq[h], phase[h], amp[h], beta[h]) for o in offsets.tolist()]
         for h in range(3)], dtype=F64,
    )  # fmt: skip
    torch.testing.assert_close(f, expected)
    assert (f >= F.softplus(beta)[:, None] - 1e-12).all()
    # The bound is tight: where every cosine is -1 (here at D = 0, phases pi, a > 0).
    zero = torch.zeros(1, 2, dtype=F64)
    f0 = fourier_weight(zero, freq, torch.full_like(phase, math.pi), amp.abs(), beta)
    torch.testing.assert_close(f0[:, 0], F.softplus(beta))


@pytest.mark.parametrize("prefix", [0, 1, 2])
def test_low_rank_attention_equals_dense_reference(prefix):
    grid = TokenGrid(3, 5, prefix, origin=(2, -1))  # non-square, shifted coordinates
    heads, m, d = 2, 6, 4
    params = random_parameters(heads, 3, seed=prefix)
    g = torch.Generator().manual_seed(1)
    qf, kf = (torch.rand(2, heads, grid.num_tokens, m, generator=g, dtype=F64) for _ in "qk")
    v = torch.randn(2, heads, grid.num_tokens, d, generator=g, dtype=F64)
    expected = dense_linear_reference(qf, kf, v, reference_weights(grid, *params))
    out = fourier_linear_attention(qf, kf, v, grid.coords(dtype=F64), *params, prefix)
    torch.testing.assert_close(out, expected)
    tiny = fourier_linear_attention(qf * 1e-15, kf * 1e-15, v, grid.coords(dtype=F64), *params,
                                    prefix)  # fmt: skip
    torch.testing.assert_close(tiny, expected)  # the guard is relative: no absolute clamp bites
    position = FourierRPE(heads, (3, 5), terms=3).double()
    for name, value in zip(("frequencies", "phases", "amplitudes", "beta"), params, strict=True):
        getattr(position, name).data.copy_(value)
    weights = position.relative_weights(grid)
    for method in ("auto", "quadratic", "fft"):  # the module's path, and the Toeplitz cross-checks
        torch.testing.assert_close(weights.linear(qf, kf, v, method), expected)
    torch.testing.assert_close(weights.dense_logits(), reference_weights(grid, *params).log())


def _probe_module(kernel, position: FourierRPE, grid: TokenGrid) -> torch.Tensor:
    """The attention matrix ``[h, T, T]`` an :class:`Attention` module applies, read off its
    output: token t's input is one-hot ``e_t`` (per head), ``v = x``, ``q`` and ``k`` the same
    random vector for every token (bias only), output projection the identity."""
    heads, tokens = position.beta.shape[0], grid.num_tokens
    module = Attention(heads * tokens, heads, kernel, position).double().eval()
    with torch.no_grad():
        module.qkv.weight.zero_()
        module.qkv.weight[2 * heads * tokens :].copy_(torch.eye(heads * tokens))
        module.qkv.bias.copy_(torch.randn(3 * heads * tokens) * 0.3)
        module.qkv.bias[2 * heads * tokens :].zero_()
        module.proj.weight.copy_(torch.eye(heads * tokens))
        module.proj.bias.zero_()
    x = torch.eye(tokens, dtype=F64).repeat(1, heads)[None]  # [1, T, heads * T]
    out = module(x, grid)[0]  # out[i, h * T + j] = A_h[i, j]
    return out.reshape(tokens, heads, tokens).transpose(0, 1)


@pytest.mark.parametrize(
    "kernel", [lambda d: SoftmaxKernel(), lambda d: FavorKernel(d, 16), ReluKernel]
)
def test_module_attention_depends_only_on_offsets_with_cls_weight_one(kernel):
    """With equal content (same q, k for every token), the module's attention weights are
    proportional to ``c``: ``A[i, j] / A[i, cls] = f(r_j - r_i)`` between patches, and CLS
    attends to every token equally."""
    torch.manual_seed(0)
    grid = TokenGrid(3, 4, 1, origin=(1, 2))
    position = randomised(FourierRPE(2, (3, 4), terms=3).double())
    attention = _probe_module(kernel(grid.num_tokens), position, grid)
    assert torch.allclose(attention.sum(-1), torch.ones(2, grid.num_tokens, dtype=F64))
    params = [p.detach() for p in (position.frequencies, position.phases, position.amplitudes,
                                   position.beta)]  # fmt: skip
    c = reference_weights(grid, *params)
    torch.testing.assert_close(attention[:, 1:, 1:] / attention[:, 1:, :1], c[:, 1:, 1:])
    torch.testing.assert_close(
        attention[:, 0], torch.full_like(attention[:, 0], 1 / grid.num_tokens)
    )


@pytest.mark.parametrize(
    "kernel", [SoftmaxKernel, lambda: FavorKernel(8, 16), lambda: ReluKernel(8)]
)
def test_translating_the_grid_leaves_outputs_unchanged(kernel):
    torch.manual_seed(3)
    module = Attention(16, 2, kernel(), randomised(FourierRPE(2, (3, 4), terms=3))).double()
    module.eval()
    x = torch.randn(2, 13, 16, dtype=F64)
    out = module(x, TokenGrid(3, 4, 1))
    torch.testing.assert_close(module(x, TokenGrid(3, 4, 1, origin=(7, -3))), out)
    other = module(x, TokenGrid(4, 3, 1))  # power: a different geometry changes the output
    assert not torch.allclose(out, other)


def test_initial_encoding_is_plain_attention():
    """``f = 1`` at initialisation: favor-frpe starts as favor-ape with the same weights."""
    torch.manual_seed(0)
    module = Attention(16, 2, FavorKernel(8, 16), FourierRPE(2, (3, 4))).double().eval()
    x = torch.randn(2, 13, 16, dtype=F64)
    out = module(x, TokenGrid(3, 4, 1))
    q, k, v = module.qkv(x).reshape(2, 13, 3, 2, 8).permute(2, 0, 3, 1, 4)
    plain = module.proj(module.kernel(q, k, v, None, TokenGrid(3, 4, 1)).transpose(1, 2)
                        .reshape(2, 13, 16))  # fmt: skip
    torch.testing.assert_close(out, plain)


@pytest.mark.parametrize("random", [True, False], ids=["random", "initial"])
@pytest.mark.parametrize("kernel", [SoftmaxKernel, lambda: FavorKernel(4, 6)])
def test_gradients_of_every_position_parameter_match_finite_differences(kernel, random):
    """gradcheck through the whole module, as a function of the encoding's parameters (at
    initialisation too, where the denominator guard's bound equals the denominator)."""
    torch.manual_seed(0)
    position = FourierRPE(2, (2, 3), terms=2)
    module = Attention(8, 2, kernel(), randomised(position) if random else position).double()
    module.eval()
    x = torch.randn(1, 7, 8, dtype=F64)
    grid = TokenGrid(2, 3, 1, origin=(1, 0))
    names = ["position.frequencies", "position.phases", "position.amplitudes", "position.beta"]
    values = tuple(dict(module.named_parameters())[n].detach().clone().requires_grad_()
                   for n in names)  # fmt: skip

    def output(*params):
        return torch.func.functional_call(module, dict(zip(names, params, strict=True)), (x, grid))

    assert torch.autograd.gradcheck(output, values)


def test_gradients_reach_all_parameters_in_float32_and_bf16_is_finite():
    module = Attention(16, 2, ReluKernel(8), randomised(FourierRPE(2, (3, 4), terms=3)).float())
    x = torch.randn(2, 13, 16)
    module(x, TokenGrid(3, 4, 1)).square().sum().backward()
    for name, p in module.position.named_parameters():
        assert p.grad is not None and p.grad.abs().min() > 0, name
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(x * 10, TokenGrid(3, 4, 1))
    assert torch.isfinite(out).all()


def test_low_rank_path_never_builds_an_n_by_n_tensor():
    from conftest import LargestTensor

    grid = TokenGrid(32, 32, 1)  # N = 1024: an N x N tensor has 1,048,576 elements per head
    position = randomised(FourierRPE(1, (32, 32), terms=2).float())
    qf, kf = (torch.rand(1, 1, grid.num_tokens, 4) for _ in "qk")
    v = torch.randn(1, 1, grid.num_tokens, 4)
    with LargestTensor() as probe:
        position.relative_weights(grid).linear(qf, kf, v, "auto")
    assert probe.max_numel < grid.num_patches**2 // 8


def test_model_evaluates_at_another_resolution_with_the_same_function():
    model = rpevit.create_model(
        "relu-frpe", image_size=(12, 16), in_chans=1, num_classes=3, patch_size=4, dim=16,
        depth=1, heads=2, mlp_dim=16, frpe_terms=3,
    ).double().eval()  # fmt: skip
    position = randomised(model.blocks[0].attn.position)
    logits = model(torch.randn(2, 1, 20, 24, dtype=F64))  # 5 x 6 patches instead of 3 x 4
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()
    small = position.relative_weights(TokenGrid(3, 4)).offset_table(F64)
    large = position.relative_weights(TokenGrid(5, 6)).offset_table(F64)
    torch.testing.assert_close(large[:, 2:7, 2:9], small)  # offsets of the 3 x 4 grid


def test_registry_builds_frpe_models_and_validates_frpe_terms():
    sizes = dict(image_size=8, in_chans=1, num_classes=2, patch_size=4, dim=8, depth=1,
                 heads=2, mlp_dim=8)  # fmt: skip
    available = rpevit.list_available_models()
    assert {f"{k}-frpe" for k in ("softmax", "favor", "relu", "exp", "learnable")} <= set(available)
    assert "linformer-frpe" not in available
    model = rpevit.create_model("favor-frpe", frpe_terms=3, **sizes)
    assert model.blocks[0].attn.position.frequencies.shape == (2, 3, 2)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="frpe_terms must be (an integer )?>= 1"):
            rpevit.create_model("favor-frpe", frpe_terms=bad, **sizes)
    with pytest.raises(ValueError, match="do not apply"):
        rpevit.create_model("favor-rpe", frpe_terms=2, **sizes)
    with pytest.raises(ValueError, match="unknown model"):
        rpevit.create_model("linformer-frpe", **sizes)


@pytest.mark.parametrize("kernel", ["favor", "relu"])
def test_float32_gradients_match_float64_at_initialisation(kernel):
    """At f = 1 (the initial state, and the last layer's under CLS pooling) the denominator
    bound is tight; float32 rounding must not switch the denominator to the detached bound,
    which would cut its gradient in some rows (the favor-frpe training failure)."""
    import copy

    torch.manual_seed(0)
    make = FavorKernel(8, 32, redraw_interval=0) if kernel == "favor" else ReluKernel(8)
    attn = Attention(16, 2, make, FourierRPE(2, (4, 5), terms=2)).eval()
    x = torch.randn(4, 21, 16)
    grid = TokenGrid(4, 5, 1)
    weight = torch.randn(4, 21, 16)

    def gradients(module, inputs):
        inputs = inputs.clone().requires_grad_(True)
        (module(inputs, grid) * weight.to(inputs.dtype)).sum().backward()
        grads = {n: p.grad.double() for n, p in module.named_parameters() if p.grad is not None}
        return grads, inputs.grad.double()

    g32, x32 = gradients(attn, x)
    g64, x64 = gradients(copy.deepcopy(attn).double(), x.double())
    assert ((x32 - x64).norm() / x64.norm()).item() < 1e-4
    for name in ("qkv.weight", "qkv.bias"):
        assert ((g32[name] - g64[name]).norm() / g64[name].norm()).item() < 1e-4, name
