"""Turn a timm ``VisionTransformer`` into a Performer ViT: :func:`convert_vit` replaces every
block's attention by a registered ``<kernel>-<position>`` attention that reuses timm's weights.

timm is an optional extra: ``pip install efficient-rpe-vit[timm]``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import Tensor, nn

try:
    from timm.models.vision_transformer import Attention, Block, ResPostBlock, VisionTransformer
except ImportError as error:
    raise ImportError(
        "rpevit.integrations.timm needs timm: pip install efficient-rpe-vit[timm]"
    ) from error

from rpevit.layers import GridAttention

#: timm blocks whose ``attn`` is called as ``attn(x[, attn_mask=, is_causal=])`` on all tokens.
BLOCKS = (Block, ResPostBlock)


class ConvertedAttention(GridAttention):
    """A registered attention in place of timm's ``Attention``: timm's call signature, and
    timm's ``q_norm``/``k_norm`` layers (identity when off) applied to q and k before the
    position encoding, as timm applies them before its softmax."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.q_norm: nn.Module = nn.Identity()
        self.k_norm: nn.Module = nn.Identity()

    def normalize_qk(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        return super().normalize_qk(self.q_norm(q), self.k_norm(k))

    def forward(
        self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False
    ) -> Tensor:
        if attn_mask is not None or is_causal:
            raise ValueError(
                f"the converted {self.model_name} attention takes no attn_mask or is_causal: "
                "linear kernels never form the N x N matrix a mask acts on; call the model "
                "without them"
            )
        return super().forward(x)


class PatchGridHook:
    """Forward hook on the patch embedding of a ``dynamic_img_size`` model: hands each
    converted attention the patch grid of the current input (timm's ``[B, H, W, C]`` output)."""

    def __init__(self, layers: list[ConvertedAttention]) -> None:
        self.layers = layers

    def __call__(self, module: nn.Module, inputs: Any, output: Tensor) -> None:
        if output.ndim != 4:
            raise ValueError(
                f"cannot read the patch grid: {type(module).__name__} returned shape "
                f"{list(output.shape)}, expected [B, H, W, C] as timm's dynamic_img_size gives"
            )
        height, width = output.shape[1], output.shape[2]
        for layer in self.layers:
            layer.grid = dataclasses.replace(layer.grid, height=height, width=width)


def _refusal(index: int, block: nn.Module) -> Exception | None:
    """Why block ``index`` cannot be converted (the error to raise), or None."""
    if type(block) not in BLOCKS:
        return TypeError(
            f"block {index} is a timm {type(block).__name__}; convert_vit handles "
            f"{' and '.join(b.__name__ for b in BLOCKS)} (one plain Attention per block)"
        )
    attn = block.attn
    if type(attn) is not Attention:
        return TypeError(
            f"block {index}'s attention is a {type(attn).__name__}, not timm's plain Attention"
        )
    if attn.attn_drop.p > 0:
        return ValueError(
            f"block {index} has attention dropout {attn.attn_drop.p}: linear kernels never form "
            "the attention weights it drops; build the model with attn_drop_rate=0"
        )
    if not isinstance(getattr(attn, "norm", None), (nn.Identity, type(None))):
        return ValueError(
            f"block {index} normalises the attention output (scale_attn_norm), which the "
            "converted attention has no place for; build the model without it"
        )
    if getattr(attn, "gate", None) is not None:
        return ValueError(f"block {index} gates the attention output, which is not supported")
    dim = attn.qkv.in_features
    if attn.num_heads * attn.head_dim != dim or attn.proj.out_features != dim:
        return ValueError(
            f"block {index}'s attention maps width {dim} through {attn.num_heads} heads of "
            f"{attn.head_dim} to {attn.proj.out_features}; only heads * head_dim = dim = "
            "output width is supported"
        )
    return None


def check_convertible(model: nn.Module) -> None:
    """TypeError/ValueError saying what in ``model`` has no counterpart in a converted model."""
    if not isinstance(model, VisionTransformer):
        raise TypeError(
            f"convert_vit needs a timm VisionTransformer, got {type(model).__name__}; "
            "other architectures (Swin, ConvNeXt, hybrid stages, ...) are not supported"
        )
    patch_drop = getattr(model.patch_drop, "prob", 0.0)
    if patch_drop > 0:
        raise ValueError(
            f"the model drops patch tokens in training (patch_drop_rate={patch_drop}), so the "
            "remaining tokens no longer form the patch grid; build it with patch_drop_rate=0"
        )
    if not hasattr(model.patch_embed, "grid_size"):
        raise ValueError(
            f"cannot infer the patch grid: {type(model.patch_embed).__name__} has no grid_size"
        )
    for index, block in enumerate(model.blocks):
        error = _refusal(index, block)
        if error is not None:
            raise error


def convert_attention(
    attn: Attention, name: str, grid_size: tuple[int, int], num_prefix: int, **options: Any
) -> ConvertedAttention:
    """``create_attention(name, ...)`` that reuses ``attn``'s modules: its qkv Linear (timm's
    ``[3*dim]`` output is (q, k, v) x heads x head_dim, the layout of Attention's
    ``"b n (three h d)"`` split), output projection, projection dropout and q/k norms."""
    dim, heads = attn.qkv.in_features, attn.num_heads
    layer = ConvertedAttention.from_name(name, dim, heads, grid_size, num_prefix, **options)
    layer.qkv, layer.proj, layer.proj_dropout = attn.qkv, attn.proj, attn.proj_drop
    layer.q_norm, layer.k_norm = attn.q_norm, attn.k_norm
    weight = attn.qkv.weight
    return layer.to(device=weight.device, dtype=weight.dtype)


def convert_vit(model: nn.Module, name: str, **options: Any) -> nn.Module:
    """Replace the attention of every block of the timm ``VisionTransformer`` ``model`` (in
    place; returned) by the registered ``name`` (e.g. ``"favor-rpe"``) with ``options`` as for
    :func:`rpevit.create_attention`, keeping timm's weights (:func:`convert_attention`).

    The patch grid and the prefix tokens (class, register and distillation tokens) come from
    the model; with ``dynamic_img_size`` a hook follows each input's grid. Everything else
    (patch embedding, timm's absolute ``pos_embed``, MLPs, pooling, head) stays timm's, and the
    state-dict keys of timm's weights are unchanged. Configurations without a counterpart are
    refused before anything changes (:func:`check_convertible`).
    """
    check_convertible(model)
    grid_size = tuple(model.patch_embed.grid_size)
    layers = [
        convert_attention(block.attn, name, grid_size, model.num_prefix_tokens, **options)
        for block in model.blocks
    ]
    for block, layer in zip(model.blocks, layers, strict=True):
        block.attn = layer
    if getattr(model, "dynamic_img_size", False):
        model.patch_embed.register_forward_hook(PatchGridHook(layers))
    return model
