"""Fourier relative position encoding (FLT-style, Choromanski et al. 2024) at linear cost.

Per head, a learnable band-limited weight of the 2D offset ``D = r_j - r_i``:
``f(D) = a_0 + sum_{r=1..R} a_r cos(w_r . D + s_r)``, ``a_0 = sum_r |a_r| + softplus(beta)``,
so ``f >= softplus(beta) > 0`` everywhere. Softmax uses ``log f`` as its logit bias; linear
kernels use ``f`` as a multiplicative weight through the exact rank-``2R + 1`` factorisation
of :mod:`rpevit.attention.lowrank`. ``f`` is a continuous function of the offset, so it
evaluates on any grid (resolution transfer needs no rule).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from rpevit.attention.functional import softmax_attention
from rpevit.attention.lowrank import fourier_linear_attention, fourier_weight
from rpevit.attention.toeplitz import dense_relative_matrix, rpe_linear_attention
from rpevit.positions.base import PositionEncoding, RelativeWeights, TokenGrid

#: Default number of cosine terms R per head (rank 2R + 1); see DESIGN.md section 4.
DEFAULT_TERMS = 1


class FourierWeights(RelativeWeights):
    """Weights ``f(r_j - r_i)`` of one grid: a dense ``log f`` bias for softmax, the O(N)
    low-rank form for linear attention (``method="auto"``), or the exact Toeplitz paths of
    the free-table RPE on the same ``f`` (``"quadratic"``/``"fft"``, for cross-checks)."""

    def __init__(self, position: FourierRPE, grid: TokenGrid) -> None:
        self.position, self.grid = position, grid

    def params(self, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(frequencies, phases, amplitudes, beta)`` in ``dtype``."""
        p = self.position
        return tuple(t.to(dtype) for t in (p.frequencies, p.phases, p.amplitudes, p.beta))

    def offset_table(self, dtype: torch.dtype) -> Tensor:
        """``f`` at every offset of the grid, ``[h, 2H-1, 2W-1]`` (index ``D + (H-1, W-1)``)."""
        g = self.grid
        device = self.position.beta.device
        rows = torch.arange(1 - g.height, g.height, device=device, dtype=dtype)
        cols = torch.arange(1 - g.width, g.width, device=device, dtype=dtype)
        offsets = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1)
        return fourier_weight(offsets, *self.params(dtype))

    def dense_logits(self, dtype: torch.dtype | None = None) -> Tensor:
        g = self.grid
        log_table = self.offset_table(self.position.beta.dtype).log()
        return dense_relative_matrix(log_table, g.height, g.width, g.num_prefix, dtype)

    def softmax(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Exact ``softmax(q k^T / sqrt(d) + log f) v``, the bias built in ``q``'s dtype."""
        return softmax_attention(q, k, v, self.dense_logits(q.dtype).unsqueeze(0))

    def linear(self, q_features: Tensor, k_features: Tensor, v: Tensor, method: str) -> Tensor:
        g, dtype = self.grid, q_features.dtype
        if method != "auto":
            spec = (g.height, g.width, g.num_prefix)
            log_table = self.offset_table(dtype).log()
            return rpe_linear_attention(q_features, k_features, v, log_table, spec, method)
        coords = g.coords(q_features.device, dtype)
        return fourier_linear_attention(
            q_features, k_features, v, coords, *self.params(dtype), g.num_prefix
        )


class FourierRPE(PositionEncoding):
    """Per-head parameters of ``f``: frequencies ``[h, R, 2]``, phases and amplitudes
    ``[h, R]``, beta ``[h]``. Initialised to ``f = 1`` (``a = 0``, ``softplus(beta) = 1``,
    phases 0: plain attention, like the zero RPE table), with frequencies of log-uniform
    magnitude in ``[pi / max(H, W), pi]`` (grid-sized to pixel-sized periods) and random
    directions, so training starts from every scale of the grid."""

    def __init__(self, heads: int, grid_size: tuple[int, int], terms: int = DEFAULT_TERMS):
        super().__init__()
        if isinstance(terms, bool) or not isinstance(terms, int) or terms < 1:
            raise ValueError(f"frpe_terms must be an integer >= 1 (cosine terms), got {terms!r}")
        low, high = math.log(math.pi / max(grid_size)), math.log(math.pi)
        magnitude = torch.exp(low + (high - low) * torch.rand(heads, terms))
        direction = 2 * math.pi * torch.rand(heads, terms)
        frequencies = torch.stack([direction.cos(), direction.sin()], dim=-1) * magnitude[..., None]
        self.frequencies = nn.Parameter(frequencies)
        self.phases = nn.Parameter(torch.zeros(heads, terms))
        self.amplitudes = nn.Parameter(torch.zeros(heads, terms))
        self.beta = nn.Parameter(torch.full((heads,), math.log(math.e - 1)))  # softplus = 1

    def relative_weights(self, grid: TokenGrid) -> FourierWeights:
        return FourierWeights(self, grid)
