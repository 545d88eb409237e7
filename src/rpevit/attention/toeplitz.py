"""Linear attention re-weighted by a 2D relative-position kernel (Luo et al. 2021), exactly.

``out_i = phi(q_i)^T [sum_j c_ij phi(k_j) v_j^T] / phi(q_i)^T [sum_j c_ij phi(k_j)]`` with
``c_ij = exp(b(r_j - r_i))`` between patch tokens and ``c = 1`` to and from prefix (CLS) tokens.
Two exact algorithms are provided and chosen by size:

- ``quadratic``: ``((phi(Q) phi(K)^T) * C) V`` with row normalisation, O(N^2 (m + d)) time,
  computed in blocks of query rows so memory is O(block x N), never a full N x N matrix;
- ``fft``: the block-Toeplitz product ``C X`` for ``X_j = phi(k_j) [v_j, 1]^T`` via FFTs over the
  grid zero-padded to at least ``(2H - 1) x (2W - 1)``, O(N log N m d) time.

Both process their work in chunks; when there is more than one chunk and gradients are needed,
each chunk is recomputed in backward (activation checkpointing), bounding peak memory.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from rpevit.attention.functional import DENOMINATOR_EPS

#: Patch-token count from which ``method="auto"`` switches from the quadratic form to the FFT.
#: Measured with ``rpevit bench layer`` on a 2-core CPU (8 heads, d = 32, m = 64): the FFT path
#: overtakes the blocked quadratic form at about 12k tokens (see README, Benchmarks).
FFT_THRESHOLD = 12288

#: Bytes one chunk's largest intermediate may occupy; bounds both paths' peak memory.
CHUNK_BYTES = 128 * 2**20


def toeplitz_rows(table: Tensor, height: int, width: int, start: int = 0, stop: int | None = None):
    """Rows of the dense ``[h, N, N]`` matrix ``M[i, j] = table[r_j - r_i]`` for the queries in grid
    rows ``[start, stop)``, from a per-head table ``[h, 2H-1, 2W-1]`` indexed by offset.

    Built from overlapping windows (``unfold``) of the flipped table, so forward is one copy and
    backward is a windowed sum, not an N^2-element scatter."""
    stop = height if stop is None else stop
    flipped = table.flip(-2, -1)  # flipped[H-1 + r_i - r_j] = table[r_j - r_i]
    # Slice before unfolding: backward then only materialises this block's windows.
    flipped = flipped[:, start : stop + height - 1]
    windows = flipped.unfold(-2, height, 1).unfold(-2, width, 1)  # [h, stop-start, W, H, W]
    rows = windows.flip(-2, -1)
    return rows.reshape(table.shape[0], (stop - start) * width, height * width)


def dense_relative_matrix(
    table: Tensor, height: int, width: int, num_prefix: int, fill: float
) -> Tensor:
    """Expand a per-head table ``[h, 2H-1, 2W-1]`` to ``[h, P+N, P+N]``; prefix rows/cols = fill."""
    dense = toeplitz_rows(table, height, width)
    return F.pad(dense, (num_prefix, 0, num_prefix, 0), value=fill)


def _chunked(fn: Callable[..., Tensor], chunks: list, *args) -> list[Tensor]:
    """``[fn(chunk, *args) for chunk in chunks]``, recomputed in backward if there are several."""
    if len(chunks) > 1 and torch.is_grad_enabled():
        return [checkpoint(fn, chunk, *args, use_reentrant=False) for chunk in chunks]
    return [fn(chunk, *args) for chunk in chunks]


def _quadratic_rows(rows: tuple[int, int], qf, kf, v_ext, weights, height, width) -> Tensor:
    """Queries in grid rows ``rows`` of ``((qf kf^T) * C) v_ext`` for patch tokens."""
    block = toeplitz_rows(weights, height, width, *rows)  # [h, rows * W, N]
    q_block = qf[:, :, rows[0] * width : rows[1] * width]
    return ((q_block @ kf.transpose(-1, -2)) * block) @ v_ext


def _toeplitz_quadratic(qf, kf, v_ext, log_c, height, width) -> Tensor:
    batch, heads, n, _ = qf.shape
    weights = log_c.exp()  # exp on the small table, then expand
    row_bytes = batch * heads * width * n * qf.element_size()
    block = max(1, min(height, CHUNK_BYTES // max(row_bytes, 1)))
    chunks = [(s, min(s + block, height)) for s in range(0, height, block)]
    parts = _chunked(_quadratic_rows, chunks, qf, kf, v_ext, weights, height, width)
    return torch.cat(parts, dim=2)


def _fft_size(n: int) -> int:
    """Smallest integer >= n whose prime factors are 2, 3 and 5 (fast FFT lengths)."""
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def _fft_kernel(log_c: Tensor, height: int, width: int, size: tuple[int, int]) -> Tensor:
    """2D spectrum ``[h, LH, LW/2+1]`` of the convolution kernel ``K[t] = c(-t)``, laid out
    circularly on ``size``: then ``(C x)_i = sum_j K[i - j] x_j`` is a circular convolution."""
    flipped = log_c.flip(-2, -1).exp()  # flipped[t + H - 1] = c(-t)
    padded = F.pad(flipped, (0, size[1] - (2 * width - 1), 0, size[0] - (2 * height - 1)))
    circular = torch.roll(padded, shifts=(-(height - 1), -(width - 1)), dims=(-2, -1))
    return torch.fft.rfft2(circular)


def _fft_features(features: slice, qf, kf, v_ext, spectrum, height, width, size) -> Tensor:
    """``sum_{a in features} qf_a * (C (kf_a v_ext^T))`` via separable FFTs: the zero rows of the
    padded input and the discarded rows of the output are never transformed."""
    batch, heads, n, _ = kf.shape
    k_block = kf[..., features]
    x = k_block.unsqueeze(-1) * v_ext.unsqueeze(-2)  # [B, h, N, mc, d+1]
    x = x.permute(0, 1, 3, 4, 2).reshape(batch, heads, k_block.shape[-1], -1, height, width)
    x = torch.fft.fft(torch.fft.rfft(x, n=size[1], dim=-1), n=size[0], dim=-2)
    y = torch.fft.ifft(x * spectrum[:, None, None], dim=-2)[..., :height, :]
    y = torch.fft.irfft(y, n=size[1], dim=-1)[..., :width]
    y = y.reshape(batch, heads, k_block.shape[-1], -1, n)
    return torch.einsum("bhna,bhaen->bhne", qf[..., features], y)


def _toeplitz_fft(qf, kf, v_ext, log_c, height, width) -> Tensor:
    batch, heads, _, feats = qf.shape
    size = (_fft_size(2 * height - 1), _fft_size(2 * width - 1))
    spectrum = _fft_kernel(log_c, height, width, size)
    bytes_per_feature = batch * heads * v_ext.shape[-1] * size[0] * (size[1] // 2 + 1) * 8
    block = max(1, min(feats, CHUNK_BYTES // max(bytes_per_feature, 1)))
    chunks = [slice(s, s + block) for s in range(0, feats, block)]
    parts = _chunked(_fft_features, chunks, qf, kf, v_ext, spectrum, height, width, size)
    return torch.stack(parts).sum(0) if len(parts) > 1 else parts[0]


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
    toeplitz = _toeplitz_quadratic if method == "quadratic" else _toeplitz_fft
    with torch.autocast(device_type=v.device.type, enabled=False):
        qf, kf = q_features, k_features
        v_ext = F.pad(v.to(qf.dtype), (0, 1), value=1.0)  # last column gives the denominator
        # Prefix keys have weight 1 for every query; prefix queries see plain linear attention.
        prefix_context = kf[:, :, :prefix].transpose(-1, -2) @ v_ext[:, :, :prefix]
        patch_context = kf[:, :, prefix:].transpose(-1, -2) @ v_ext[:, :, prefix:]
        out_prefix = qf[:, :, :prefix] @ (prefix_context + patch_context)
        q_p, k_p, v_p = qf[:, :, prefix:], kf[:, :, prefix:], v_ext[:, :, prefix:]
        out_patch = q_p @ prefix_context + toeplitz(
            q_p, k_p, v_p, log_weights.to(qf.dtype), height, width
        )
        out = torch.cat([out_prefix, out_patch], dim=2)
        return (out[..., :-1] / out[..., -1:].clamp_min(DENOMINATOR_EPS)).to(v.dtype)
