"""Attention kernels: how query-key similarity is computed (DESIGN.md section 3).

Every kernel takes rotated ``q, k`` and ``v`` of shape ``[B, h, N, d]`` plus the position
encoding's relative weights (:class:`~rpevit.positions.base.RelativeWeights`, or None) and
returns ``[B, h, N, d]``. The softmax kernel asks the weights for exact softmax attention with
their logit bias; linear kernels hand them their feature maps, to apply as multiplicative
weights.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from rpevit.attention.functional import (
    favor_features,
    linear_attention,
    orthogonal_gaussian_projection,
    relu_features,
    softmax_attention,
)
from rpevit.positions.base import RelativeWeights, TokenGrid


def random_feature_count(head_dim: int, nb_features: int | None) -> int:
    """Validated feature count; default ``int(d ln d)`` as in ``performer-pytorch``."""
    if nb_features is None:
        nb_features = max(1, int(head_dim * math.log(head_dim)))
    if nb_features < 1:
        raise ValueError(f"nb_features must be >= 1, got {nb_features}")
    return nb_features


class AttentionKernel(nn.Module):
    """Base class; subclasses implement ``forward(q, k, v, relative, grid)``."""

    @property
    def feature_count(self) -> int | None:
        """Features per head ``m`` of the kernel's feature map (None: no feature map)."""
        return None

    def forward(
        self, q: Tensor, k: Tensor, v: Tensor, relative: RelativeWeights | None, grid: TokenGrid
    ) -> Tensor:
        raise NotImplementedError


class SoftmaxKernel(AttentionKernel):
    """Exact softmax attention through SDPA; relative weights add their logit bias."""

    def forward(self, q, k, v, relative, grid):
        if relative is None:
            return softmax_attention(q, k, v)
        return relative.softmax(q, k, v)


class LinearKernel(AttentionKernel):
    """Linear attention with a non-negative feature map, O(N) (O(N log N) with RPE)."""

    def __init__(self, rpe_method: str = "auto") -> None:
        super().__init__()
        if rpe_method not in ("auto", "quadratic", "fft"):
            raise ValueError(f"unknown rpe_method {rpe_method!r}; choose auto, quadratic or fft")
        self.rpe_method = rpe_method

    def features(self, x: Tensor, is_query: bool) -> Tensor:
        raise NotImplementedError

    def forward(self, q, k, v, relative, grid):
        qf, kf = self.features(q, is_query=True), self.features(k, is_query=False)
        if relative is None:
            return linear_attention(qf, kf, v)
        return relative.linear(qf, kf, v, self.rpe_method)


class FavorKernel(LinearKernel):
    """FAVOR+ positive orthogonal random features, an unbiased estimator of softmax attention.

    The projection is a buffer (saved in checkpoints). In training mode it is redrawn every
    ``redraw_interval`` forward passes (0 = never); draws are a deterministic function of
    ``(feature_seed, draw index)``, so resumed and data-parallel runs see identical features.
    """

    def __init__(
        self,
        head_dim: int,
        nb_features: int | None = None,
        redraw_interval: int = 1000,
        rpe_method: str = "auto",
    ) -> None:
        super().__init__(rpe_method)
        nb_features = random_feature_count(head_dim, nb_features)
        if redraw_interval < 0:
            raise ValueError(f"redraw_interval must be >= 0, got {redraw_interval}")
        self.head_dim, self.nb_features, self.redraw_interval = (
            head_dim,
            nb_features,
            redraw_interval,
        )
        self.register_buffer("feature_seed", torch.randint(0, 2**31 - 1, ()))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("projection", self._draw(0))

    def _draw(self, index: int) -> Tensor:
        generator = torch.Generator().manual_seed(int(self.feature_seed) * 1_000_003 + index)
        return orthogonal_gaussian_projection(self.nb_features, self.head_dim, generator=generator)

    @property
    def feature_count(self) -> int:
        return self.nb_features

    def redraw(self, index: int) -> None:
        """Replace the projection by draw number ``index`` (off the hot path: every N steps)."""
        self.projection.copy_(self._draw(index))

    def features(self, x: Tensor, is_query: bool) -> Tensor:
        return favor_features(x, self.projection, is_query=is_query)

    def forward(self, q, k, v, relative, grid):
        if self.training and self.redraw_interval > 0:
            step = int(self.steps)
            if step > 0 and step % self.redraw_interval == 0:
                self.redraw(step // self.redraw_interval)
            self.steps += 1
        return super().forward(q, k, v, relative, grid)


class ReluKernel(LinearKernel):
    """Deterministic Performer-ReLU, ``phi(x) = ReLU(P x d^-1/4) + 1e-3``; a different kernel,
    not an estimator of softmax. ``P`` is the identity, or a learned ``[m, d]`` projection."""

    def __init__(
        self,
        head_dim: int,
        nb_features: int | None = None,
        feature_projection: str = "identity",
        rpe_method: str = "auto",
    ) -> None:
        super().__init__(rpe_method)
        self.head_dim = head_dim
        if feature_projection not in ("identity", "learned"):
            raise ValueError(
                f"unknown feature_projection {feature_projection!r}; choose identity or learned"
            )
        if feature_projection == "learned":
            self.feature_proj = nn.Linear(head_dim, nb_features or head_dim, bias=False)
        elif nb_features not in (None, head_dim):
            raise ValueError(
                "nb_features of the ReLU kernel needs feature_projection='learned' "
                f"(the identity map has m = head_dim = {head_dim})"
            )
        else:
            self.feature_proj = None

    @property
    def feature_count(self) -> int:
        return self.head_dim if self.feature_proj is None else self.feature_proj.out_features

    def features(self, x: Tensor, is_query: bool) -> Tensor:
        weight = None if self.feature_proj is None else self.feature_proj.weight
        return relu_features(x, weight)


class ExpKernel(LinearKernel):
    """Deterministic EXP kernel, ``phi(x) = exp(x d^-1/4 - s)`` element-wise, no projection
    (``s`` the same detached stabiliser as FAVOR+). A positive feature map with m = d."""

    def features(self, x: Tensor, is_query: bool) -> Tensor:
        compute_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.to(compute_dtype) * x.shape[-1] ** -0.25
            dims = (-1,) if is_query else (-2, -1)
            return torch.exp(x - x.detach().amax(dim=dims, keepdim=True))


class LearnableKernel(LinearKernel):
    """Learnable positive features ``phi(x) = m^-1/2 exp(W x' - |x'|^2/2 - s)`` with ``W``
    (``m x d``) a trained parameter initialised by one FAVOR+ orthogonal draw: it starts as a
    FAVOR+ estimator of softmax and then learns its own kernel (no redraws)."""

    def __init__(
        self, head_dim: int, nb_features: int | None = None, rpe_method: str = "auto"
    ) -> None:
        super().__init__(rpe_method)
        nb_features = random_feature_count(head_dim, nb_features)
        self.feature_weight = nn.Parameter(orthogonal_gaussian_projection(nb_features, head_dim))

    @property
    def feature_count(self) -> int:
        return self.feature_weight.shape[0]

    def features(self, x: Tensor, is_query: bool) -> Tensor:
        return favor_features(x, self.feature_weight, is_query=is_query)
