"""Standalone attention layers: :func:`create_attention` builds the attention that a registered
``<kernel>-<position>`` ViT puts in its blocks, for any token sequence laid out as ``P`` prefix
tokens followed by an ``H x W`` patch grid in row-major order."""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import Tensor

from rpevit.attention.kernels import AttentionKernel
from rpevit.attention.linformer import LinformerKernel
from rpevit.attention.module import Attention
from rpevit.models.vit import init_transformer_weights
from rpevit.option_types import check_option, integer
from rpevit.positions.base import PositionEncoding, TokenGrid
from rpevit.registry import (
    BACKBONE_OPTIONS,
    LayerShape,
    check_heads,
    check_positive,
    resolve_variant,
    to_pair,
)

#: The backbone options that configure the attention layer itself (the others are refused).
LAYER_OPTIONS = ("qk_norm", "qk_temperature")

#: A patch grid at call time: ``(h, w)``, an int for a square, or a full :class:`TokenGrid`.
GridSize = int | tuple[int, int] | TokenGrid


class GridAttention(Attention):
    """:class:`Attention` that knows its token layout ``grid``: ``forward(x)`` maps
    ``[B, P + H*W, dim]`` to the same shape; ``forward(x, grid_size=(h, w))`` runs on another
    patch grid (a resolution change) where the encoding allows it, and ``forward(x, grid)`` with
    a :class:`TokenGrid` works as for :class:`Attention`, so the layer can stand in for one.
    ``model_name`` is the registry name it was built from."""

    def __init__(
        self,
        dim: int,
        heads: int,
        kernel: AttentionKernel,
        position: PositionEncoding,
        grid: TokenGrid,
        *,
        name: str,
        qk_norm: bool = False,
        qk_temperature: float = 4.0,
    ) -> None:
        super().__init__(dim, heads, kernel, position, qk_norm, qk_temperature=qk_temperature)
        self.grid = grid
        self.model_name = name

    @classmethod
    def from_name(
        cls,
        name: str,
        dim: int,
        heads: int,
        grid_size: int | tuple[int, int],
        num_prefix_tokens: int = 1,
        **options: Any,
    ) -> GridAttention:
        """The layer of ``create_model(name, ...)``'s blocks, with ViT initialisation; options
        are checked as :func:`rpevit.create_model` checks them (see :func:`create_attention`)."""
        backbone_only = sorted(set(options) & (set(BACKBONE_OPTIONS) - set(LAYER_OPTIONS)))
        if backbone_only:
            raise ValueError(
                f"option(s) {', '.join(backbone_only)} configure the ViT backbone, not an "
                "attention layer: pass them to create_model, or leave them out here"
            )
        variant = resolve_variant(name, options, LAYER_OPTIONS)
        check_positive({"dim": dim, "heads": heads})
        check_heads(dim, heads)
        check_option("num_prefix_tokens", num_prefix_tokens, integer(0))
        grid = TokenGrid(*to_pair(grid_size, "grid_size"), num_prefix_tokens)
        shape = LayerShape(heads, dim // heads, (grid.height, grid.width), num_prefix_tokens)
        layer = cls(
            dim,
            heads,
            variant.make_kernel(shape, {}),
            variant.make_position(shape),
            grid,
            name=name,
            qk_norm=variant.backbone.get("qk_norm", False),
            qk_temperature=variant.backbone.get("qk_temperature", 4.0),
        )
        init_transformer_weights(layer)
        return layer

    def token_grid(self, grid_size: GridSize | None = None) -> TokenGrid:
        """The layout of a call: the layer's own ``grid``, that grid resized to ``grid_size``
        ``(h, w)``, or ``grid_size`` itself if it is a :class:`TokenGrid` (as ``Attention``
        takes it); ValueError where the kernel has a fixed token count (Linformer)."""
        if grid_size is None:
            return self.grid
        if isinstance(grid_size, TokenGrid):
            grid = grid_size
        else:
            height, width = to_pair(grid_size, "grid_size")
            grid = dataclasses.replace(self.grid, height=height, width=width)
        if isinstance(self.kernel, LinformerKernel) and grid.num_tokens != self.grid.num_tokens:
            raise ValueError(
                f"{self.model_name} has a fixed sequence length of {self.grid.num_tokens} tokens "
                f"(Linformer projects the token axis), so it cannot run on a "
                f"{grid.height}x{grid.width} grid; keep the grid it was built for, or use "
                "another kernel"
            )
        return grid

    def forward(self, x: Tensor, grid_size: GridSize | None = None) -> Tensor:
        grid = self.token_grid(grid_size)
        dim = self.qkv.in_features
        if x.ndim != 3 or x.shape[1:] != (grid.num_tokens, dim):
            raise ValueError(
                f"expected tokens [B, {grid.num_prefix} + {grid.height}*{grid.width}, {dim}] = "
                f"[B, {grid.num_tokens}, {dim}], got {list(x.shape)}; pass grid_size=(h, w) if "
                "the patch grid changed"
            )
        return super().forward(x, grid)

    def extra_repr(self) -> str:
        g = self.grid
        return f"{self.model_name!r}, grid={g.height}x{g.width}, prefix_tokens={g.num_prefix}"


def create_attention(
    name: str,
    dim: int,
    heads: int,
    grid_size: int | tuple[int, int],
    num_prefix_tokens: int = 1,
    **options: Any,
) -> GridAttention:
    """The attention layer of the registered variant ``name`` (``list_available_models()``) for
    ``num_prefix_tokens`` prefix tokens and an ``H x W`` patch grid (``grid_size``, int for
    square), e.g. ``create_attention("favor-rpe", 192, 3, (14, 14), nb_features=64)``.

    ``forward(x)`` maps ``[B, P + H*W, dim]`` to the same shape; ``forward(x, grid_size=(h, w))``
    changes resolution (RPE tables clamp offsets beyond the built grid, gates clamp coordinates,
    RoPE/STRING/FRPE evaluate anywhere; Linformer refuses). Options are ``create_model``'s kernel
    and position options plus ``qk_norm``, checked the same way; backbone-only options (pool, ape,
    dropout, emb_dropout) are refused. Weights get the ViT initialisation of ``create_model``.
    """
    return GridAttention.from_name(name, dim, heads, grid_size, num_prefix_tokens, **options)
