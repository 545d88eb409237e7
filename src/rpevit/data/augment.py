"""Batched, vectorised augmentation and normalisation of image tensors on any device.

Each augmentation is a pure function of the images and explicit per-sample parameters
(testable by hand), a ``draw_*`` function that draws those parameters from a CPU
``torch.Generator``, and a ``random_*`` wrapper doing both. Drawing on the CPU makes the
result depend only on the generator's seed, not on the device the images live on; the
training loader draws once per epoch for every sample of the split, so a sample's
augmentation does not depend on the batch size, the rank or the number of processes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F


def rotate(images: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate each float image ``[B, C, H, W]`` about its centre by ``degrees[b]``.

    Positive angles turn the picture counter-clockwise as displayed (row 0 at the top),
    like ``torchvision``'s ``rotate``; bilinear sampling, zeros outside the image.
    """
    b, _, h, w = images.shape
    rad = degrees.to(device=images.device, dtype=images.dtype) * (math.pi / 180)
    cos, sin = rad.cos(), rad.sin()
    zero = torch.zeros_like(cos)
    # Output pixel -> input pixel, in normalised [-1, 1] coordinates (x right, y down);
    # the h/w factors keep the rotation rigid on non-square images.
    theta = torch.stack(
        [torch.stack([cos, -sin * h / w, zero], -1), torch.stack([sin * w / h, cos, zero], -1)], 1
    )
    grid = F.affine_grid(theta, [b, images.shape[1], h, w], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def draw_rotation(n: int, max_degrees: float, generator: torch.Generator) -> torch.Tensor:
    """``n`` angles drawn uniformly from ``[-max_degrees, max_degrees]``."""
    return (torch.rand(n, generator=generator) * 2 - 1) * max_degrees


def random_rotate(
    images: torch.Tensor, max_degrees: float, generator: torch.Generator
) -> torch.Tensor:
    """Rotate each image by an angle drawn uniformly from ``[-max_degrees, max_degrees]``."""
    return rotate(images, draw_rotation(images.shape[0], max_degrees, generator))


def crop_flip(
    images: torch.Tensor, padding: int, top: torch.Tensor, left: torch.Tensor, flip: torch.Tensor
) -> torch.Tensor:
    """Zero-pad by ``padding`` pixels, take the ``H x W`` window at ``(top[b], left[b])`` of the
    padded image and mirror it horizontally where ``flip[b]``; works on any dtype.

    One ``gather`` over the flattened padded images does every sample's crop and flip at
    once (no Python loop over the batch).
    """
    b, c, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    pw = w + 2 * padding
    dev = images.device
    rows = top.to(dev)[:, None] + torch.arange(h, device=dev)  # [B, H]
    cols = torch.arange(w, device=dev).expand(b, w)
    cols = torch.where(flip.to(dev)[:, None], w - 1 - cols, cols) + left.to(dev)[:, None]  # [B, W]
    index = (rows[:, :, None] * pw + cols[:, None, :]).reshape(b, 1, h * w).expand(b, c, h * w)
    return padded.reshape(b, c, -1).gather(2, index).reshape(b, c, h, w)


def draw_crop_flip(
    n: int, padding: int, generator: torch.Generator, flip: bool = True
) -> dict[str, torch.Tensor]:
    """``top``, ``left`` offsets in ``[0, 2 padding]`` and ``flip`` flags (probability 1/2,
    none unless ``flip``) for ``n`` samples."""
    top = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    left = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5 if flip else torch.zeros(n, dtype=torch.bool)
    return {"top": top, "left": left, "flip": flips}


def random_crop_flip(
    images: torch.Tensor, padding: int, generator: torch.Generator, flip: bool = True
) -> torch.Tensor:
    """Random ``padding``-pixel translation crop (as torchvision's ``RandomCrop(padding=p)``)
    and, if ``flip``, a random horizontal flip with probability 1/2."""
    return crop_flip(images, padding, **draw_crop_flip(images.shape[0], padding, generator, flip))


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``uint8`` (0-255) or float (0-1) images -> float32 ``(x / 255 - mean) / std`` per channel."""
    x = images.float()
    if images.dtype == torch.uint8:
        x = x.div_(255)
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return x.sub_(m).div_(s)


class BatchTransform:
    """Turn a ``uint8`` batch into a normalised float batch, augmenting it if ``train``.

    ``policy`` is ``"rotate"`` (MNIST: random rotation within +-``degrees``) or
    ``"crop_flip"`` (CIFAR: random crop with ``padding`` pixels of zero padding + h-flip).
    :meth:`draw` makes per-sample parameters; calling with ``params`` (indexed like the
    batch) augments, without them it only normalises (evaluation).
    """

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        policy: str | None = None,
        *,
        degrees: float = 10.0,
        padding: int = 4,
    ) -> None:
        if policy not in (None, "rotate", "crop_flip"):
            raise ValueError(f"unknown augmentation policy {policy!r}")
        self.mean, self.std, self.policy = tuple(mean), tuple(std), policy
        self.degrees, self.padding = degrees, padding

    def draw(self, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Augmentation parameters for ``n`` samples (empty without a policy)."""
        if self.policy == "rotate":
            return {"degrees": draw_rotation(n, self.degrees, generator)}
        if self.policy == "crop_flip":
            return draw_crop_flip(n, self.padding, generator)
        return {}

    def __call__(
        self, images: torch.Tensor, params: Mapping[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        if self.policy is None or not params:
            return normalize(images, self.mean, self.std)
        if self.policy == "rotate":
            x = images.float().div_(255) if images.dtype == torch.uint8 else images.float()
            return normalize(rotate(x, params["degrees"]), self.mean, self.std)
        cropped = crop_flip(images, self.padding, params["top"], params["left"], params["flip"])
        return normalize(cropped, self.mean, self.std)
