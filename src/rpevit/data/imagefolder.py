"""Image-folder data sets (class folders, Tiny ImageNet val/): labels, decoding, own spec."""

from __future__ import annotations

from pathlib import Path

import torch

from rpevit.data import formats
from rpevit.data.specs import DatasetSpec, Split
from rpevit.errors import DataCorruptError, DataNotFoundError


def _channel_stats(
    images: torch.Tensor, chunk: int = 4096
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images on the 0-1 scale, accumulated in float64."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for start in range(0, images.shape[0], chunk):
        x = images[start : start + chunk].to(torch.float64).div_(255)
        total += x.sum(dim=(0, 2, 3))
        squares += x.square().sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(1e-12).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())


def _class_names(root: Path, classes: list[str]) -> list[str]:
    """Readable names for class folders from Tiny ImageNet's ``words.txt`` (``wnid<TAB>name,
    synonyms``) if present, else the folder names."""
    words = root / "words.txt"
    if not words.is_file():
        return classes
    table = {}
    for line in words.read_text(errors="replace").splitlines():
        wnid, _, text = line.partition("\t")
        table[wnid.strip()] = text.split(",")[0].strip()
    return [table.get(c) or c for c in classes]


def load_image_folder(
    root: Path, image_size: int, in_chans: int, num_workers: int
) -> tuple[DatasetSpec, Split, Split | None, Split]:
    """Load ``root/train`` plus ``root/val`` and/or ``root/test``.

    Held-out folders either have class sub-folders like ``train/`` or, as in Tiny ImageNet,
    an ``images/`` folder listed in ``val_annotations.txt`` (``file<TAB>class...``); a folder
    with only unlabelled ``images/`` (Tiny ImageNet's ``test/``) is ignored. With two labelled
    held-out folders, they are used as they are; with one, it becomes the test split and
    validation is split off ``train/``.
    """
    where = root.resolve()
    if not (root / "train").is_dir():
        raise DataNotFoundError(
            f"image folder {where} has no train/ folder: put images in {where}/train/<class>/ "
            f"and {where}/test/<class>/ (optionally {where}/val/<class>/)"
        )
    files, labels, classes = formats.list_image_folder(root / "train")
    if not files:
        raise DataNotFoundError(f"no images found under {where / 'train'}/<class>/")
    present = set(labels)
    empty = [c for i, c in enumerate(classes) if i not in present]
    if empty:
        raise DataCorruptError(
            f"class folder(s) without images in {where / 'train'}: {', '.join(empty[:5])} "
            f"(image files end in {', '.join(formats.IMAGE_SUFFIXES)}); remove or fill them"
        )
    index = {name: i for i, name in enumerate(classes)}

    def labelled(folder: Path) -> tuple[list[Path], list[int]] | None:
        annotations = folder / "val_annotations.txt"
        if annotations.is_file():
            paths, names = formats.read_annotations(annotations, folder / "images")
        else:
            paths, sub_labels, sub_classes = formats.list_image_folder(folder)
            if sub_classes == ["images"] and "images" not in index:
                return None  # unlabelled test images
            names = [sub_classes[y] for y in sub_labels]
        unknown = sorted(set(names) - set(index))
        if unknown:
            raise DataCorruptError(f"{folder} has classes not in train/: {', '.join(unknown[:5])}")
        return paths, [index[n] for n in names]

    def load(paths: list[Path], split_labels: list[int]) -> Split:
        images = formats.decode_images(paths, image_size, in_chans, num_workers)
        return Split(torch.from_numpy(images), torch.tensor(split_labels, dtype=torch.int64))

    held_out = [labelled(root / n) for n in ("val", "test") if (root / n).is_dir()]
    held_out = [h for h in held_out if h is not None and h[0]]
    if not held_out:
        raise DataNotFoundError(
            f"image folder {where} needs a labelled test/ (or val/) folder: class sub-folders, "
            "or images/ with val_annotations.txt"
        )
    train = load(files, labels)
    val = load(*held_out[0]) if len(held_out) == 2 else None
    test = load(*held_out[-1])
    mean, std = _channel_stats(train.images)
    spec = DatasetSpec(
        "imagefolder",
        len(classes),
        in_chans,
        image_size,
        mean,
        std,
        max(1, len(train) // 10),
        "crop_flip",
        tuple(_class_names(root, classes)),
    )
    return spec, train, val, test
