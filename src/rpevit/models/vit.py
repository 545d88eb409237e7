"""Vision Transformer backbone: patch embedding, CLS token or mean pooling, learned absolute
position embedding, pre-norm blocks whose attention composes a kernel and a position encoding."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rpevit.attention.kernels import AttentionKernel
from rpevit.attention.module import Attention
from rpevit.positions.base import PositionEncoding, TokenGrid


@dataclass(frozen=True)
class ViTConfig:
    """Architecture of one model; everything needed to rebuild it from a checkpoint."""

    image_size: tuple[int, int]
    patch_size: int
    in_chans: int
    num_classes: int
    dim: int
    depth: int
    heads: int
    mlp_dim: int
    pool: str = "cls"
    ape: bool = True
    qk_norm: bool = False
    qk_temperature: float = 4.0
    dropout: float = 0.0
    emb_dropout: float = 0.0

    @property
    def grid_size(self) -> tuple[int, int]:
        return self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads


def init_transformer_weights(root: nn.Module) -> None:
    """ViT initialisation of ``root``'s linears (truncated-normal 0.02, zero biases) and layer
    norms (1, 0). Attention kernels keep their own initialisation (e.g. the ReLU kernel's
    orthogonal feature projection): 0.02 would shrink features to ~1e-3."""
    kernel_parts = {
        id(part)
        for kernel in root.modules()
        if isinstance(kernel, AttentionKernel)
        for part in kernel.modules()
    }
    for module in root.modules():
        if id(module) in kernel_parts:
            continue
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class MLP(nn.Sequential):
    """Two-layer GELU feed-forward network."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__(
            nn.Linear(dim, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, dim),
            nn.Dropout(dropout),
        )


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``."""

    def __init__(self, config: ViTConfig, attention: Attention) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(config.dim)
        self.attn = attention
        self.norm2 = nn.LayerNorm(config.dim)
        self.mlp = MLP(config.dim, config.mlp_dim, config.dropout)

    def forward(self, x: Tensor, grid: TokenGrid) -> Tensor:
        x = x + self.attn(self.norm1(x), grid)
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """ViT classifier ``images[B, C, H, W] -> logits[B, num_classes]``.

    ``make_kernel`` and ``make_position`` build one kernel and one position encoding per layer;
    ``name`` and ``options`` (kept as ``model_name`` / ``model_options``) are the registry name
    and options it was built from, which messages and checkpoints refer to. Inputs of another
    size than ``config.image_size`` (still divisible by the patch size) are accepted: the APE
    grid is resized bicubically and relative encodings use their own rule.
    """

    def __init__(
        self,
        config: ViTConfig,
        make_kernel: Callable[[], AttentionKernel],
        make_position: Callable[[], PositionEncoding],
        *,
        name: str,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.model_name = name
        self.model_options = dict(options or {})
        grid_h, grid_w = config.grid_size
        self.patch_embed = nn.Conv2d(
            config.in_chans, config.dim, config.patch_size, stride=config.patch_size
        )
        self.cls_token = (
            nn.Parameter(torch.zeros(1, 1, config.dim)) if config.pool == "cls" else None
        )
        self.pos_embed = (
            nn.Parameter(torch.zeros(1, grid_h * grid_w, config.dim)) if config.ape else None
        )
        self.emb_dropout = nn.Dropout(config.emb_dropout)
        self.blocks = nn.ModuleList(
            Block(
                config,
                Attention(
                    config.dim,
                    config.heads,
                    make_kernel(),
                    make_position(),
                    config.qk_norm,
                    config.dropout,
                    config.qk_temperature,
                ),
            )
            for _ in range(config.depth)
        )
        self.norm = nn.LayerNorm(config.dim)
        self.head = nn.Linear(config.dim, config.num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """ViT initialisation (:func:`init_transformer_weights`), embeddings truncated-normal
        (0.02), fan-in scaled patch embedding."""
        init_transformer_weights(self)
        w = self.patch_embed.weight
        nn.init.trunc_normal_(w.view(w.shape[0], -1), std=(1.0 / w[0].numel()) ** 0.5)
        nn.init.zeros_(self.patch_embed.bias)
        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)

    @property
    def feature_count(self) -> int | None:
        """Features per head ``m`` of the attention kernel (None: softmax, Linformer, EXP)."""
        return self.blocks[0].attn.kernel.feature_count

    def token_grid(self, height: int, width: int) -> TokenGrid:
        """Grid of an input image of ``height x width`` pixels (checked against the patch size)."""
        p = self.config.patch_size
        if height % p or width % p:
            raise ValueError(
                f"image size {height}x{width} is not divisible by the patch size {p}; "
                f"resize or pad the images to a multiple of {p}"
            )
        return TokenGrid(height // p, width // p, 1 if self.cls_token is not None else 0)

    def _position_embedding(self, grid: TokenGrid) -> Tensor:
        h0, w0 = self.config.grid_size
        if (grid.height, grid.width) == (h0, w0):
            return self.pos_embed
        table = self.pos_embed.reshape(1, h0, w0, -1).permute(0, 3, 1, 2)
        table = F.interpolate(
            table, size=(grid.height, grid.width), mode="bicubic", align_corners=False
        )
        return table.permute(0, 2, 3, 1).reshape(1, grid.num_patches, -1)

    def forward_features(self, images: Tensor) -> Tensor:
        """Final normalised token representations ``[B, P+N, dim]``."""
        if images.ndim != 4 or images.shape[1] != self.config.in_chans:
            raise ValueError(
                f"expected images of shape [B, {self.config.in_chans}, H, W], got "
                f"{list(images.shape)}; check the dataset's channels against --in-chans"
            )
        grid = self.token_grid(images.shape[-2], images.shape[-1])
        x = self.patch_embed(images).flatten(2).transpose(1, 2)
        if self.pos_embed is not None:
            x = x + self._position_embedding(grid)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.emb_dropout(x)
        for block in self.blocks:
            x = block(x, grid)
        return self.norm(x)

    def forward(self, images: Tensor) -> Tensor:
        x = self.forward_features(images)
        pooled = x[:, 0] if self.cls_token is not None else x.mean(dim=1)
        return self.head(pooled)
