"""Model registry: ``<kernel>-<position>`` names mapped to constructors.

Adding a kernel or a position encoding is one class plus one line in ``KERNELS``/``POSITIONS``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
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
from rpevit.option_types import FLAG, OptionType, check_option, choice, fraction, integer, positive
from rpevit.positions import AbsoluteOnly, CirculantString, KernelizedRPE, PositionEncoding, Rope2D
from rpevit.positions.frpe import DEFAULT_TERMS, FourierRPE
from rpevit.positions.gates import PositionGate


@dataclass(frozen=True)
class LayerShape:
    """What a kernel or position constructor needs to know about its attention layer."""

    heads: int
    head_dim: int
    grid_size: tuple[int, int]
    num_prefix: int

    @classmethod
    def of(cls, config: ViTConfig) -> LayerShape:
        """The shape of every attention layer of a ViT with ``config``."""
        return cls(config.heads, config.head_dim, config.grid_size, int(config.pool == "cls"))


def _linformer(shape: LayerShape, shared: dict, linformer_k=64, linformer_sharing="none"):
    num_tokens = shape.grid_size[0] * shape.grid_size[1] + shape.num_prefix
    if linformer_sharing == "layerwise" and "linformer" not in shared:
        shared["linformer"] = SequenceProjection(num_tokens, linformer_k)
    return LinformerKernel(num_tokens, linformer_k, linformer_sharing, shared.get("linformer"))


#: kernel name -> (constructor(shape, shared, **options), options it accepts), ``shape`` a
#: :class:`LayerShape`. ``shared`` is one dict per model, for modules that several layers share.
KERNELS: dict[str, tuple[Callable[..., AttentionKernel], tuple[str, ...]]] = {
    "softmax": (lambda shape, shared: SoftmaxKernel(), ()),
    "favor": (
        lambda shape, shared, **o: FavorKernel(shape.head_dim, **o),
        ("nb_features", "redraw_interval", "redraw_stop", "rpe_method"),
    ),
    "relu": (
        lambda shape, shared, **o: ReluKernel(shape.head_dim, **o),
        ("nb_features", "feature_projection", "rpe_method"),
    ),
    "exp": (lambda shape, shared, **o: ExpKernel(**o), ("rpe_method",)),
    "learnable": (
        lambda shape, shared, **o: LearnableKernel(shape.head_dim, **o),
        ("nb_features", "rpe_method"),
    ),
    "linformer": (_linformer, ("linformer_k", "linformer_sharing")),
}

#: Kernel options that are part of the training recipe: a run's config records them even when
#: they keep their default, so a later change of default cannot pass for the same recipe.
RECIPE_OPTIONS: dict[str, dict[str, Any]] = {
    "favor": {"redraw_interval": DEFAULT_REDRAW_INTERVAL, "redraw_stop": DEFAULT_REDRAW_STOP},
}

#: position name -> (constructor(shape, **options), options it accepts)
POSITIONS: dict[str, tuple[Callable[..., PositionEncoding], tuple[str, ...]]] = {
    "ape": (lambda shape: AbsoluteOnly(), ()),
    "rpe": (lambda shape: KernelizedRPE(shape.heads, shape.grid_size), ()),
    "frpe": (
        lambda shape, frpe_terms=DEFAULT_TERMS: FourierRPE(
            shape.heads, shape.grid_size, frpe_terms
        ),
        ("frpe_terms",),
    ),
    "string": (
        lambda shape, string_base=100.0: CirculantString(shape.head_dim, shape.heads, string_base),
        ("string_base",),
    ),
    "rope": (
        lambda shape, rope_mode="axial", rope_base=100.0: Rope2D(
            shape.head_dim, shape.heads, rope_mode, rope_base
        ),
        ("rope_mode", "rope_base"),
    ),
    "rope-axial": (
        lambda shape, rope_base=100.0: Rope2D(shape.head_dim, shape.heads, "axial", rope_base),
        ("rope_base",),
    ),
    "rope-mixed": (
        lambda shape, rope_base=100.0: Rope2D(shape.head_dim, shape.heads, "mixed", rope_base),
        ("rope_base",),
    ),
    "irpe-gate": (lambda shape: PositionGate(shape.heads, shape.grid_size, 1), ()),
    "string-gate": (
        lambda shape: PositionGate(shape.heads, shape.grid_size, shape.head_dim),
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
BACKBONE_OPTIONS = ("pool", "ape", "qk_norm", "qk_temperature", "dropout", "emb_dropout")

#: The expected type and values of every option, backbone, kernel and position alike (checked by
#: :func:`resolve_variant`; see :mod:`rpevit.option_types`).
OPTION_TYPES: dict[str, OptionType] = {
    "pool": choice("cls", "mean"),
    "ape": FLAG,
    "qk_norm": FLAG,
    "qk_temperature": positive(),
    "dropout": fraction(upper_open=True),
    "emb_dropout": fraction(upper_open=True),
    "nb_features": integer(1),
    "redraw_interval": integer(0),
    "redraw_stop": fraction(),
    "rpe_method": choice("auto", "quadratic", "fft"),
    "feature_projection": choice("identity", "learned"),
    "linformer_k": integer(1),
    "linformer_sharing": choice("none", "key-value", "layerwise"),
    "frpe_terms": integer(1),
    "string_base": positive(),
    "rope_mode": choice("axial", "mixed"),
    "rope_base": positive(),
}


@dataclass(frozen=True)
class Variant:
    """A registered ``<kernel>-<position>`` name with its checked options, split by the part of
    the model they configure; builds the kernel and position encoding of one layer."""

    name: str
    kernel: str
    position: str
    backbone: dict[str, Any]
    kernel_options: dict[str, Any]
    position_options: dict[str, Any]

    def make_kernel(self, shape: LayerShape, shared: dict) -> AttentionKernel:
        """The kernel of a layer of ``shape``; ``shared`` holds modules shared across layers."""
        return KERNELS[self.kernel][0](shape, shared, **self.kernel_options)

    def make_position(self, shape: LayerShape) -> PositionEncoding:
        """The position encoding of a layer of ``shape``."""
        return POSITIONS[self.position][0](shape, **self.position_options)


def resolve_variant(
    name: str, options: Mapping[str, Any], backbone_keys: tuple[str, ...] = BACKBONE_OPTIONS
) -> Variant:
    """Parse ``name`` and check ``options`` against it: options that do not apply, or of the
    wrong type or value, raise a one-line ValueError. ``backbone_keys`` are the non-kernel,
    non-position options accepted; None kernel/position options mean "default" (dropped)."""
    kernel, position = parse_model_name(name)
    kernel_keys, position_keys = KERNELS[kernel][1], POSITIONS[position][1]
    unknown = set(options) - set(backbone_keys) - set(kernel_keys) - set(position_keys)
    if unknown:
        valid = sorted(set(backbone_keys) | set(kernel_keys) | set(position_keys))
        raise ValueError(
            f"option(s) {', '.join(sorted(unknown))} do not apply to model {name!r}; "
            f"valid options: {', '.join(valid)}"
        )
    for key, value in options.items():
        if value is not None or key in backbone_keys:
            check_option(key, value, OPTION_TYPES[key])

    def pick(keys: tuple[str, ...]) -> dict[str, Any]:
        return {k: v for k, v in options.items() if k in keys and v is not None}

    backbone = {k: v for k, v in options.items() if k in backbone_keys}
    if "qk_temperature" in backbone and not backbone.get("qk_norm"):
        raise ValueError(
            "qk_temperature is the initial temperature of qk_norm; pass qk_norm=True as well"
        )
    return Variant(name, kernel, position, backbone, pick(kernel_keys), pick(position_keys))


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


def to_pair(size: int | tuple[int, int] | list[int], what: str) -> tuple[int, int]:
    """``(size, size)`` for an int, else the pair itself; ValueError unless two positive ints."""
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in pair):
        raise ValueError(f"{what} must be a positive int or (height, width), got {size!r}")
    return pair  # type: ignore[return-value]


def check_positive(sizes: Mapping[str, Any]) -> None:
    """ValueError naming the first of ``sizes`` that is not a positive integer."""
    for key, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{key} must be a positive integer, got {value!r}")


def check_heads(dim: int, heads: int) -> None:
    """ValueError unless ``dim`` splits into ``heads`` equal heads."""
    if dim % heads:
        raise ValueError(f"dim {dim} is not divisible by heads {heads}; choose dim = heads * k")


def build_config(
    image_size: int | tuple[int, int] | list[int], sizes: dict[str, Any], backbone: dict[str, Any]
) -> ViTConfig:
    """Validated ``ViTConfig`` from the image size, the other required ``sizes`` (in_chans,
    num_classes, patch_size, dim, depth, heads, mlp_dim) and ``backbone`` options; impossible
    sizes raise ValueError saying what to change."""
    image_size = to_pair(image_size, "image_size")
    check_positive(sizes)
    patch_size = sizes["patch_size"]
    if image_size[0] % patch_size or image_size[1] % patch_size:
        raise ValueError(
            f"image size {image_size[0]}x{image_size[1]} is not divisible by patch size "
            f"{patch_size}; choose a patch size that divides both sides"
        )
    check_heads(sizes["dim"], sizes["heads"])
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

    Options: backbone ``pool`` ("cls"/"mean"), ``ape`` (bool), ``qk_norm`` and
    ``qk_temperature`` (its initial temperature, default 4), ``dropout``,
    ``emb_dropout``; kernel ``nb_features``, ``redraw_interval``, ``redraw_stop``,
    ``feature_projection``, ``rpe_method``, ``linformer_k``, ``linformer_sharing``; position
    ``rope_mode`` ("axial"/"mixed"), ``rope_base``, ``string_base``, ``frpe_terms`` (cosine
    terms per head of the Fourier RPE, >= 1).
    Options that do not apply to the chosen kernel/position, or of the wrong type or value
    (:data:`OPTION_TYPES`), are rejected with a one-line ValueError.
    """
    variant = resolve_variant(name, options)
    sizes = dict(
        in_chans=in_chans,
        num_classes=num_classes,
        patch_size=patch_size,
        dim=dim,
        depth=depth,
        heads=heads,
        mlp_dim=mlp_dim,
    )
    config = build_config(image_size, sizes, variant.backbone)
    shape = LayerShape.of(config)
    shared: dict = {}
    return VisionTransformer(
        config,
        lambda: variant.make_kernel(shape, shared),
        lambda: variant.make_position(shape),
        name=name,
        options=options,
    )
