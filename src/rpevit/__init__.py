"""Efficient-RPE-ViT: Vision Transformers with exact softmax, FAVOR+ and ReLU linear attention,
combined with absolute, kernelized-relative, Circulant-STRING and 2D RoPE position encodings."""

from rpevit.layers import create_attention
from rpevit.registry import create_model, list_available_models

__version__ = "0.1.0"

__all__ = ["__version__", "create_attention", "create_model", "list_available_models"]
