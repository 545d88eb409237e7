"""Pure attention functions on plain tensors ``[batch, heads, tokens, head_dim]``.

These are the mathematics of DESIGN.md section 3, free of parameters and buffers, so tests,
benchmarks and users with their own layers can call them directly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

#: Lower bound on linear-attention denominators; they are sums of non-negative terms.
DENOMINATOR_EPS = 1e-12


def softmax_attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None = None) -> Tensor:
    """Exact ``softmax(q k^T / sqrt(d) + bias) v`` through PyTorch's fused SDPA kernels."""
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


def favor_features(
    x: Tensor, projection: Tensor, *, is_query: bool, stabilise: bool = True
) -> Tensor:
    """Positive random features ``phi(x) = m^-1/2 exp(W x' - |x'|^2/2 - s)``, ``x' = x d^-1/4``.

    ``s`` is a detached max of the exponent (per token for queries, per (batch, head) for keys);
    it cancels in the attention ratio and keeps ``exp`` in range (``stabilise=False`` gives the
    raw unbiased features, for tests). Computed in float32 (float64 if given) under autocast.
    Few passes over the ``[..., N, m]`` exponent: ``d^-1/4`` is folded into the small
    projection, ``m^-1/2`` into the exponent, and the subtractions and ``exp`` run in place
    (autograd-safe: matmul and subtraction do not save their outputs, ``exp`` saves its own).
    """
    compute_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = x.to(compute_dtype)
        scale = x.shape[-1] ** -0.25
        w = projection.to(device=x.device, dtype=compute_dtype) * scale
        exponent = x @ w.T
        exponent.sub_((x * x).sum(dim=-1, keepdim=True), alpha=0.5 * scale * scale)
        shift = 0.5 * math.log(w.shape[0])
        if stabilise:
            dims = (-1,) if is_query else (-2, -1)
            shift = exponent.detach().amax(dim=dims, keepdim=True) + shift
        return exponent.sub_(shift).exp_()


def relu_features(x: Tensor, projection: Tensor | None = None, eps: float = 1e-3) -> Tensor:
    """Deterministic Performer-ReLU features ``ReLU(P x') + eps`` (``P`` = identity if None)."""
    compute_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = x.to(compute_dtype) * x.shape[-1] ** -0.25
        if projection is not None:
            x = x @ projection.to(compute_dtype).T
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
    its additive feature epsilon, which biases the estimate.
    """
    return linear_attention(
        favor_features(q, projection, is_query=True),
        favor_features(k, projection, is_query=False),
        v,
    )
