"""Kernelized relative position encoding (Luo et al. 2021) in 2D: a learnable per-head table
``b(dr, dc)`` over relative (row, col) offsets, initialised to zero."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rpevit.attention.functional import softmax_attention
from rpevit.attention.toeplitz import dense_relative_matrix, rpe_linear_attention
from rpevit.positions.base import PositionEncoding, RelativeWeights, TokenGrid


class ToeplitzWeights(RelativeWeights):
    """Weights from a free per-head table ``[h, 2H-1, 2W-1]`` indexed by offset: a dense bias for
    softmax, the exact block-Toeplitz product (quadratic or FFT form) for linear attention."""

    def __init__(self, table: Tensor, grid: TokenGrid) -> None:
        self.table, self.grid = table, grid

    def dense_logits(self, dtype: torch.dtype | None = None) -> Tensor:
        g = self.grid
        return dense_relative_matrix(self.table, g.height, g.width, g.num_prefix, dtype)

    def softmax(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Exact softmax attention with the bias built once, already in ``q``'s dtype."""
        return softmax_attention(q, k, v, self.dense_logits(q.dtype).unsqueeze(0))

    def linear(self, q_features: Tensor, k_features: Tensor, v: Tensor, method: str) -> Tensor:
        g = self.grid
        spec = (g.height, g.width, g.num_prefix)
        return rpe_linear_attention(q_features, k_features, v, self.table, spec, method)


class KernelizedRPE(PositionEncoding):
    """Holds ``table[h, 2H0-1, 2W0-1]`` for the training grid ``H0 x W0``.

    Other grids (resolution transfer): offsets beyond the trained range reuse the nearest
    trained offset (clamping, as in iRPE); a smaller grid uses the central part of the table.
    """

    def __init__(self, heads: int, grid_size: tuple[int, int]) -> None:
        super().__init__()
        self.grid_size = grid_size
        self.table = nn.Parameter(torch.zeros(heads, 2 * grid_size[0] - 1, 2 * grid_size[1] - 1))

    def relative_table(self, grid: TokenGrid) -> Tensor:
        """The ``[h, 2H-1, 2W-1]`` table for ``grid`` (clamped or cropped off the trained grid)."""
        h0, w0 = self.grid_size
        if (grid.height, grid.width) == (h0, w0):
            return self.table
        device = self.table.device
        rows = (torch.arange(-(grid.height - 1), grid.height, device=device) + h0 - 1).clamp(
            0, 2 * h0 - 2
        )
        cols = (torch.arange(-(grid.width - 1), grid.width, device=device) + w0 - 1).clamp(
            0, 2 * w0 - 2
        )
        return self.table[:, rows][:, :, cols]

    def relative_weights(self, grid: TokenGrid) -> ToeplitzWeights:
        return ToeplitzWeights(self.relative_table(grid), grid)
