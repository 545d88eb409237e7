"""Model backbones."""

from rpevit.models.vit import VisionTransformer, ViTConfig

__all__ = ["ViTConfig", "VisionTransformer"]
