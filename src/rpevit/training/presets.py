"""Presets: architecture and optimisation per data set, one base plus per-data-set overrides."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rpevit.data import DATASETS


def _preset(base: Mapping[str, Any], **overrides: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """A preset: ``base`` for every known data set, updated by that data set's ``overrides``."""
    return {dataset: {**base, **overrides.get(dataset, {})} for dataset in DATASETS}


#: Architecture and optimisation of the ``paper`` preset (the reported setting) on CIFAR.
_PAPER = dict(
    patch_size=4, dim=256, depth=6, heads=8, mlp_dim=512,
    epochs=100, batch_size=128, lr=1e-3, weight_decay=0.05, warmup_epochs=5.0,
)  # fmt: skip
#: ``quick``: sized for a 2-core CPU (on MNIST, 16 tokens of 7x7 patches, relu-ape reaches
#: 97.5% test accuracy in 5 epochs of ~20 s each on one core).
_QUICK = dict(
    patch_size=4, dim=64, depth=3, heads=4, mlp_dim=128,
    epochs=5, batch_size=128, lr=2e-3, weight_decay=0.05, warmup_epochs=0.5,
)  # fmt: skip
#: Image folders (typically larger images) use 8-pixel patches in every preset.
_FOLDER = dict(patch_size=8)

#: Architecture and optimisation per preset and data set. ``study``: the ``quick`` model at
#: patch 4 everywhere (MNIST: 49 tokens, like CIFAR-10's 64), 3 epochs at lr 3e-3, sized so
#: each 15-variant x 3-seed grid fits ~100 min on 2 cores; chosen on the validation split
#: (README).
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "paper": _preset(_PAPER, mnist=dict(epochs=20, warmup_epochs=1.0), imagefolder=_FOLDER),
    "quick": _preset(_QUICK, mnist=dict(patch_size=7, warmup_epochs=0.3), imagefolder=_FOLDER),
    "study": _preset(
        {**_QUICK, "epochs": 3, "lr": 3e-3, "warmup_epochs": 0.3}, imagefolder=_FOLDER
    ),
}

#: Minimum optimiser steps per preset when the epochs come from the preset: a small training
#: set (e.g. an image folder of ~1,000 images, a few steps per epoch) gets more epochs instead
#: of a schedule too short to learn anything (:func:`apply_min_steps`).
MIN_STEPS = {"paper": 5000, "quick": 1500, "study": 1000}
