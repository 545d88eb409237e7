"""Multi-head attention composing one kernel and one position encoding (DESIGN.md section 7)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from rpevit.attention.kernels import AttentionKernel
from rpevit.positions.base import PositionEncoding, TokenGrid


class Attention(nn.Module):
    """``qkv -> [q/k l2-norm] -> position.rotate -> kernel(+relative weights) -> proj``.

    ``qk_norm`` (Luo et al. 2021, sec. 3.3) l2-normalises q and k and scales their product by a
    learnable per-head temperature ``tau`` (initially ``qk_temperature``, 4 by default), so the
    logits are ``tau * cos(q, k)``: the FAVOR+ variance, which grows like
    ``exp(|q||k|/sqrt(d))``, stays bounded.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        kernel: AttentionKernel,
        position: PositionEncoding,
        qk_norm: bool = False,
        proj_dropout: float = 0.0,
        qk_temperature: float = 4.0,
    ) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.position = position
        self.kernel = kernel
        self.proj = nn.Linear(dim, dim)
        self.proj_dropout = nn.Dropout(proj_dropout)
        if qk_norm:
            initial = math.log(qk_temperature)
            self.qk_log_temperature = nn.Parameter(torch.full((heads, 1, 1), initial))
        else:
            self.qk_log_temperature = None

    def normalize_qk(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        """``q, k`` ``[B, h, N, d]`` before the position encoding: l2-normalised and scaled by
        the temperature with ``qk_norm``, unchanged otherwise (subclasses add their own)."""
        if self.qk_log_temperature is None:
            return q, k
        scale = (self.qk_log_temperature.exp() ** 0.5) * self.head_dim**0.25
        return F.normalize(q, dim=-1) * scale, F.normalize(k, dim=-1) * scale

    def forward(self, x: Tensor, grid: TokenGrid) -> Tensor:
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.heads)
        q, k = self.normalize_qk(q, k)
        q, k = self.position.rotate(q, k, grid)
        out = self.kernel(q, k, v, self.position.relative_weights(grid), grid)
        return self.proj_dropout(self.proj(rearrange(out, "b h n d -> b n (h d)")))
