"""2D rotary position embedding (Su et al. 2024; Heo et al. 2024) on patch tokens.

``axial``: the first half of each head's rotation pairs turns by ``row * theta_t``, the second by
``col * theta_t`` with ``theta_t = base^(-t / (d/4))`` (fixed). ``mixed``: every pair turns by
``row * f_row + col * f_col`` with per-head learnable frequencies, initialised as in Heo et al.
(magnitudes ``base^(-t/(d/4))``, a random direction per head). Only patch tokens are rotated,
so a common shift of all patch coordinates leaves the patch-to-patch logits unchanged but not
CLS-to-patch or patch-to-CLS ones (DESIGN.md sec. 4).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from rpevit.attention.functional import compute_dtype
from rpevit.positions.base import PositionEncoding, TokenGrid, apply_to_patches


def rotate_pairs(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the pairs ``(x[t], x[t + d/2])`` of ``x[..., N, d]`` by the angles whose cosines and
    sines are ``cos``, ``sin`` ``[..., N, d/2]``."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def axial_frequencies(head_dim: int, base: float) -> Tensor:
    """The ``d/4`` axial frequencies ``base^(-t/(d/4))``."""
    quarter = head_dim // 4
    return base ** (-torch.arange(quarter, dtype=torch.float32) / quarter)


class Rope2D(PositionEncoding):
    """2D RoPE applied to q and k before the attention kernel (any kernel)."""

    def __init__(self, head_dim: int, heads: int, mode: str = "axial", base: float = 100.0):
        super().__init__()
        if head_dim % 4:
            raise ValueError(f"2D RoPE needs a head dimension divisible by 4, got {head_dim}")
        if mode not in ("axial", "mixed"):
            raise ValueError(f"unknown RoPE mode {mode!r}; choose 'axial' or 'mixed'")
        self.mode = mode
        theta = axial_frequencies(head_dim, base)
        if mode == "axial":
            zeros = torch.zeros_like(theta)
            row, col = torch.cat([theta, zeros]), torch.cat([zeros, theta])
            self.register_buffer("freqs", torch.stack([row, col])[:, None], persistent=False)
        else:
            angle = torch.rand(heads, 1) * 2 * math.pi
            row = torch.cat([theta * angle.cos(), theta * (angle + math.pi / 2).cos()], dim=-1)
            col = torch.cat([theta * angle.sin(), theta * (angle + math.pi / 2).sin()], dim=-1)
            self.freqs = nn.Parameter(torch.stack([row, col]))  # [2, heads, d/2]

    def angles(self, coords: Tensor) -> Tensor:
        """Rotation angles ``[heads or 1, N, d/2]`` for patch coordinates ``[N, 2]``."""
        freqs = self.freqs.to(coords.dtype)
        return coords[:, 0, None] * freqs[0][:, None] + coords[:, 1, None] * freqs[1][:, None]

    def rotate(self, q: Tensor, k: Tensor, grid: TokenGrid) -> tuple[Tensor, Tensor]:
        dtype = compute_dtype(q)
        angles = self.angles(grid.coords(q.device, dtype))
        cos, sin = angles.cos().to(q.dtype), angles.sin().to(q.dtype)  # once for q and k

        def fn(x: Tensor) -> Tensor:
            return rotate_pairs(x, cos, sin)

        return apply_to_patches(q, grid.num_prefix, fn), apply_to_patches(k, grid.num_prefix, fn)
