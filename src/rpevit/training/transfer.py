"""Resolution transfer: test accuracy of a trained model on its test images resized."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from rpevit.data import DatasetSpec, InMemoryLoader, Split
from rpevit.data.augment import BatchTransform
from rpevit.errors import ConfigError, one_line
from rpevit.metrics import classification_metrics
from rpevit.training.inference import predict

#: How images are brought to another resolution by ``evaluate(image_sizes=...)``.
RESIZE_MODES = ("pad", "upscale")


def check_resize_mode(mode: str) -> None:
    if mode not in RESIZE_MODES:
        raise ConfigError(f"unknown resize mode {mode!r}; choose one of {', '.join(RESIZE_MODES)}")


def resize_images(images: torch.Tensor, size: int, mode: str, align: int = 1) -> torch.Tensor:
    """``uint8 [N, C, H, W]`` images brought to ``size x size`` for resolution transfer.

    ``pad``: zero-pad around the image (centre-crop if ``size`` is smaller): objects keep their
    pixel size and the canvas grows, natural for MNIST digits on black. The offset of the
    original image is the centring one rounded down to a multiple of ``align`` (the patch
    size), so every patch holds exactly the pixels it held in training and only the token
    positions change. ``upscale``: bilinear resampling of the whole image (antialiased when
    shrinking): objects grow with the canvas, so each patch covers a smaller part of them.
    """
    check_resize_mode(mode)
    h, w = images.shape[-2:]
    if mode == "upscale":
        if (h, w) == (size, size):
            return images
        x = F.interpolate(
            images.float(),
            size=(size, size),
            mode="bilinear",
            align_corners=False,
            antialias=size < min(h, w),
        )
        return x.round_().clamp_(0, 255).to(torch.uint8)
    top, left = ((size - h) // 2 // align) * align, ((size - w) // 2 // align) * align
    return F.pad(images, (left, size - w - left, top, size - h - top))  # negative: crop


def resolution_transfer(
    model: torch.nn.Module,
    test: Split,
    spec: DatasetSpec,
    sizes: Sequence[int],
    mode: str,
    batch_size: int,
    device: torch.device,
) -> list[dict[str, Any]]:
    """Test accuracy / NLL of ``model`` on the test images resized to each of ``sizes``.

    Each position encoding applies its own rule for a grid it was not trained on (APE:
    bicubic interpolation of the table; RPE: offsets beyond the trained range clamped;
    RoPE/STRING: the rotations extrapolate). Models with a fixed token count (Linformer)
    cannot change resolution: that is a ConfigError.
    """
    patch = model.config.patch_size
    bad = [s for s in sizes if s < 1 or s % patch]
    if bad:
        raise ConfigError(
            f"image size(s) {', '.join(map(str, bad))} are not positive multiples of the "
            f"model's patch size {patch}"
        )
    results = []
    for size in sizes:
        split = Split(resize_images(test.images, size, mode, align=patch), test.labels)
        transform = BatchTransform(spec.mean, spec.std)
        loader = InMemoryLoader(split, batch_size, transform, device=device)
        try:
            logits, labels = predict(model, loader)
        except ValueError as e:
            raise ConfigError(
                f"{model.model_name} cannot be evaluated at {size}x{size}: {one_line(e)}"
            ) from e
        scores = classification_metrics(logits, labels, spec.num_classes)
        results.append(
            {
                "image_size": size,
                "patch_tokens": (size // patch) ** 2,
                "test_accuracy": scores["accuracy"],
                "test_top5_accuracy": scores["top5_accuracy"],
                "mean_nll": scores["mean_nll"],
            }
        )
    return results
