"""Model backbones."""

from rpevit.models.vit import ViTConfig, VisionTransformer

__all__ = ["ViTConfig", "VisionTransformer"]
