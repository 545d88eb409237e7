"""Kernelized relative position encoding (Luo et al. 2021) in 2D: a learnable per-head table
``b(dr, dc)`` over relative (row, col) offsets, initialised to zero."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rpevit.positions.base import PositionEncoding, TokenGrid


class KernelizedRPE(PositionEncoding):
    """Holds ``table[h, 2H0-1, 2W0-1]`` for the training grid ``H0 x W0``.

    Other grids (resolution transfer): offsets beyond the trained range reuse the nearest
    trained offset (clamping, as in iRPE); a smaller grid uses the central part of the table.
    """

    def __init__(self, heads: int, grid_size: tuple[int, int]) -> None:
        super().__init__()
        self.grid_size = grid_size
        self.table = nn.Parameter(torch.zeros(heads, 2 * grid_size[0] - 1, 2 * grid_size[1] - 1))

    def relative_logits(self, grid: TokenGrid) -> Tensor:
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
