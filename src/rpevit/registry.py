"""Model registry: ``<kernel>-<position>`` names mapped to constructors.

Adding a kernel or a position encoding is one class plus one line in ``KERNELS``/``POSITIONS``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from rpevit.attention.kernels import (
    DEFAULT_REDRAW_INTERVAL,
    DEFAULT_REDRAW_STOP,
    AttentionKernel,
    ExpKernel,
    FavorKernel,
    LearnableKernel,
    ReluKernel,
    SoftmaxKernel,
)
from rpevit.attention.linformer import LinformerKernel, SequenceProjection
from rpevit.models.vit import VisionTransformer, ViTConfig
from rpevit.positions import AbsoluteOnly, CirculantString, KernelizedRPE, PositionEncoding, Rope2D
from rpevit.positions.frpe import DEFAULT_TERMS, FourierRPE
from rpevit.positions.gates import PositionGate


def _linformer(config: ViTConfig, shared: dict, linformer_k=64, linformer_sharing="none"):
    num_tokens = config.grid_size[0] * config.grid_size[1] + (config.pool == "cls")
    if linformer_sharing == "layerwise" and "linformer" not in shared:
        shared["linformer"] = SequenceProjection(num_tokens, linformer_k)
    return LinformerKernel(num_tokens, linformer_k, linformer_sharing, shared.get("linformer"))


#: kernel name -> (constructor(config, shared, **options), options it accepts). ``shared`` is
#: one dict per model, for modules that several layers share.
KERNELS: dict[str, tuple[Callable[..., AttentionKernel], tuple[str, ...]]] = {
    "softmax": (lambda config, shared: SoftmaxKernel(), ()),
    "favor": (
        lambda config, shared, **o: FavorKernel(config.head_dim, **o),
        ("nb_features", "redraw_interval", "redraw_stop", "rpe_method"),
    ),
    "relu": (
        lambda config, shared, **o: ReluKernel(config.head_dim, **o),
        ("nb_features", "feature_projection", "rpe_method"),
    ),
    "exp": (lambda config, shared, **o: ExpKernel(**o), ("rpe_method",)),
    "learnable": (
        lambda config, shared, **o: LearnableKernel(config.head_dim, **o),
        ("nb_features", "rpe_method"),
    ),
    "linformer": (_linformer, ("linformer_k", "linformer_sharing")),
}

#: Kernel options that are part of the training recipe: a run's config records them even when
#: they keep their default, so a later change of default cannot pass for the same recipe.
RECIPE_OPTIONS: dict[str, dict[str, Any]] = {
    "favor": {"redraw_interval": DEFAULT_REDRAW_INTERVAL, "redraw_stop": DEFAULT_REDRAW_STOP},
}

#: position name -> (constructor(config, **options), options it accepts)
POSITIONS: dict[str, tuple[Callable[..., PositionEncoding], tuple[str, ...]]] = {
    "ape": (lambda config: AbsoluteOnly(), ()),
    "rpe": (lambda config: KernelizedRPE(config.heads, config.grid_size), ()),
    "frpe": (
        lambda config, frpe_terms=DEFAULT_TERMS: FourierRPE(
            config.heads, config.grid_size, frpe_terms
        ),
        ("frpe_terms",),
    ),
    "string": (
        lambda config, string_base=100.0: CirculantString(
            config.head_dim, config.heads, string_base
        ),
        ("string_base",),
    ),
    "rope": (
        lambda config, rope_mode="axial", rope_base=100.0: Rope2D(
            config.head_dim, config.heads, rope_mode, rope_base
        ),
        ("rope_mode", "rope_base"),
    ),
    "rope-axial": (
        lambda config, rope_base=100.0: Rope2D(config.head_dim, config.heads, "axial", rope_base),
        ("rope_base",),
    ),
    "rope-mixed": (
        lambda config, rope_base=100.0: Rope2D(config.head_dim, config.heads, "mixed", rope_base),
        ("rope_base",),
    ),
    "irpe-gate": (lambda config: PositionGate(config.heads, config.grid_size, 1), ()),
    "string-gate": (
        lambda config: PositionGate(config.heads, config.grid_size, config.head_dim),
        (),
    ),
}

#: Kernel/position pairs that do not make sense (Linformer mixes tokens: no pairwise RPE).
INCOMPATIBLE = {("linformer", "rpe"), ("linformer", "frpe")}

#: The study's attention kernels: exact softmax, then the linear-time Performer kernels.
CORE_KERNELS = ("softmax", "favor", "relu")

#: The study's linear-time kernels, each compared against softmax.
PERFORMER_KERNELS = CORE_KERNELS[1:]

#: Position encodings of the core variants: absolute only, then the relative ones.
CORE_POSITIONS = ("ape", "rpe", "string", "rope")

#: The study's relative position encodings: the core ones and the linear-cost Fourier RPE.
RELATIVE_POSITIONS = (*CORE_POSITIONS[1:], "frpe")

#: The study's 12 core variants: {softmax, favor, relu} x {ape, rpe, string, rope}.
CORE_MODELS = [f"{kernel}-{position}" for kernel in CORE_KERNELS for position in CORE_POSITIONS]

#: The study's rows: the 12 core variants plus the linear-cost Fourier RPE for each kernel, so
#: the study can set linear-cost RPE beside the exact one.
STUDY_MODELS = CORE_MODELS + [f"{kernel}-frpe" for kernel in CORE_KERNELS]

#: Options of the backbone itself (``ViTConfig`` fields beyond the required sizes).
BACKBONE_OPTIONS = ("pool", "ape", "qk_norm", "dropout", "emb_dropout")


def list_available_models() -> list[str]:
    """All registered model names, ``<kernel>-<position>``: the 12 core variants first."""
    extra = [
        f"{kernel}-{position}"
        for kernel in KERNELS
        for position in POSITIONS
        if (kernel, position) not in INCOMPATIBLE
    ]
    return CORE_MODELS + [name for name in extra if name not in CORE_MODELS]


def parse_model_name(name: str) -> tuple[str, str]:
    """Split ``<kernel>-<position>``; ValueError naming the valid choices otherwise."""
    kernel, _, position = name.partition("-")
    if kernel not in KERNELS or position not in POSITIONS or (kernel, position) in INCOMPATIBLE:
        raise ValueError(
            f"unknown model {name!r}; available models: {', '.join(list_available_models())}"
        )
    return kernel, position


def _to_pair(size: int | tuple[int, int] | list[int], what: str) -> tuple[int, int]:
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or any(not isinstance(s, int) or s < 1 for s in pair):
        raise ValueError(f"{what} must be a positive int or (height, width), got {size!r}")
    return pair  # type: ignore[return-value]


def build_config(
    image_size: int | tuple[int, int] | list[int], sizes: dict[str, Any], backbone: dict[str, Any]
) -> ViTConfig:
    """Validated ``ViTConfig`` from the image size, the other required ``sizes`` (in_chans,
    num_classes, patch_size, dim, depth, heads, mlp_dim) and ``backbone`` options; impossible
    sizes raise ValueError saying what to change."""
    image_size = _to_pair(image_size, "image_size")
    for key, value in sizes.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{key} must be a positive integer, got {value!r}")
    patch_size, dim, heads = sizes["patch_size"], sizes["dim"], sizes["heads"]
    if image_size[0] % patch_size or image_size[1] % patch_size:
        raise ValueError(
            f"image size {image_size[0]}x{image_size[1]} is not divisible by patch size "
            f"{patch_size}; choose a patch size that divides both sides"
        )
    if dim % heads:
        raise ValueError(f"dim {dim} is not divisible by heads {heads}; choose dim = heads * k")
    if backbone.get("pool", "cls") not in ("cls", "mean"):
        raise ValueError(f"pool must be 'cls' or 'mean', got {backbone['pool']!r}")
    for key in ("dropout", "emb_dropout"):
        if not 0.0 <= backbone.get(key, 0.0) < 1.0:
            raise ValueError(f"{key} must be in [0, 1), got {backbone[key]!r}")
    return ViTConfig(image_size=image_size, **sizes, **backbone)


def create_model(
    name: str,
    *,
    image_size: int | tuple[int, int],
    in_chans: int,
    num_classes: int,
    patch_size: int,
    dim: int,
    depth: int,
    heads: int,
    mlp_dim: int,
    **options: Any,
) -> nn.Module:
    """Build a registered ViT variant, e.g. ``create_model("favor-rope", image_size=28, ...)``.

    Options: backbone ``pool`` ("cls"/"mean"), ``ape`` (bool), ``qk_norm``, ``dropout``,
    ``emb_dropout``; kernel ``nb_features``, ``redraw_interval``, ``feature_projection``,
    ``rpe_method``, ``linformer_k``, ``linformer_sharing``; position ``rope_mode``
    ("axial"/"mixed"), ``rope_base``, ``string_base``, ``frpe_terms`` (cosine terms per head of
    the Fourier RPE, >= 1).
    Options that do not apply to the chosen kernel/position are rejected.
    """
    kernel_name, position_name = parse_model_name(name)
    make_kernel, kernel_keys = KERNELS[kernel_name]
    make_position, position_keys = POSITIONS[position_name]
    unknown = set(options) - set(BACKBONE_OPTIONS) - set(kernel_keys) - set(position_keys)
    if unknown:
        valid = sorted(set(BACKBONE_OPTIONS) | set(kernel_keys) | set(position_keys))
        raise ValueError(
            f"option(s) {', '.join(sorted(unknown))} do not apply to model {name!r}; "
            f"valid options: {', '.join(valid)}"
        )
    sizes = dict(
        in_chans=in_chans,
        num_classes=num_classes,
        patch_size=patch_size,
        dim=dim,
        depth=depth,
        heads=heads,
        mlp_dim=mlp_dim,
    )
    backbone = {k: v for k, v in options.items() if k in BACKBONE_OPTIONS}
    config = build_config(image_size, sizes, backbone)
    kernel_opts = {k: v for k, v in options.items() if k in kernel_keys and v is not None}
    position_opts = {k: v for k, v in options.items() if k in position_keys and v is not None}
    shared: dict = {}
    return VisionTransformer(
        config,
        lambda: make_kernel(config, shared, **kernel_opts),
        lambda: make_position(config, **position_opts),
        name=name,
        options=options,
    )
