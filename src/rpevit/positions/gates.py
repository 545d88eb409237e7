"""Per-token gates from one report the project grew from, kept for reproducing it.

They are NOT relative encodings: each token's q and k are multiplied element-wise by
``exp(g_row[row] + g_col[col])``, a function of its absolute position, so attention is not
translation invariant (a test shows it). ``irpe-gate``: one scalar per head and token;
``string-gate``: one value per head, token and channel. Initialised to 0 (gate 1).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rpevit.positions.base import PositionEncoding, TokenGrid, apply_to_patches


class PositionGate(PositionEncoding):
    """Absolute row/column gates on patch-token q and k; coordinates beyond the training grid
    reuse the last trained row/column."""

    def __init__(self, heads: int, grid_size: tuple[int, int], channels: int) -> None:
        super().__init__()
        self.gate_row = nn.Parameter(torch.zeros(heads, grid_size[0], channels))
        self.gate_col = nn.Parameter(torch.zeros(heads, grid_size[1], channels))

    def gates(self, grid: TokenGrid) -> Tensor:
        """``[heads, N, channels]`` multiplicative gates for the patch tokens of ``grid``."""
        coords = grid.coords(self.gate_row.device, torch.long)
        rows = coords[:, 0].clamp(0, self.gate_row.shape[1] - 1)
        cols = coords[:, 1].clamp(0, self.gate_col.shape[1] - 1)
        return torch.exp(self.gate_row[:, rows] + self.gate_col[:, cols])

    def rotate(self, q: Tensor, k: Tensor, grid: TokenGrid) -> tuple[Tensor, Tensor]:
        gates = self.gates(grid)

        def fn(x: Tensor) -> Tensor:
            return x * gates.to(x.dtype)

        return apply_to_patches(q, grid.num_prefix, fn), apply_to_patches(k, grid.num_prefix, fn)
