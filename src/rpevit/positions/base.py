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


class RelativeWeights:
    """A re-weighting of patch-token pairs by their offset, ``c_ij = exp(b(r_j - r_i))`` (weight 1
    to and from prefix tokens), made by a position encoding for one grid and applied by the
    kernel: as the additive logit bias ``b`` in softmax attention, as the multiplicative weight
    ``c`` in linear attention. Each encoding implements the algorithms that suit its structure
    (a free Toeplitz table, a low-rank Fourier form, ...)."""

    def dense_logits(self) -> Tensor:
        """The ``[h, P+N, P+N]`` log-weights ``b`` (0 in prefix rows/columns), for softmax
        attention and for inspection; O(N^2) memory."""
        raise NotImplementedError

    def softmax(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Exact ``softmax(q k^T / sqrt(d) + b) v``; by default with the dense bias."""
        from rpevit.attention.functional import softmax_attention

        return softmax_attention(q, k, v, self.dense_logits().unsqueeze(0))

    def linear(self, q_features: Tensor, k_features: Tensor, v: Tensor, method: str) -> Tensor:
        """Linear attention with weights ``c``: ``out_i = sum_j c_ij phi_i.phi_j v_j / sum_j
        c_ij phi_i.phi_j``; ``method`` is the kernel's ``rpe_method`` option."""
        raise NotImplementedError


class PositionEncoding(nn.Module):
    """How geometry enters attention. Rotations act on q and k before the kernel; relative
    weights (:class:`RelativeWeights`) are handed to the kernel (a bias for softmax, a
    multiplicative weight for linear attention). The default is neither: absolute embeddings
    only (``ape``)."""

    def rotate(self, q: Tensor, k: Tensor, grid: TokenGrid) -> tuple[Tensor, Tensor]:
        """Position-dependent transform of patch-token queries and keys (identity here)."""
        return q, k

    def relative_weights(self, grid: TokenGrid) -> RelativeWeights | None:
        """The relative re-weighting of token pairs on ``grid``, or None."""
        return None


class AbsoluteOnly(PositionEncoding):
    """No relative mechanism inside attention: the model's learned APE carries position."""


def apply_to_patches(x: Tensor, num_prefix: int, fn) -> Tensor:
    """Apply ``fn`` to the patch tokens of ``x[..., N, d]``, leaving prefix tokens untouched."""
    if num_prefix == 0:
        return fn(x)
    return torch.cat([x[..., :num_prefix, :], fn(x[..., num_prefix:, :])], dim=-2)
