"""Attention: pure functional kernels, kernel modules, and the composed attention module."""

from rpevit.attention.functional import (
    exp_feature_pair,
    favor_attention,
    favor_feature_pair,
    favor_features,
    linear_attention,
    orthogonal_gaussian_projection,
    relu_features,
    softmax_attention,
)
from rpevit.attention.kernels import (
    AttentionKernel,
    FavorKernel,
    ReluKernel,
    SoftmaxKernel,
    schedule_redraws,
)
from rpevit.attention.module import Attention
from rpevit.attention.toeplitz import rpe_linear_attention

__all__ = [
    "Attention",
    "AttentionKernel",
    "FavorKernel",
    "ReluKernel",
    "SoftmaxKernel",
    "exp_feature_pair",
    "favor_attention",
    "favor_feature_pair",
    "favor_features",
    "linear_attention",
    "orthogonal_gaussian_projection",
    "relu_features",
    "rpe_linear_attention",
    "schedule_redraws",
    "softmax_attention",
]
