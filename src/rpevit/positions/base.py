"""Token-grid geometry and the interface every position encoding implements."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class TokenGrid:
    """Layout of a token sequence: ``num_prefix`` (CLS) tokens, then an ``height x width`` grid
    of patch tokens in row-major order, whose coordinates start at ``origin``."""

    height: int
    width: int
    num_prefix: int = 1
    origin: tuple[int, int] = (0, 0)

    @property
    def num_patches(self) -> int:
        return self.height * self.width

    @property
    def num_tokens(self) -> int:
        return self.num_prefix + self.num_patches

    def coords(self, device: torch.device | None = None, dtype=torch.float32) -> Tensor:
        """Patch coordinates ``[N, 2]`` as (row, col), row-major."""
        rows = torch.arange(self.height, device=device, dtype=dtype) + self.origin[0]
        cols = torch.arange(self.width, device=device, dtype=dtype) + self.origin[1]
        return torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1).reshape(-1, 2)


class PositionEncoding(nn.Module):
    """How geometry enters attention. Rotations act on q and k before the kernel; relative
    logits ``b(r_j - r_i)`` are handed to the kernel (a bias for softmax, ``exp(b)`` weights for
    linear attention). The default is neither: absolute embeddings only (``ape``)."""

    def rotate(self, q: Tensor, k: Tensor, grid: TokenGrid) -> tuple[Tensor, Tensor]:
        """Position-dependent transform of patch-token queries and keys (identity here)."""
        return q, k

    def relative_logits(self, grid: TokenGrid) -> Tensor | None:
        """Per-head table ``[h, 2H-1, 2W-1]`` of relative logits for ``grid``, or None."""
        return None


class AbsoluteOnly(PositionEncoding):
    """No relative mechanism inside attention: the model's learned APE carries position."""


def apply_to_patches(x: Tensor, num_prefix: int, fn) -> Tensor:
    """Apply ``fn`` to the patch tokens of ``x[..., N, d]``, leaving prefix tokens untouched."""
    if num_prefix == 0:
        return fn(x)
    return torch.cat([x[..., :num_prefix, :], fn(x[..., num_prefix:, :])], dim=-2)
