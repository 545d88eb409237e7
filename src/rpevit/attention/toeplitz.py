"""Linear attention re-weighted by a 2D relative-position kernel (Luo et al. 2021), exactly.

``out_i = phi(q_i)^T [sum_j c_ij phi(k_j) v_j^T] / phi(q_i)^T [sum_j c_ij phi(k_j)]`` with
``c_ij = exp(b(r_j - r_i))`` between patch tokens and ``c = 1`` to and from prefix (CLS) tokens.
Two exact algorithms are provided and chosen by size:

- ``quadratic``: ``((phi(Q) phi(K)^T) * C) V`` with row normalisation, O(N^2 (m + d)) time,
  computed in blocks of query rows so memory is O(block x N), never a full N x N matrix;
- ``fft``: the block-Toeplitz product ``C X`` for the ``m (d + 1)`` channels
  ``X_j = phi(k_j) [v_j, 1]^T`` by real FFTs over the grid zero-padded to fast sizes
  ``>= (2H - 1) x (2W - 1)``, O(N log N m d) time, O(N (m + d)) memory. A custom autograd
  function (in ``toeplitz_fft.py``) runs forward and backward channel chunk by chunk
  (backward: the correlation with the conjugate spectrum, and the table gradient from the same
  transforms).

Numerics. Both paths divide every row by ``exp(s_i)``, ``s_i`` the largest log-weight row ``i``
can reach (a sliding-window max of the table; at least 0 with prefix tokens, whose weight is
1), which cancels between numerator and denominator: no weight exceeds 1 and every row keeps a
weight of exactly 1, so any table gives finite output, and the quadratic form (sums of positive
terms) is exact to rounding, like softmax. An FFT has a *global* absolute error ~ eps * |c| *
|x| in every output, so a row whose weights lie far below the table's largest loses relative
accuracy (float32, one transform: 3e-2 relative error for the table ``8 tanh(dr)``, 8 for
``16 tanh(dr)``). So the ``fft`` path (i) transforms float32 inputs in float32 only while
``G = max_i (max_j s_j - s_i) <= FFT_FLAT`` (nearly flat tables, e.g. the zero init) and in
float64 otherwise, and (ii) groups rows into bands of ``s_i`` of width ``FFT_BAND``, each with
its own transform of the table clipped to the offsets its rows can reach (exact: the removed
entries are out of their reach), so no row lies more than ``exp(FFT_BAND)`` below its band's
largest weight. Guarantee (measured, tests/test_toeplitz.py): float32 results within a few
float32 roundings of exact (relative error per row <= 2e-6; 3e-7 for ``a tanh(dr)``,
a = 8, 12, 16), float64 results within 1e-9 relative error.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.utils.checkpoint import checkpoint

from rpevit.attention.functional import DENOMINATOR_EPS
from rpevit.attention.toeplitz_fft import ToeplitzFFT, fft_size

#: Patch-token count from which ``method="auto"`` switches from the quadratic form to the FFT
#: when the FFT can transform in float32 (a nearly flat table, see ``FFT_FLAT``). Measured
#: (one layer, 8 heads, d = 32, m = 64, B = 1, fwd+bwd, one thread, 2-core CPU): quadratic /
#: FFT time 0.51 at N = 1024, 0.58 at 1600, 1.14 at 2304, 1.84 at 4096; crossing near 2,150.
FFT_THRESHOLD = 2048

#: The same with float64 transforms (other tables), 2.2-3x slower than float32 ones:
#: quadratic / FFT time 0.55 at N = 2304, 0.84 at 4096, 0.78 at 5184, 1.09 at 6400, 2.6 at
#: 16384 (150 s vs 395 s); crossing near 6,000.
FFT64_THRESHOLD = 6144

#: Bytes one quadratic-form block of query rows may occupy; bounds its peak memory.
CHUNK_BYTES = 128 * 2**20

#: Bytes of one FFT channel chunk's spectrum: small enough to stay in a core's cache.
FFT_CHUNK_BYTES = 2**20

#: The FFT path keeps its ``[B, h, m, d + 1, N]`` forward output for backward when it is at most
#: this large, and recomputes it from the input transforms otherwise.
FFT_SAVE_BYTES = 512 * 2**20

#: The FFT path transforms float32 inputs in float32 only if every row's largest reachable
#: log-weight is within this of the table's maximum (measured error <= 2e-6), else in float64.
FFT_FLAT = 1.0

#: Width (in log-weight) of the FFT path's row bands: see the module docstring.
FFT_BAND = 8.0


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


class _DenseBias(torch.autograd.Function):
    """``[h, 2H-1, 2W-1] -> [h, P+N, P+N]`` in one pass into the target tensor; backward sums
    each query row's window of the gradient back into the table."""

    @staticmethod
    def forward(ctx, table: Tensor, height: int, width: int, prefix: int, dtype) -> Tensor:
        heads, n = table.shape[0], height * width
        out = table.new_empty(heads, prefix + n, prefix + n, dtype=dtype)
        out[:, :prefix].zero_()
        out[:, prefix:, :prefix].zero_()
        # Query (r, c) reads the table window starting at (H-1-r, W-1-c).
        windows = table.to(dtype).unfold(1, height, 1).unfold(2, width, 1)  # [h, H, W, H, W]
        for r in range(height):
            rows = out[:, prefix + r * width : prefix + (r + 1) * width, prefix:]
            rows.unflatten(-1, (height, width)).copy_(windows[:, height - 1 - r].flip(1))
        ctx.shape = (height, width, prefix, table.dtype)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        height, width, prefix, dtype = ctx.shape
        heads = grad.shape[0]
        patch = grad[:, prefix:, prefix:].unflatten(1, (height, width))
        patch = patch.unflatten(3, (height, width))  # [h, H, W, H, W]
        out = grad.new_zeros(heads, 2 * height - 1, 2 * width - 1)
        for r in range(height):
            windows = patch[:, r].flip(1).permute(0, 2, 1, 3)  # [h, H, W (start col), W]
            out[:, height - 1 - r : 2 * height - 1 - r] += torch.ops.aten.unfold_backward(
                windows, [heads, height, 2 * width - 1], 2, width, 1
            )
        return out.to(dtype), None, None, None, None


def dense_relative_matrix(
    table: Tensor, height: int, width: int, num_prefix: int, dtype: torch.dtype | None = None
) -> Tensor:
    """Expand a per-head table ``[h, 2H-1, 2W-1]`` to ``[h, P+N, P+N]`` (prefix rows and columns
    0) in ``dtype`` (default: the table's), built once, directly in the target tensor."""
    return _DenseBias.apply(table, height, width, num_prefix, dtype or table.dtype)


def row_stabiliser(log_c: Tensor, height: int, width: int, num_prefix: int) -> Tensor:
    """``s_i`` ``[h, N]``: the largest log-weight patch query ``i`` can reach (the max of the
    table window of offsets ``r_j - r_i``), at least 0 if prefix tokens (weight 1) exist."""
    windows = log_c.unfold(-1, width, 1).amax(-1).unfold(-2, height, 1).amax(-1)  # [h, H, W]
    shift = windows.flip(-2, -1).reshape(log_c.shape[0], height * width)
    return shift.clamp_min(0.0) if num_prefix else shift


def _chunked(fn: Callable[..., Tensor], chunks: list, *args) -> list[Tensor]:
    """``[fn(chunk, *args) for chunk in chunks]``, recomputed in backward if there are several."""
    if len(chunks) > 1 and torch.is_grad_enabled():
        return [checkpoint(fn, chunk, *args, use_reentrant=False) for chunk in chunks]
    return [fn(chunk, *args) for chunk in chunks]


def _quadratic_rows(rows: tuple[int, int], qf, kf, v_ext, log_c, shift, height, width) -> Tensor:
    """Queries in grid rows ``rows`` of ``((qf kf^T) * C) v_ext``, row ``i`` scaled by
    ``exp(-s_i)``."""
    span = slice(rows[0] * width, rows[1] * width)
    block = toeplitz_rows(log_c, height, width, *rows)  # [h, rows * W, N]
    block = block.sub_(shift[:, span, None]).exp_()
    return ((qf[:, :, span] @ kf.transpose(-1, -2)) * block) @ v_ext


def _toeplitz_quadratic(qf, kf, v_ext, log_c, shift, height, width) -> tuple[Tensor, Tensor]:
    """Patch rows of ``(C * (qf kf^T)) v_ext`` scaled by ``exp(-shift)``, and that log-scale."""
    batch, heads, n, _ = qf.shape
    row_bytes = batch * heads * width * n * qf.element_size()
    block = max(1, min(height, CHUNK_BYTES // max(row_bytes, 1)))
    chunks = [(s, min(s + block, height)) for s in range(0, height, block)]
    parts = _chunked(_quadratic_rows, chunks, qf, kf, v_ext, log_c, shift, height, width)
    return torch.cat(parts, dim=2), shift


def _flat(shift: Tensor, dtype: torch.dtype) -> bool:
    """Whether the FFT path may transform in float32: every row's largest reachable log-weight
    within ``FFT_FLAT`` of its head's maximum (and the inputs not float64)."""
    return dtype != torch.float64 and bool((shift.amax(-1, keepdim=True) - shift).max() <= FFT_FLAT)


def _toeplitz_fft(qf, kf, v_ext, log_c, shift, height, width, work) -> tuple[Tensor, Tensor]:
    """Patch rows of ``(C * (qf kf^T)) v_ext`` by FFT in the ``work`` dtype (float64 unless the
    table is flat, :func:`_flat`), row ``i`` scaled by ``exp(-t_i)`` with ``t_i`` the top of its
    band, and that log-scale (see the module docstring)."""
    top = shift.amax(-1, keepdim=True)  # [h, 1]
    index = ((top - shift) / FFT_BAND).floor()  # [h, N]: band of each row
    tops = top - FFT_BAND * torch.arange(int(index.max()) + 1, dtype=shift.dtype)  # [h, nb]
    tops = tops.T[:, :, None, None]  # [nb, h, 1, 1]
    # Offsets above a band's top are out of its rows' reach: weight 0 there (a full gradient at
    # ties, unlike minimum/clamp).
    weights = torch.where(log_c <= tops, log_c - tops, -torch.inf).exp()  # [nb, h, 2H-1, 2W-1]
    masks = None
    if tops.shape[0] > 1:
        bands = torch.arange(tops.shape[0], dtype=shift.dtype)[:, None, None]
        masks = (index == bands).to(work)  # [nb, h, N]
    size = (fft_size(2 * height - 1), fft_size(2 * width - 1))
    itemsize = torch.finfo(work).bits // 8
    per_feature = v_ext.shape[-1] * size[0] * (size[1] // 2 + 1) * 2 * itemsize
    chunk = max(1, min(qf.shape[-1], FFT_CHUNK_BYTES // per_feature))
    args = (t.to(work) for t in (qf, kf, v_ext, weights))
    out = ToeplitzFFT.apply(*args, masks, (height, width, size, chunk), FFT_SAVE_BYTES)
    return out.to(qf.dtype), top - FFT_BAND * index


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
    patch tokens, or ``FFT64_THRESHOLD`` where the FFT needs float64 transforms). Both are exact
    up to the rounding stated in the module docstring; sums run in float32 (float64 if given).
    """
    height, width, prefix = grid
    if q_features.shape[-2] != height * width + prefix:
        raise ValueError(
            f"token count {q_features.shape[-2]} does not match grid {height}x{width} "
            f"plus {prefix} prefix tokens"
        )
    if method not in ("auto", "quadratic", "fft"):
        raise ValueError(f"unknown RPE method {method!r}; choose 'auto', 'quadratic' or 'fft'")
    with torch.autocast(device_type=v.device.type, enabled=False):
        qf, kf = q_features, k_features
        v_ext = torch.nn.functional.pad(v.to(qf.dtype), (0, 1), value=1.0)  # denominator column
        log_c = log_weights.to(qf.dtype)
        shift = row_stabiliser(log_c.detach(), height, width, prefix)
        flat = method != "quadratic" and _flat(shift, qf.dtype)  # one host sync, if needed
        if method == "auto":
            threshold = FFT_THRESHOLD if flat else FFT64_THRESHOLD
            method = "quadratic" if height * width < threshold else "fft"
        q_p, k_p, v_p = qf[:, :, prefix:], kf[:, :, prefix:], v_ext[:, :, prefix:]
        if method == "quadratic":
            out_patch, scale = _toeplitz_quadratic(q_p, k_p, v_p, log_c, shift, height, width)
        else:
            work = torch.float32 if flat else torch.float64
            out_patch, scale = _toeplitz_fft(q_p, k_p, v_p, log_c, shift, height, width, work)
        if prefix:
            # Prefix keys have weight 1 (exp(-scale) after the rows' stabiliser) for every
            # query; prefix queries see plain linear attention.
            prefix_context = kf[:, :, :prefix].transpose(-1, -2) @ v_ext[:, :, :prefix]
            patch_context = k_p.transpose(-1, -2) @ v_p
            out_prefix = qf[:, :, :prefix] @ (prefix_context + patch_context)
            out_patch = out_patch + (q_p @ prefix_context) * (-scale).exp()[..., None]
            out = torch.cat([out_prefix, out_patch], dim=2)
        else:
            out = out_patch
        return (out[..., :-1] / out[..., -1:].clamp_min(DENOMINATOR_EPS)).to(v.dtype)
