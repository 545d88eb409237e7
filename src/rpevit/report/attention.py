"""Attention weights of a trained model, recomputed for inspection (not used in training).

For an :class:`~rpevit.attention.module.Attention` module and the tokens entering it, the
weights ``A`` with ``attention output = A V`` (per head, before the output projection):

- softmax: ``softmax(q k^T / sqrt(d) + bias)``, with the RPE bias if any;
- linear kernels: ``(phi(q) phi(k)^T * C)`` row-normalised, with ``C = exp(bias)`` the RPE
  weights (1 without RPE), which is exactly what the linear-time path computes implicitly.

``q`` and ``k`` are taken after the optional l2-normalisation and the position rotation, as in
the module's forward pass. The ``N x N`` matrix is formed here on purpose: it is what is shown.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from rpevit.attention.kernels import LinearKernel, SoftmaxKernel
from rpevit.attention.module import Attention
from rpevit.positions.base import TokenGrid


def attention_weights(attn: Attention, x: Tensor, grid: TokenGrid) -> Tensor:
    """Row-stochastic attention weights ``[B, heads, N, N]`` of ``attn`` for its input ``x``."""
    q, k, _ = rearrange(attn.qkv(x), "b n (three h d) -> three b h n d", three=3, h=attn.heads)
    if attn.qk_log_temperature is not None:  # as in Attention.forward
        scale = (attn.qk_log_temperature.exp() ** 0.5) * attn.head_dim**0.25
        q, k = F.normalize(q, dim=-1) * scale, F.normalize(k, dim=-1) * scale
    q, k = attn.position.rotate(q, k, grid)
    relative = attn.position.relative_weights(grid)
    # prefix (CLS) rows and columns get 0: no relative treatment
    bias = None if relative is None else relative.dense_logits()
    kernel = attn.kernel
    if isinstance(kernel, SoftmaxKernel):
        scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
        return torch.softmax(scores if bias is None else scores + bias, dim=-1)
    if isinstance(kernel, LinearKernel):
        qf, kf = kernel.feature_pair(q, k)
        scores = qf @ kf.transpose(-1, -2)
        if bias is not None:
            scores = scores * bias.exp().to(scores.dtype)
        return scores / scores.sum(dim=-1, keepdim=True)
    raise TypeError(f"no attention-weight formula for the {type(kernel).__name__} kernel")


def cls_attention_map(model: nn.Module, image: Tensor, layer: int = -1) -> Tensor:
    """How much the CLS token attends to each patch in block ``layer``: ``[heads, H, W]``.

    ``image`` is one normalised image ``[C, H_img, W_img]``. A forward pre-hook captures the
    tokens entering the block's attention and :func:`attention_weights` recomputes the weights.
    Raises ValueError for models without a CLS token (mean pooling).
    """
    attn = model.blocks[layer].attn
    captured: dict[str, tuple] = {}

    def hook(module: nn.Module, args: tuple) -> None:
        captured["args"] = args

    handle = attn.register_forward_pre_hook(hook)
    was_training = model.training
    try:
        model.eval()
        with torch.inference_mode():
            model(image.unsqueeze(0))
            x, grid = captured["args"]
            if grid.num_prefix == 0:
                raise ValueError("the model pools by mean: it has no CLS token to inspect")
            weights = attention_weights(attn, x, grid)
    finally:
        handle.remove()
        model.train(was_training)
    return weights[0, :, 0, grid.num_prefix :].reshape(-1, grid.height, grid.width).float()
