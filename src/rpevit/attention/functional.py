"""Pure attention functions on plain tensors ``[batch, heads, tokens, head_dim]``.

These are the mathematics of DESIGN.md section 3, free of parameters and buffers, so tests,
benchmarks and users with their own layers can call them directly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

#: Guard against ``0 / 0`` only (the smallest normal float32). The library's feature maps keep
#: every denominator >= 1 (FAVOR+, EXP, learnable: jointly stabilised, see
#: :func:`exp_feature_pair`) or >= N m eps^2 (ReLU), so it never binds for them; an all-zero
#: row of user features gives 0 instead of NaN. (It was 1e-12, which zeroed underflowed rows.)
DENOMINATOR_EPS = torch.finfo(torch.float32).tiny


#: Low-precision dtypes whose SDPA runs in float32 on the CPU: PyTorch's CPU flash attention
#: is 7x slower in bfloat16 than in float32 for the study's shapes, forward + backward
#: (``[128, 4, 65, 16]``: 109 ms vs 15 ms, plus 5 ms of casts; the math backend: 36 ms),
#: measured on the project's Zen 4 CPU with torch 2.14. On GPUs the fused kernels run in the
#: input dtype.
CPU_FLOAT32_SDPA = (torch.bfloat16, torch.float16)


def softmax_attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None = None) -> Tensor:
    """Exact ``softmax(q k^T / sqrt(d) + bias) v`` through PyTorch's fused SDPA kernels, in
    the dtype of ``q`` (float32 for low-precision inputs on the CPU, see
    :data:`CPU_FLOAT32_SDPA`; the output keeps the dtype of ``q``)."""
    dtype, device = q.dtype, q.device.type
    if device == "cpu" and (dtype in CPU_FLOAT32_SDPA or torch.is_autocast_enabled(device)):
        with torch.autocast(device_type=device, enabled=False):  # autocast would cast back
            q, k, v = q.float(), k.float(), v.float()
            bias = None if bias is None else bias.float()
            return F.scaled_dot_product_attention(q, k, v, attn_mask=bias).to(dtype)
    if bias is not None:
        bias = bias.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


def orthogonal_gaussian_projection(
    nb_features: int,
    dim: int,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """FAVOR+ projection ``[nb_features, dim]``: stacked Haar-orthogonal blocks of ``dim`` rows,
    each row rescaled to a chi_dim-distributed norm (so rows are marginally Gaussian)."""
    if nb_features < 1 or dim < 1:
        raise ValueError(f"nb_features and dim must be positive, got {nb_features} and {dim}")
    blocks = []
    for _ in range(math.ceil(nb_features / dim)):
        gaussian = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
        q, r = torch.linalg.qr(gaussian)
        # Sign correction makes Q Haar-distributed rather than biased by the QR convention.
        q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)
        blocks.append(q.T)
    rows = torch.cat(blocks, dim=0)[:nb_features]
    norms = torch.randn(nb_features, dim, generator=generator, dtype=torch.float64).norm(dim=1)
    return (rows * norms.unsqueeze(1)).to(dtype)


def compute_dtype(x: Tensor) -> torch.dtype:
    """Position and feature maps run in float32, or float64 if given (never in a low-precision
    dtype)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _favor_exponent(x: Tensor, projection: Tensor, norm: bool = True) -> Tensor:
    """Log of the raw FAVOR+ features up to ``-ln(m)/2``: ``W x' - |x'|^2/2``, ``x' = x d^-1/4``
    (without the norm term if ``norm`` is False).

    Few passes over the ``[..., N, m]`` result: ``d^-1/4`` is folded into the small projection
    and the norm is subtracted in place (matmul does not save its output for backward).
    """
    x = x.to(compute_dtype(x))
    scale = x.shape[-1] ** -0.25
    w = projection.to(device=x.device, dtype=x.dtype) * scale
    exponent = x @ w.T
    if not norm:
        return exponent
    return exponent.sub_((x * x).sum(dim=-1, keepdim=True), alpha=0.5 * scale * scale)


def exp_feature_pair(q_exponent: Tensor, k_exponent: Tensor) -> tuple[Tensor, Tensor]:
    """Jointly stabilised features ``exp(e^q_ia + M_a - s_i)``, ``exp(e^k_ja - M_a)`` from
    log-features ``[..., N, m]`` (overwritten: computed in place).

    ``M_a = max_j e^k_ja`` (per feature) and ``s_i = max_a (e^q_ia + M_a)`` are detached; ``M``
    cancels in each product ``phi(q_i)_a phi(k_j)_a`` and ``s_i`` in the attention ratio, so the
    estimator is unchanged. All features are <= 1 and every query has a feature and a key whose
    product is exactly 1, so denominators are >= 1 and a term that underflows weighs < 1e-38 of
    its row. (One key max over all tokens and features instead lets most keys underflow at large
    norms and zeroes whole rows.)
    """
    key_max = k_exponent.detach().amax(dim=-2, keepdim=True)
    k_features = k_exponent.sub_(key_max).exp_()
    q_exponent = q_exponent.add_(key_max)
    q_features = q_exponent.sub_(q_exponent.detach().amax(dim=-1, keepdim=True)).exp_()
    return q_features, k_features


def favor_feature_pair(q: Tensor, k: Tensor, projection: Tensor) -> tuple[Tensor, Tensor]:
    """FAVOR+ features ``(phi(q), phi(k))`` for attention, jointly stabilised
    (:func:`exp_feature_pair`, which also absorbs the constant ``m^-1/2``), in float32
    (float64 if given) whatever the autocast state.

    A query's norm term ``-|q'|^2/2`` is the same for all its features, so the query's
    stabiliser removes it exactly: it is not computed (12-16% less time forward + backward).
    """
    with torch.autocast(device_type=q.device.type, enabled=False):
        q_exponent = _favor_exponent(q, projection, norm=False)
        return exp_feature_pair(q_exponent, _favor_exponent(k, projection))


def favor_features(
    x: Tensor, projection: Tensor, *, is_query: bool, stabilise: bool = True
) -> Tensor:
    """Positive random features ``phi(x) = m^-1/2 exp(W x' - |x'|^2/2 - s)``, ``x' = x d^-1/4``,
    of one side alone; attention uses :func:`favor_feature_pair`, which cannot underflow.

    ``s`` is a detached max of the exponent (per token for queries, over tokens and features of
    each (batch, head) for keys): it cancels in the attention ratio, but at large norms most
    keys' features underflow. ``stabilise=False`` gives the raw unbiased features.
    """
    with torch.autocast(device_type=x.device.type, enabled=False):
        exponent = _favor_exponent(x, projection)
        shift = 0.5 * math.log(projection.shape[0])
        if stabilise:
            dims = (-1,) if is_query else (-2, -1)
            shift = exponent.detach().amax(dim=dims, keepdim=True) + shift
        return exponent.sub_(shift).exp_()


def relu_features(x: Tensor, projection: Tensor | None = None, eps: float = 1e-3) -> Tensor:
    """Deterministic Performer-ReLU features ``ReLU(P x') + eps`` (``P`` = identity if None)."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = x.to(compute_dtype(x)) * x.shape[-1] ** -0.25
        if projection is not None:
            x = x @ projection.to(x.dtype).T
        return F.relu(x) + eps


def linear_attention(q_features: Tensor, k_features: Tensor, v: Tensor) -> Tensor:
    """``out_i = phi(q_i)^T S / phi(q_i)^T z``, ``S = sum_j phi(k_j) v_j^T``, ``z = sum phi(k_j)``.

    O(N m d) time and O(m d) extra memory: the N x N attention matrix is never formed.
    Returns the dtype of ``v``; the sums run in the features' dtype (float32 under autocast).
    """
    with torch.autocast(device_type=v.device.type, enabled=False):
        v_ext = F.pad(v.to(k_features.dtype), (0, 1), value=1.0)  # last column sums z
        context = k_features.transpose(-1, -2) @ v_ext  # [B, h, m, d + 1]
        out = q_features @ context  # [B, h, N, d + 1]
        numerator, denominator = out[..., :-1], out[..., -1:]
        return (numerator / denominator.clamp_min(DENOMINATOR_EPS)).to(v.dtype)


def favor_attention(q: Tensor, k: Tensor, v: Tensor, projection: Tensor) -> Tensor:
    """FAVOR+ estimate of ``softmax(q k^T / sqrt(d)) v`` with the given ``[m, d]`` projection.

    Same estimator and scaling as ``performer-pytorch``'s ``FastAttention`` (non-causal), minus
    its additive feature epsilon, which biases the estimate, and with the joint stabiliser of
    :func:`exp_feature_pair`, so rows do not collapse at large q/k norms.
    """
    return linear_attention(*favor_feature_pair(q, k, projection), v)
