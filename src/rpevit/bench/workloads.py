"""Benchmark workloads rebuilt from JSON-able specs, so the timing process and the memory
worker subprocess run exactly the same step.

A spec is a dict with ``kind``:
- ``"layer"``: one attention layer (:func:`rpevit.create_attention`, CLS token included) on
  ``[batch, tokens + 1, heads * head_dim]``, forward + backward;
- ``"model"``: a registered ViT on random images, ``mode`` ``"forward"`` (inference),
  ``"train"`` (forward + backward of the cross-entropy) or ``"step"`` (plus an AdamW step).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from rpevit.layers import GridAttention, create_attention
from rpevit.registry import PERFORMER_KERNELS, create_model


def square_grid(tokens: int) -> tuple[int, int]:
    """``(side, side)`` for a square number of patch tokens."""
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise ValueError(f"token counts must be perfect squares (square grids), got {tokens}")
    return side, side


def kernel_options(variant: str, nb_features: int | None, rpe_method: str | None) -> dict:
    """The kernel options the benchmarks set for ``variant`` (None = library default)."""
    kernel = variant.partition("-")[0]
    options = {
        "nb_features": nb_features if kernel == "favor" else None,
        "rpe_method": rpe_method if kernel in PERFORMER_KERNELS else None,
    }
    return {k: v for k, v in options.items() if v is not None}


def build_attention(
    variant: str,
    grid: tuple[int, int],
    heads: int,
    head_dim: int,
    nb_features: int | None = None,
    rpe_method: str | None = None,
    **options: Any,
) -> GridAttention:
    """The attention layer ``create_model(variant, ...)`` puts in its blocks, for an ``H x W``
    patch grid and a CLS token, with the benchmarks' kernel options."""
    return create_attention(
        variant,
        heads * head_dim,
        heads,
        grid,
        **kernel_options(variant, nb_features, rpe_method),
        **options,
    )


def _layer_step(spec: dict[str, Any]) -> Callable[[], None]:
    height, width = square_grid(spec["tokens"])
    layer = build_attention(
        spec["variant"],
        (height, width),
        spec["heads"],
        spec["head_dim"],
        spec.get("nb_features"),
        spec.get("rpe_method"),
    )
    shape = (spec["batch"], layer.grid.num_tokens, spec["heads"] * spec["head_dim"])
    x = torch.randn(shape, requires_grad=True)
    grad = torch.randn(shape)
    run = torch.compile(layer) if spec.get("compile") else layer

    def step() -> None:
        layer.zero_grad(set_to_none=True)
        x.grad = None
        run(x).backward(grad)

    return step


def _model_step(spec: dict[str, Any]) -> Callable[[], None]:
    model = create_model(
        spec["variant"],
        image_size=spec["image_size"],
        in_chans=3,
        num_classes=10,
        patch_size=spec["patch_size"],
        dim=spec["dim"],
        depth=spec["depth"],
        heads=spec["heads"],
        mlp_dim=spec["mlp_dim"],
        **kernel_options(spec["variant"], spec.get("nb_features"), None),
    )
    images = torch.randn(spec["batch"], 3, spec["image_size"], spec["image_size"])
    labels = torch.randint(0, 10, (spec["batch"],))
    run = torch.compile(model) if spec.get("compile") else model
    mode = spec["mode"]
    if mode == "forward":
        model.eval()

        def forward() -> None:
            with torch.inference_mode():
                run(images)

        return forward
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4) if mode == "step" else None

    def train() -> None:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(run(images), labels).backward()
        if optimizer is not None:
            optimizer.step()

    return train


def build_step(spec: dict[str, Any]) -> Callable[[], None]:
    """A zero-argument callable running one step of ``spec`` (seeded by ``spec["seed"]``)."""
    torch.manual_seed(spec.get("seed", 0))
    if spec["kind"] == "layer":
        return _layer_step(spec)
    if spec["kind"] == "model":
        return _model_step(spec)
    raise ValueError(f"unknown workload kind {spec['kind']!r}")
