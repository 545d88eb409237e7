"""Transfer: weights from a softmax run into another kernel (``--init-from``), and evaluation
at other resolutions (``rpevit evaluate --image-size``)."""

from __future__ import annotations

import json
import shutil

import lightning as L
import pytest
import torch
from conftest import shared_data_dir
from test_hostile import fails, fake_checkpoint

from rpevit.cli import main
from rpevit.data import load_dataset
from rpevit.training import ImageClassifier, load_checkpoint, resolution_transfer, train
from rpevit.training.transfer import resize_images

SIZES = dict(patch_size=7, dim=32, depth=1, heads=2, mlp_dim=64)


def config(out, **overrides) -> dict:
    return {
        "dataset": "mnist",
        "preset": "quick",
        "data_dir": str(shared_data_dir()),
        "out": str(out),
        "max_train_samples": 256,
        "max_val_samples": 64,
        "max_test_samples": 200,
        "batch_size": 64,
        "epochs": 1,
        "progress_bar": False,
        **SIZES,
        **overrides,
    }


@pytest.fixture(scope="module")
def softmax_run(tmp_path_factory):
    """A briefly trained softmax-rope run (mixed RoPE: it has learnable frequencies)."""
    if shared_data_dir() is None:
        pytest.skip("shared MNIST data not found")
    out = tmp_path_factory.mktemp("source")
    options = {"rope_mode": "mixed"}
    train(config(out, model="softmax-rope", run_name="softmax", model_options=options))
    return out / "softmax"


class Snapshot(L.Callback):
    """The model's state when training starts (after the weights were transferred)."""

    def on_train_start(self, trainer, pl_module) -> None:
        self.state = {k: v.clone() for k, v in pl_module.model.state_dict().items()}


def test_init_from_transfers_every_shared_tensor_exactly(tmp_path, softmax_run):
    snapshot = Snapshot()
    options = {"rope_mode": "mixed", "nb_features": 16}
    metrics = train(
        config(
            tmp_path,
            model="favor-rope",
            run_name="favor",
            init_from=str(softmax_run),
            max_steps=2,
            model_options=options,
        ),
        callbacks=[snapshot],
    )
    source = load_checkpoint(softmax_run / "checkpoints" / "best.ckpt")
    shared = {k.removeprefix("model."): v for k, v in source["state_dict"].items()}
    assert any(".attn.position." in k for k in shared)  # the learned RoPE frequencies too
    for key, value in shared.items():
        assert torch.equal(snapshot.state[key], value), key
    new = set(snapshot.state) - set(shared)
    assert new and all(".attn.kernel." in k for k in new)  # only FAVOR+'s own buffers
    record = metrics["init_from"]
    assert record["path"] == str(softmax_run / "checkpoints" / "best.ckpt")
    assert record["model"] == "softmax-rope" and record["transferred"] == len(shared)
    assert sorted(record["new"]) == sorted(new)
    assert record["epochs"] == 1  # the source's budget, for equal-total-epoch comparisons
    assert metrics["nb_features"] == 16
    stored = json.loads((tmp_path / "favor" / "config.json").read_text())
    assert stored["init_from"] == str(softmax_run)
    assert json.loads((tmp_path / "favor" / "metrics.json").read_text())["init_from"] == record
    # fine-tuning changed the shared weights
    after = load_checkpoint(tmp_path / "favor" / "checkpoints" / "last.ckpt")["state_dict"]
    assert after["model.head.weight"].ne(shared["head.weight"]).any()


def test_init_from_refuses_incompatible_sources(tmp_path, capsys):
    fake_checkpoint(tmp_path / "favor.ckpt", model="favor-rope")
    fake_checkpoint(tmp_path / "string.ckpt", model="softmax-string")
    fake_checkpoint(tmp_path / "rope.ckpt", model="softmax-rope")
    base = ["train", "--data-dir", str(tmp_path / "none"), "--no-download"]
    base += ["--out", str(tmp_path / "runs"), "--patch-size", "7", "--depth", "1"]
    base += ["--heads", "2", "--mlp-dim", "64"]
    # a kernel with state of its own cannot be dropped silently
    argv = [*base, "--model", "relu-rope", "--dim", "32", "--init-from"]
    fails(capsys, [*argv, str(tmp_path / "favor.ckpt")], "unexpected: blocks.0.attn.kernel.")
    # another position encoding
    argv = [*base, "--model", "favor-rope", "--dim", "32", "--init-from"]
    fails(capsys, [*argv, str(tmp_path / "string.ckpt")], "unexpected: blocks.0.attn.position")
    # other sizes
    argv = [*base, "--model", "favor-rope", "--dim", "64", "--init-from"]
    fails(
        capsys,
        [*argv, str(tmp_path / "rope.ckpt")],
        "shape mismatch: cls_token [1, 1, 32] -> [1, 1, 64]",
    )
    fails(capsys, [*argv, str(tmp_path / "nothing")], "neither a run folder nor a checkpoint")
    assert not (tmp_path / "runs").exists()


def test_resize_modes_by_hand():
    image = torch.arange(1, 5, dtype=torch.uint8).reshape(1, 1, 2, 2)
    padded = resize_images(image, 4, "pad")
    assert padded[0, 0].tolist() == [[0, 0, 0, 0], [0, 1, 2, 0], [0, 3, 4, 0], [0, 0, 0, 0]]
    assert torch.equal(resize_images(padded, 2, "pad"), image)  # smaller: centre crop
    aligned = resize_images(image, 5, "pad", align=2)  # offset 1 rounded down to 0
    assert aligned[0, 0, :2, :2].tolist() == [[1, 2], [3, 4]] and aligned.sum() == 10
    assert torch.equal(resize_images(image, 6, "pad", align=2)[..., 2:4, 2:4], image)
    flat = torch.full((1, 3, 5, 5), 77, dtype=torch.uint8)
    assert torch.equal(resize_images(flat, 9, "upscale"), torch.full((1, 3, 9, 9), 77))
    assert resize_images(flat, 3, "upscale").unique().tolist() == [77]


def test_evaluate_at_other_resolutions(tmp_path, capsys, softmax_run):
    out = tmp_path / "eval.json"
    argv = ["evaluate", str(softmax_run), "--image-size", "28,35,42", "--out", str(out)]
    assert main(argv) == 0
    assert "resolution transfer (pad): 28px" in capsys.readouterr().out
    metrics = json.loads(out.read_text())
    transfer = metrics["resolution_transfer"]
    assert transfer["resize_mode"] == "pad" and transfer["trained_image_size"] == [28, 28]
    results = {r["image_size"]: r for r in transfer["results"]}
    assert sorted(results) == [28, 35, 42] and results[42]["patch_tokens"] == 36
    assert results[28]["test_accuracy"] == metrics["test_accuracy"]  # 28: the images as trained
    assert all(0 <= r["test_accuracy"] <= 1 and r["mean_nll"] > 0 for r in results.values())

    # upscaling instead of padding: same at 28, different content at 42
    checkpoint = load_checkpoint(softmax_run / "checkpoints" / "best.ckpt")
    module = ImageClassifier(**checkpoint["hyper_parameters"])
    module.load_state_dict(checkpoint["state_dict"])
    data = load_dataset("mnist", shared_data_dir(), max_test_samples=200)
    upscaled = resolution_transfer(
        module.model, data.test, data.spec, [28, 42], "upscale", 100, torch.device("cpu")
    )
    assert upscaled[0]["test_accuracy"] == metrics["test_accuracy"]
    assert upscaled[1]["mean_nll"] != results[42]["mean_nll"]

    bad = tmp_path / "bad.json"
    argv = ["evaluate", str(softmax_run), "--image-size", "30", "--out", str(bad)]
    fails(capsys, argv, "image size(s) 30 are not positive multiples of the model's patch size 7")
    assert not bad.exists()


def test_linformer_cannot_change_resolution(tmp_path, capsys, softmax_run):
    ckpt = fake_checkpoint(tmp_path / "linformer.ckpt", model="linformer-ape")
    data = ["--data-dir", str(shared_data_dir())]
    fails(
        capsys,
        ["evaluate", str(ckpt), *data, "--image-size", "28,35", "--out", str(tmp_path / "x.json")],
        "linformer-ape cannot be evaluated at 35x35",
        "fixed sequence length",
    )
    assert not (tmp_path / "x.json").exists()


def test_evaluate_a_folder_of_runs_skips_what_cannot_transfer(tmp_path, capsys, softmax_run):
    runs = tmp_path / "runs"
    shutil.copytree(softmax_run, runs / "softmax-rope" / "seed0")
    linformer = runs / "linformer-ape" / "seed0" / "checkpoints"
    linformer.mkdir(parents=True)
    fake_checkpoint(linformer / "best.ckpt", model="linformer-ape")
    argv = ["evaluate", str(runs), "--image-size", "28,35", "--data-dir", str(shared_data_dir())]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "skipped" in err and "linformer-ape cannot be evaluated at 35x35" in err
    assert "1 of 2 not evaluated" in err
    evaluation = json.loads((runs / "softmax-rope" / "seed0" / "evaluation.json").read_text())
    assert [r["image_size"] for r in evaluation["resolution_transfer"]["results"]] == [28, 35]
    assert evaluation["nb_features"] is None  # softmax: no feature map
    assert not (runs / "linformer-ape" / "seed0" / "evaluation.json").exists()
    fails(capsys, [*argv, "--out", str(tmp_path / "one.json")], "--out names one file but 2 runs")
    (tmp_path / "empty").mkdir()
    fails(capsys, ["evaluate", str(tmp_path / "empty")], "holds no run folders")
