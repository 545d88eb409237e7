"""Linear attention re-weighted by a 2D relative-position kernel (Luo et al. 2021), exactly.

``out_i = phi(q_i)^T [sum_j c_ij phi(k_j) v_j^T] / phi(q_i)^T [sum_j c_ij phi(k_j)]`` with
``c_ij = exp(b(r_j - r_i))`` between patch tokens and ``c = 1`` to and from prefix (CLS) tokens.
Two exact algorithms are provided and chosen by size:

- ``quadratic``: ``((phi(Q) phi(K)^T) * C) V`` with row normalisation, O(N^2 (m + d));
- ``fft``: the block-Toeplitz product ``C X`` for ``X_j = phi(k_j) [v_j, 1]^T`` via a 2D FFT over
  the grid zero-padded to at least ``(2H - 1) x (2W - 1)``, O(N log N m d) and never N x N.
  Channels are processed in chunks under activation checkpointing so memory stays bounded.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from rpevit.attention.functional import DENOMINATOR_EPS

#: Patch-token count from which ``method="auto"`` switches from the quadratic form to the FFT.
#: Measured with ``benchmarks/bench_attention.py`` on a 2-core CPU (see README).
FFT_THRESHOLD = 2048

#: Bytes one FFT chunk's complex spectrum may occupy; bounds the FFT path's peak memory.
FFT_CHUNK_BYTES = 256 * 2**20


def relative_index(height: int, width: int, device: torch.device | None = None) -> Tensor:
    """Flat index ``[N, N]`` into a ``(2H-1) x (2W-1)`` table of the offset ``r_j - r_i``."""
    rows = torch.arange(height, device=device).repeat_interleave(width)
    cols = torch.arange(width, device=device).repeat(height)
    d_row = rows[None, :] - rows[:, None] + height - 1
    d_col = cols[None, :] - cols[:, None] + width - 1
    return d_row * (2 * width - 1) + d_col


def dense_relative_matrix(
    table: Tensor, height: int, width: int, num_prefix: int, fill: float
) -> Tensor:
    """Expand a per-head table ``[h, 2H-1, 2W-1]`` to ``[h, P+N, P+N]``; prefix rows/cols = fill."""
    index = relative_index(height, width, table.device)
    dense = table.flatten(1)[:, index]
    return F.pad(dense, (num_prefix, 0, num_prefix, 0), value=fill)


def _rpe_quadratic(qf: Tensor, kf: Tensor, v: Tensor, log_c: Tensor, grid: tuple[int, int, int]):
    weights = dense_relative_matrix(log_c, *grid, fill=0.0).exp().to(qf.dtype)
    scores = (qf @ kf.transpose(-1, -2)) * weights
    denominator = scores.sum(dim=-1, keepdim=True).clamp_min(DENOMINATOR_EPS)
    return (scores @ v.to(qf.dtype)) / denominator


def _fft_kernel(log_c: Tensor, height: int, width: int, size: tuple[int, int]) -> Tensor:
    """rFFT of the convolution kernel ``K[t] = c(-t)`` laid out circularly on ``size``."""
    flipped = log_c.flip(-2, -1).exp()  # flipped[t + H - 1] = c(-t)
    padded = F.pad(flipped, (0, size[1] - (2 * width - 1), 0, size[0] - (2 * height - 1)))
    circular = torch.roll(padded, shifts=(-(height - 1), -(width - 1)), dims=(-2, -1))
    return torch.fft.rfft2(circular)


def _fft_chunk(qf: Tensor, kf: Tensor, v_ext: Tensor, spectrum: Tensor, grid_hw, size) -> Tensor:
    """Contribution of one block of features: ``sum_a qf_a * (C (kf_a v_ext^T))``."""
    height, width = grid_hw
    batch, heads, n, feats = kf.shape
    x = kf.unsqueeze(-1) * v_ext.unsqueeze(-2)  # [B, h, N, mc, d+1]
    x = x.permute(0, 1, 3, 4, 2).reshape(batch, heads, feats, -1, height, width)
    y = torch.fft.irfft2(torch.fft.rfft2(x, s=size) * spectrum[:, None, None], s=size)
    y = y[..., :height, :width].reshape(batch, heads, feats, -1, n)
    return torch.einsum("bhna,bhaen->bhne", qf, y)


def _rpe_fft(qf: Tensor, kf: Tensor, v: Tensor, log_c: Tensor, grid: tuple[int, int, int]):
    height, width, prefix = grid
    batch, heads, _, feats = qf.shape
    v_ext = F.pad(v.to(qf.dtype), (0, 1), value=1.0)
    # Prefix keys have weight 1 for every query; prefix queries see plain linear attention.
    prefix_context = kf[:, :, :prefix].transpose(-1, -2) @ v_ext[:, :, :prefix]
    all_context = prefix_context + kf[:, :, prefix:].transpose(-1, -2) @ v_ext[:, :, prefix:]
    out_prefix = qf[:, :, :prefix] @ all_context
    q_p, k_p, v_p = qf[:, :, prefix:], kf[:, :, prefix:], v_ext[:, :, prefix:]
    out_patch = q_p @ prefix_context

    size = (_fast_size(2 * height - 1), _fast_size(2 * width - 1))
    spectrum = _fft_kernel(log_c.to(qf.dtype), height, width, size)
    bytes_per_feature = batch * heads * v_ext.shape[-1] * size[0] * (size[1] // 2 + 1) * 16
    chunk = max(1, min(feats, FFT_CHUNK_BYTES // max(bytes_per_feature, 1)))
    grid_hw = (height, width)
    recompute = chunk < feats and torch.is_grad_enabled()
    for start in range(0, feats, chunk):
        sl = slice(start, start + chunk)
        args = (q_p[..., sl], k_p[..., sl], v_p, spectrum, grid_hw, size)
        if recompute:
            out_patch = out_patch + checkpoint(_fft_chunk, *args, use_reentrant=False)
        else:
            out_patch = out_patch + _fft_chunk(*args)
    out = torch.cat([out_prefix, out_patch], dim=2)
    return out[..., :-1] / out[..., -1:].clamp_min(DENOMINATOR_EPS)


def _fast_size(n: int) -> int:
    """Smallest integer >= n whose prime factors are 2, 3 and 5 (fast FFT lengths)."""
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def rpe_linear_attention(
    q_features: Tensor,
    k_features: Tensor,
    v: Tensor,
    log_weights: Tensor,
    grid: tuple[int, int, int],
    method: str = "auto",
) -> Tensor:
    """Linear attention with multiplicative relative weights ``c = exp(log_weights)``.

    ``q_features``/``k_features``: ``[B, h, P+N, m]`` (non-negative), ``v``: ``[B, h, P+N, d]``,
    ``log_weights``: ``[h, 2H-1, 2W-1]`` indexed by offset ``r_j - r_i``, ``grid = (H, W, P)``.
    ``method``: ``"quadratic"``, ``"fft"`` or ``"auto"`` (quadratic below ``FFT_THRESHOLD``
    patch tokens). Both are exact; sums run in float32 (float64 if given).
    """
    height, width, prefix = grid
    if q_features.shape[-2] != height * width + prefix:
        raise ValueError(
            f"token count {q_features.shape[-2]} does not match grid {height}x{width} "
            f"plus {prefix} prefix tokens"
        )
    if method == "auto":
        method = "quadratic" if height * width < FFT_THRESHOLD else "fft"
    if method not in ("quadratic", "fft"):
        raise ValueError(f"unknown RPE method {method!r}; choose 'auto', 'quadratic' or 'fft'")
    with torch.autocast(device_type=v.device.type, enabled=False):
        impl = _rpe_quadratic if method == "quadratic" else _rpe_fft
        return impl(q_features, k_features, v, log_weights, grid).to(v.dtype)
