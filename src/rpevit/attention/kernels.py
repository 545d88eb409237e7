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
    compute_dtype,
    exp_feature_pair,
    favor_feature_pair,
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

    def feature_pair(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        """Non-negative features ``(phi(q), phi(k))`` ``[B, h, N, m]``, computed together so that
        exponential maps can share one stabiliser (:func:`exp_feature_pair`)."""
        raise NotImplementedError

    def forward(self, q, k, v, relative, grid):
        qf, kf = self.feature_pair(q, k)
        if relative is None:
            return linear_attention(qf, kf, v)
        return relative.linear(qf, kf, v, self.rpe_method)


#: Default FAVOR+ redraw policy, chosen on the validation split (docs/results/redraw-policy):
#: one draw for the whole run. On CIFAR-10 it ends highest at 3 epochs (favor-ape 56.7%,
#: favor-rope 56.2%; redraws every 100 steps for the first half 55.5% / 54.5%, every step ~47%,
#: every 1,000 steps to the end a collapse to 41% / 38%) and at 9 epochs (65.1% / 64.5%; first
#: half 64.9% / 64.4%, every step 62.3% / 61.8%). An interval set without a stop redraws only in
#: the first half.
DEFAULT_REDRAW_INTERVAL = 0
DEFAULT_REDRAW_STOP = 0.5


def active_draw(step: int, interval: int, until: int | None) -> int:
    """Index of the projection draw used by training forward pass ``step`` (0-based): draw
    ``s // interval`` is made at every pass ``s > 0`` that is a multiple of ``interval`` and
    comes before ``until`` (None: no end); ``interval == 0`` never redraws."""
    if interval == 0:
        return 0
    last = step if until is None else min(step, until - 1)
    return max(0, last // interval)


class FavorKernel(LinearKernel):
    """FAVOR+ positive orthogonal random features, an unbiased estimator of softmax attention.

    The projection is a buffer (saved in checkpoints). In training mode it is redrawn every
    ``redraw_interval`` forward passes (0 = never), but not in the final ``1 - redraw_stop`` of
    the training schedule, once :meth:`schedule_redraws` has told it the schedule's length: a
    late redraw replaces the kernel the model adapted to when the learning rate is too low to
    re-adapt. Draws are a deterministic function of ``(feature_seed, draw index)``, so resumed
    and data-parallel runs see identical features. The pass counter ``steps`` is a Python int
    (no device sync per forward), checkpointed as the module's extra state; checkpoints from
    when it was a ``steps`` buffer still load.
    """

    def __init__(
        self,
        head_dim: int,
        nb_features: int | None = None,
        redraw_interval: int = DEFAULT_REDRAW_INTERVAL,
        redraw_stop: float = DEFAULT_REDRAW_STOP,
        rpe_method: str = "auto",
    ) -> None:
        super().__init__(rpe_method)
        nb_features = random_feature_count(head_dim, nb_features)
        if redraw_interval < 0:
            raise ValueError(f"redraw_interval must be >= 0, got {redraw_interval}")
        if not 0 <= redraw_stop <= 1:
            raise ValueError(f"redraw_stop must be a fraction in [0, 1], got {redraw_stop}")
        self.head_dim, self.nb_features = head_dim, nb_features
        self.redraw_interval, self.redraw_stop = redraw_interval, redraw_stop
        #: first training pass with no more redraws (None: no schedule known, no end)
        self.redraw_until: int | None = None
        self.register_buffer("feature_seed", torch.randint(0, 2**31 - 1, ()))
        self.register_buffer("projection", self._draw(0))
        self.steps = 0
        self.register_load_state_dict_pre_hook(_steps_buffer_to_extra_state)

    def _draw(self, index: int) -> Tensor:
        generator = torch.Generator().manual_seed(int(self.feature_seed) * 1_000_003 + index)
        return orthogonal_gaussian_projection(self.nb_features, self.head_dim, generator=generator)

    @property
    def feature_count(self) -> int:
        return self.nb_features

    def schedule_redraws(self, total_steps: int) -> None:
        """Stop redrawing at pass ``redraw_stop * total_steps`` of a ``total_steps`` schedule."""
        self.redraw_until = math.floor(self.redraw_stop * total_steps)

    def redraw(self, index: int) -> None:
        """Replace the projection by draw number ``index`` (off the hot path: every N steps)."""
        self.projection.copy_(self._draw(index))

    def get_extra_state(self) -> Tensor:
        return torch.tensor(self.steps)

    def set_extra_state(self, state: Tensor) -> None:
        self.steps = int(state)

    def feature_pair(self, q, k):
        return favor_feature_pair(q, k, self.projection)

    @torch.compiler.disable  # Python-side bookkeeping: compiled graphs must not guard on steps
    def _count_step(self) -> None:
        draw = active_draw(self.steps, self.redraw_interval, self.redraw_until)
        if self.steps > 0 and draw != active_draw(
            self.steps - 1, self.redraw_interval, self.redraw_until
        ):
            self.redraw(draw)
        self.steps += 1

    def forward(self, q, k, v, relative, grid):
        if self.training and self.redraw_interval > 0:
            self._count_step()
        return super().forward(q, k, v, relative, grid)


def schedule_redraws(model: nn.Module, total_steps: int) -> None:
    """Tell every FAVOR+ kernel in ``model`` that training lasts ``total_steps`` forward passes,
    so that none redraws in the final phase (call it before training, as ``fit`` does)."""
    for module in model.modules():
        if isinstance(module, FavorKernel):
            module.schedule_redraws(total_steps)


def _steps_buffer_to_extra_state(module, state_dict, prefix, *args) -> None:
    """Load hook: a checkpoint saved when ``steps`` was a buffer stores it under ``steps``."""
    if prefix + "steps" in state_dict:
        state_dict.setdefault(prefix + "_extra_state", state_dict.pop(prefix + "steps"))


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
        self.reset_parameters()

    @property
    def feature_count(self) -> int:
        return self.head_dim if self.feature_proj is None else self.feature_proj.out_features

    def reset_parameters(self) -> None:
        """Learned projection: stacked blocks of orthonormal rows (unit norm, like the identity),
        so features start at the scale of ``q d^-1/4``, far above the 1e-3 epsilon."""
        if self.feature_proj is not None:
            with torch.no_grad():
                for block in self.feature_proj.weight.split(self.head_dim):
                    nn.init.orthogonal_(block)

    def feature_pair(self, q, k):
        weight = None if self.feature_proj is None else self.feature_proj.weight
        return relu_features(q, weight), relu_features(k, weight)


class ExpKernel(LinearKernel):
    """Deterministic EXP kernel, ``phi(x) = exp(x d^-1/4 - s)`` element-wise, no projection
    (stabilised jointly like FAVOR+, :func:`exp_feature_pair`). A positive map with m = d."""

    def feature_pair(self, q, k):
        with torch.autocast(device_type=q.device.type, enabled=False):
            dtype = compute_dtype(q)
            scale = q.shape[-1] ** -0.25
            return exp_feature_pair(q.to(dtype) * scale, k.to(dtype) * scale)


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

    def feature_pair(self, q, k):
        return favor_feature_pair(q, k, self.feature_weight)
