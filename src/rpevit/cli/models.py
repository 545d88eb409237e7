"""``rpevit models``: every registered variant with its parameters and FLOPs per image."""

from __future__ import annotations

import argparse

from rpevit.flops import count_flops
from rpevit.registry import create_model, list_available_models, parse_model_name


def add_models_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``rpevit models``: which variants, and the image and model sizes."""
    parser.add_argument("--models", default="all", help="'all' or a comma-separated list")
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--in-chans", type=int, default=1)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--patch-size", type=int, default=4)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--mlp-dim", type=int, default=512)


def run_models(args: argparse.Namespace) -> int:
    """Print every registered variant with its parameter count and forward FLOPs per image."""
    names = list_available_models() if args.models == "all" else args.models.split(",")
    for name in names:
        parse_model_name(name)
    size = dict(
        image_size=args.image_size,
        in_chans=args.in_chans,
        num_classes=args.num_classes,
        patch_size=args.patch_size,
        dim=args.dim,
        depth=args.depth,
        heads=args.heads,
        mlp_dim=args.mlp_dim,
    )
    tokens = (args.image_size // args.patch_size) ** 2
    print(
        f"{len(names)} models at image {args.in_chans}x{args.image_size}x{args.image_size}, "
        f"patch {args.patch_size} ({tokens} patch tokens), dim {args.dim}, depth {args.depth}, "
        f"heads {args.heads}, MLP {args.mlp_dim}"
    )
    width = max(len(name) for name in [*names, "model"])
    print(f"| {'model':<{width}} | {'parameters':>10} | {'MFLOPs/image':>12} |")
    print(f"| {'-' * width} | {'-' * 10}:| {'-' * 12}:|")
    for name in names:
        model = create_model(name, **size)
        params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        flops = count_flops(model, (args.in_chans, args.image_size, args.image_size))
        print(f"| {name:<{width}} | {params:>10,} | {flops / 1e6:>12.1f} |")
    return 0
