"""Hostile inputs: each one ends ``rpevit`` with exit code 2 and a one-line, actionable
message, and leaves no partial output behind."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from test_data import make_mnist

from rpevit.atomic import atomic_write
from rpevit.cli import main
from rpevit.errors import OutputError
from rpevit.training import ImageClassifier, resolve_config
from rpevit.training.checkpointing import AtomicCheckpointIO

TINY = ["--patch-size", "7", "--dim", "32", "--depth", "1", "--heads", "2", "--mlp-dim", "64"]
KWARGS = dict(patch_size=7, dim=32, depth=1, heads=2, mlp_dim=64)


def fails(capsys, argv: list[str], *expected: str) -> str:
    """Run the CLI, expect exit code 2 and one stderr line containing every ``expected``."""
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    message = lines[-1]
    assert message.startswith(f"rpevit {argv[0]}: error: "), lines
    assert not [line for line in lines if "Traceback" in line]
    for text in expected:
        assert text in message, message
    return message


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory) -> Path:
    """A small MNIST in the real IDX layout (5,100 training images: room for the val split)."""
    root = tmp_path_factory.mktemp("mnist")
    make_mnist(root, n_train=5_100, n_test=50, compress=False)
    return root


def fake_checkpoint(
    path: Path,
    model: str = "softmax-ape",
    dataset: str = "mnist",
    in_chans: int = 1,
    image_size: int = 28,
    patch_size: int = 7,
    **extra,
) -> Path:
    """A checkpoint in the format ``train`` writes, of an untrained model."""
    sizes = {**KWARGS, "patch_size": patch_size}
    kwargs = dict(image_size=image_size, in_chans=in_chans, num_classes=10, **sizes)
    config = resolve_config({"model": model, "dataset": dataset, "max_test_samples": 20, **sizes})
    module = ImageClassifier(model, kwargs, config=config.to_dict())
    checkpoint = {
        "state_dict": module.state_dict(),
        "hyper_parameters": dict(module.hparams),
        "epoch": 0,
        "global_step": 0,
        **extra,
    }
    torch.save(checkpoint, path)
    return path


def outputs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


# --- names and sizes -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--model", "linear-ape"], ["unknown model 'linear-ape'", "softmax-ape"]),
        (["--model", "relu-ape", "--dataset", "svhn"], ["unknown dataset 'svhn'", "mnist"]),
        (["--model", "relu-ape", "--preset", "huge"], ["unknown preset 'huge'", "quick"]),
        (["--model", "relu-ape", *TINY, "--patch-size", "5"], ["patch size 5 does not divide"]),
        (["--model", "relu-ape", *TINY, "--in-chans", "3"], ["--in-chans can only be chosen"]),
        (["--model", "relu-ape", *TINY, "--image-size", "32"], ["rpevit evaluate RUN"]),
        (["--model", "relu-ape", *TINY, "--dim", "31"], ["dim 31 is not divisible by heads 2"]),
        # out-of-range hyper-parameters
        (["--model", "relu-ape", *TINY, "--lr", "-1"], ["lr must be positive, got -1.0"]),
        (["--model", "relu-ape", *TINY, "--epochs", "0"], ["epochs must be positive"]),
        (["--model", "relu-ape", *TINY, "--batch-size", "0"], ["batch-size must be positive"]),
        (["--model", "relu-ape", *TINY, "--max-train-samples", "0"], ["max-train-samples"]),
        (["--model", "relu-ape", *TINY, "--weight-decay", "-0.1"], ["weight decay"]),
        (["--model", "relu-ape", *TINY, "--label-smoothing", "1"], ["label smoothing"]),
        (["--model", "favor-ape", *TINY, "--nb-features", "0"], ["nb_features must be >= 1"]),
        (["--model", "favor-ape", *TINY, "--redraw-interval", "-1"], ["redraw_interval"]),
        (["--model", "relu-ape", *TINY, "--dropout", "1.5"], ["dropout must be in [0, 1)"]),
        (["--model", "relu-ape", *TINY, "--option", "rope_mode=mixed"], ["do not apply"]),
        (["--model", "relu-ape", *TINY, "--precision", "16-mixed"], ["needs a GPU"]),
    ],
)
def test_bad_training_options(tmp_path, capsys, argv, expected):
    data = ["--data-dir", str(tmp_path / "data"), "--no-download"]  # never reached
    fails(capsys, ["train", *argv, *data, "--out", str(tmp_path / "runs")], *expected)
    assert outputs(tmp_path) == []  # rejected before any file or folder was made


# --- data --------------------------------------------------------------------------------------


def test_truncated_and_corrupt_data_files(tmp_path, capsys):
    make_mnist(tmp_path, n_train=5_100, n_test=20, compress=False)
    raw = tmp_path / "MNIST" / "raw"
    train = ["train", "--model", "relu-ape", *TINY, "--data-dir", str(tmp_path), "--no-download"]
    out = ["--out", str(tmp_path / "runs")]
    # a synthetic MNIST is well-formed but not the published bytes
    fails(capsys, [*train, *out, "--verify-data"], "has MD5", "expected the published")
    images = raw / "t10k-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])
    fails(capsys, [*train, *out], str(images), "is truncated or corrupt")
    images.write_bytes(b"\x00\x00\x99\x03garbage")
    fails(capsys, [*train, *out], "is not an IDX file")
    (raw / "t10k-labels-idx1-ubyte").unlink()
    fails(capsys, [*train, *out], "mnist not found", "MNIST/raw/")
    assert not (tmp_path / "runs").exists()


def write_image_folder(root: Path) -> None:
    from PIL import Image

    for split, per_class in (("train", 3), ("test", 1)):
        for c, name in enumerate(["cat", "dog"]):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(np.full((8, 8, 3), 50 * c + i, np.uint8)).save(folder / f"{i}.png")
            (folder / "notes.txt").write_text("not an image: ignored")


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda r: (r / "train" / "cat" / "0.png").write_text("text"), "cannot decode image"),
        (lambda r: (r / "train" / "emu").mkdir(), "class folder(s) without images"),
        (lambda r: (r / "test" / "dog").rename(r / "test" / "fox"), "classes not in train/: fox"),
        (lambda r: (r / "test" / "dog" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\ncut"), "decode"),
    ],
)
def test_bad_image_folders(tmp_path, capsys, damage, expected):
    root = tmp_path / "images"
    write_image_folder(root)
    damage(root)
    argv = ["train", "--model", "relu-ape", "--dataset", "imagefolder", "--data-dir", str(root)]
    argv += ["--image-size", "8", "--patch-size", "4", "--dim", "16", "--heads", "2"]
    fails(capsys, [*argv, "--out", str(tmp_path / "runs")], expected)
    assert not (tmp_path / "runs").exists()


# --- checkpoints ------------------------------------------------------------------------------


def test_bad_checkpoints(tmp_path, capsys, mnist_dir):
    evaluate = ["evaluate", "--data-dir", str(mnist_dir)]
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    fails(capsys, [*evaluate, str(garbage)], "cannot read checkpoint", str(garbage))

    good = fake_checkpoint(tmp_path / "good.ckpt")
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    fails(capsys, [*evaluate, str(truncated)], "cannot read checkpoint", "or truncated")

    foreign = tmp_path / "foreign.ckpt"
    torch.save({"model": torch.nn.Linear(2, 2).state_dict()}, foreign)
    fails(capsys, [*evaluate, str(foreign)], "is not an rpevit training checkpoint")

    # a pickled object that weights_only=True refuses to load
    unsafe = fake_checkpoint(tmp_path / "unsafe.ckpt", extra_object=OutputError("x"))
    fails(capsys, [*evaluate, str(unsafe)], "rpevit.errors.OutputError", "weights_only=True")

    # weights of one model under another model's name and sizes
    checkpoint = torch.load(good, weights_only=True)
    checkpoint["hyper_parameters"]["model_kwargs"]["dim"] = 64
    checkpoint["hyper_parameters"]["model_kwargs"]["heads"] = 4
    torch.save(checkpoint, tmp_path / "mismatched.ckpt")
    fails(capsys, [*evaluate, str(tmp_path / "mismatched.ckpt")], "does not match its model")

    # a CIFAR model evaluated on MNIST
    cifar = tmp_path / "cifar.ckpt"
    fake_checkpoint(cifar, dataset="cifar10", in_chans=3, image_size=32, patch_size=4)
    fails(
        capsys,
        [*evaluate, str(cifar), "--dataset", "mnist"],
        "model for 3-channel images and 10 classes (trained on cifar10)",
        "mnist has 1-channel images",
    )
    fails(capsys, [*evaluate, str(tmp_path / "missing")], "neither a run folder nor a checkpoint")
    assert not list(tmp_path.glob("*.json"))


def test_bad_resume_and_existing_runs(tmp_path, capsys, mnist_dir):
    run = tmp_path / "runs" / "r"
    (run / "checkpoints").mkdir(parents=True)
    fake_checkpoint(run / "checkpoints" / "last.ckpt")
    train = ["train", "--model", "softmax-ape", *TINY, "--data-dir", str(mnist_dir)]
    train += ["--out", str(tmp_path / "runs"), "--run-name", "r"]
    fails(capsys, train, "already has checkpoints", "--resume", "--overwrite")
    fails(capsys, [*train, "--resume", "--dim", "64", "--heads", "4"], "belongs to a different run")
    (run / "checkpoints" / "last.ckpt").write_bytes(b"cut")
    fails(capsys, [*train, "--resume"], "no intact checkpoint to resume", "--overwrite")
    fails(capsys, [*train, "--resume", str(tmp_path / "nowhere")], "nothing to resume")


# --- full disk ------------------------------------------------------------------------------


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_full_disk_keeps_old_files_and_leaves_no_temporaries(tmp_path, monkeypatch, capsys):
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 1, "weights": torch.ones(3)}, ckpt)
    monkeypatch.setattr(os, "replace", no_space)
    with pytest.raises(OutputError, match="no space left on device") as info:
        io.save_checkpoint({"global_step": 2, "weights": torch.zeros(3)}, ckpt)
    assert "any previous last.ckpt is unchanged" in str(info.value)
    assert torch.load(ckpt, weights_only=True)["global_step"] == 1
    assert io.last_saved == (ckpt, 1)
    assert [p.name for p in ckpt.parent.iterdir()] == ["last.ckpt"]  # no temporary left

    monkeypatch.undo()
    with pytest.raises(OutputError, match="no space"), atomic_write(tmp_path / "new.json") as f:
        f.write(b"{")
        no_space()
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoints"]


def test_full_disk_while_writing_an_evaluation(tmp_path, monkeypatch, capsys, mnist_dir):
    ckpt = fake_checkpoint(tmp_path / "model.ckpt")
    out = tmp_path / "evaluation.json"
    monkeypatch.setattr(os, "replace", no_space)
    argv = ["evaluate", str(ckpt), "--data-dir", str(mnist_dir), "--out", str(out)]
    fails(capsys, argv, f"cannot write {out}: no space left on device")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.ckpt"]
