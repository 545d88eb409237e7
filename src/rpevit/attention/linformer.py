"""Linformer attention (Wang et al. 2020): keys and values projected along the sequence axis,
``softmax(Q (E K)^T / sqrt(d)) (F V)`` with learned ``E, F`` of shape ``[k, N]``: O(N k).

The sequence length N is fixed at construction. ``sharing``: ``"none"`` (separate E and F per
layer), ``"key-value"`` (E = F per layer) or ``"layerwise"`` (one E = F for every layer; the
registry passes the same projection module to each layer).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rpevit.attention.functional import softmax_attention
from rpevit.attention.kernels import AttentionKernel
from rpevit.positions.base import TokenGrid

SHARING = ("none", "key-value", "layerwise")


class SequenceProjection(nn.Module):
    """Learned ``[k, N]`` projection along the token axis, initialised like a linear layer."""

    def __init__(self, num_tokens: int, k: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(k, num_tokens) / num_tokens**0.5)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-2] != self.weight.shape[1]:
            raise ValueError(
                f"Linformer was built for {self.weight.shape[1]} tokens but got {x.shape[-2]}; "
                "it has a fixed sequence length: evaluate at the training image size"
            )
        return self.weight.to(x.dtype) @ x


class LinformerKernel(AttentionKernel):
    """Exact softmax attention over ``k`` projected keys/values (SDPA)."""

    def __init__(
        self,
        num_tokens: int,
        k: int = 64,
        sharing: str = "none",
        shared: SequenceProjection | None = None,
    ) -> None:
        super().__init__()
        if sharing not in SHARING:
            raise ValueError(f"unknown linformer_sharing {sharing!r}; choose one of {SHARING}")
        if k < 1:
            raise ValueError(f"linformer_k must be >= 1, got {k}")
        if sharing == "layerwise":
            self.proj_k = shared if shared is not None else SequenceProjection(num_tokens, k)
            self.proj_v = None
        else:
            self.proj_k = SequenceProjection(num_tokens, k)
            self.proj_v = None if sharing == "key-value" else SequenceProjection(num_tokens, k)

    def forward(self, q, k, v, relative, grid: TokenGrid) -> Tensor:
        if relative is not None:
            raise ValueError("Linformer mixes tokens along the sequence: RPE does not apply")
        proj_v = self.proj_v if self.proj_v is not None else self.proj_k
        return softmax_attention(q, self.proj_k(k), proj_v(v))
