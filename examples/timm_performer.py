"""A timm ViT turned into Performer ViTs with relative position encodings, on CIFAR-10.

Builds a small timm ``VisionTransformer`` (no download), trains it briefly with its own softmax
attention, converts copies to ``favor-rpe`` and ``relu-string`` with
:func:`rpevit.integrations.timm.convert_vit`, and prints each model's test accuracy right after
conversion and after a short fine-tuning (the softmax model trains for as many steps, as the
reference). Runs in a few minutes on one CPU thread::

    python examples/timm_performer.py --threads 1

Needs the ``timm`` extra (``pip install efficient-rpe-vit[timm]``) and CIFAR-10 in
``--data-dir`` (the binary or Python version; ``--download`` fetches it).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import os
import time
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from rpevit.data import ImageDataModule, InMemoryLoader
from rpevit.integrations.timm import convert_vit
from rpevit.training.module import param_groups, warmup_cosine

#: The converted variants and their options (no FAVOR+ redraw: fine-tuning is short).
TARGETS = {"favor-rpe": dict(nb_features=64, redraw_interval=0), "relu-string": {}}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_data = os.environ.get("RPEVIT_DATA_DIR", "/work/shared/data")
    parser.add_argument("--data-dir", default=default_data, help="folder holding CIFAR-10")
    parser.add_argument("--download", action="store_true", help="download CIFAR-10 if missing")
    parser.add_argument("--pretrain-steps", type=int, default=500, help="softmax steps")
    parser.add_argument("--finetune-steps", type=int, default=300, help="steps after conversion")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate")
    parser.add_argument("--test-samples", type=int, default=2000, help="test images evaluated")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def small_vit() -> nn.Module:
    """A CIFAR-sized timm ViT: 8x8 patches of 4 pixels plus a class token, width 64."""
    return VisionTransformer(
        img_size=32, patch_size=4, num_classes=10, embed_dim=64, depth=3, num_heads=4, mlp_ratio=2
    )


def batches(loader: InMemoryLoader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Training batches without end, a new shuffle and augmentation each epoch."""
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def train(model: nn.Module, data: ImageDataModule, steps: int, lr: float) -> float:
    """``steps`` AdamW steps (warm-up, cosine decay; no decay of position parameters);
    returns the seconds they took."""
    model.train()
    optimizer = torch.optim.AdamW(param_groups(model, 0.05), lr=lr)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, warmup, steps, 0.01)
    )
    start = time.perf_counter()
    for images, labels in itertools.islice(batches(data.loader("train", train=True)), steps):
        loss = F.cross_entropy(model(images), labels, label_smoothing=0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
    return time.perf_counter() - start


@torch.no_grad()
def accuracy(model: nn.Module, data: ImageDataModule) -> float:
    """Top-1 accuracy on the test images."""
    model.eval()
    correct = total = 0
    for images, labels in data.loader("test"):
        correct += (model(images).argmax(-1) == labels).sum().item()
        total += len(labels)
    return correct / total


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    data = ImageDataModule(
        "cifar10", args.data_dir, batch_size=args.batch_size, eval_batch_size=500,
        seed=args.seed, download=args.download, max_test_samples=args.test_samples,
    )  # fmt: skip
    model = small_vit()
    seconds = train(model, data, args.pretrain_steps, args.lr)
    print(f"softmax pre-training: {args.pretrain_steps} steps in {seconds:.0f} s")
    rows = [("softmax (timm model as trained)", model, accuracy(model, data))]
    for name, options in TARGETS.items():
        converted = convert_vit(copy.deepcopy(model), name, **options)
        rows.append((name, converted, accuracy(converted, data)))
    n = args.finetune_steps
    print(f"\n| model | test acc. after conversion | after {n} more steps | fine-tune s |")
    print("|---|---:|---:|---:|")
    for name, candidate, before in rows:
        seconds = train(candidate, data, n, args.lr / 2)
        after = accuracy(candidate, data)
        print(f"| {name} | {before:.3f} | {after:.3f} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
