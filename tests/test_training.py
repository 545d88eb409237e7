"""Training: schedule, weight-decay groups, config checks, errors, end-to-end and exact resume."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings

import lightning as L
import pytest
import torch
from conftest import shared_data_dir

from rpevit import create_model
from rpevit.attention.kernels import DEFAULT_REDRAW_INTERVAL, DEFAULT_REDRAW_STOP
from rpevit.cli.evaluate import add_evaluate_arguments
from rpevit.cli.train import add_train_arguments, config_from_args
from rpevit.errors import CheckpointError, ConfigError, DataNotFoundError
from rpevit.metrics import peak_memory_mb
from rpevit.runs import RunDir
from rpevit.training import evaluate, load_checkpoint, resolve_config, train
from rpevit.training.config import apply_min_steps
from rpevit.training.module import param_groups, warmup_cosine
from rpevit.training.precision import bf16_note, check_precision, cpu_has_native_bf16
from rpevit.training.presets import MIN_STEPS

METRIC_KEYS = {
    "model",
    "dataset",
    "seed",
    "epochs",
    "val_accuracy",
    "test_accuracy",
    "test_top5_accuracy",
    "precision_macro",
    "recall_macro",
    "f1_macro",
    "per_class",
    "log_likelihood",
    "mean_nll",
    "aic",
    "bic",
    "params",
    "flops_per_image",
    "train_seconds_per_epoch",
    "inference_ms_per_sample",
    "inference_batch_size",
    "peak_memory_mb",
    "device",
    "torch_version",
    "git_commit",
    "config",
}

TINY = dict(patch_size=7, dim=32, depth=1, heads=2, mlp_dim=64)


def test_warmup_then_cosine():
    assert warmup_cosine(0, 10, 110, 0.0) == pytest.approx(0.1)
    assert warmup_cosine(9, 10, 110, 0.0) == pytest.approx(1.0)
    assert warmup_cosine(10, 10, 110, 0.0) == pytest.approx(1.0)
    assert warmup_cosine(60, 10, 110, 0.0) == pytest.approx(0.5)
    assert warmup_cosine(110, 10, 110, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(0, 0, 100, 0.0) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("name", "options"),
    [("softmax-rpe", {}), ("favor-string", {}), ("relu-rope", {"rope_mode": "mixed"})],
)
def test_no_weight_decay_on_norms_biases_positions_and_cls(name, options):
    model = create_model(name, image_size=28, in_chans=1, num_classes=10, **TINY, **options)
    decay, no_decay = param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    kept = {names[id(p)] for p in no_decay["params"]}
    assert decayed | kept == set(names.values()) and not decayed & kept
    assert {"cls_token", "pos_embed", "blocks.0.norm1.weight", "blocks.0.attn.qkv.bias"} <= kept
    assert any(".attn.position." in n for n in kept)
    assert {"blocks.0.attn.qkv.weight", "blocks.0.mlp.0.weight", "head.weight"} <= decayed
    assert not any("position" in n or "pos_embed" in n for n in decayed)


def test_presets_fill_only_unset_fields():
    config = resolve_config({"model": "relu-ape", "preset": "quick", "dim": 48})
    assert (config.patch_size, config.dim, config.heads, config.epochs) == (7, 48, 4, 5)
    paper = resolve_config({"model": "softmax-ape", "dataset": "cifar10"})
    assert (paper.patch_size, paper.dim, paper.depth, paper.mlp_dim, paper.epochs) == (
        4,
        256,
        6,
        512,
        100,
    )


@pytest.mark.parametrize(("dataset", "tokens"), [("cifar10", 64), ("mnist", 49)])
def test_study_preset_tokenises_at_patch_4(dataset, tokens):
    config = resolve_config({"model": "softmax-ape", "dataset": dataset, "preset": "study"})
    size = {"cifar10": 32, "mnist": 28}[dataset]
    assert (size // config.patch_size) ** 2 == tokens
    assert config.to_dict()["preset"] == "study" and config.min_steps == MIN_STEPS["study"]


def test_small_training_sets_get_the_preset_minimum_of_optimiser_steps():
    config = resolve_config({"model": "relu-ape", "dataset": "imagefolder", "preset": "quick"})
    assert (config.epochs, config.min_steps, config.warmup_epochs) == (5, 1500, 0.5)
    small = apply_min_steps(config, 1300)  # 11 steps of 128 per epoch: 55 steps in 5 epochs
    assert small.epochs == 137 and 137 * 11 >= 1500 > 136 * 11  # the fewest epochs that do
    assert small.requested_epochs == 5 and small.warmup_epochs == pytest.approx(0.5 * 137 / 5)
    assert apply_min_steps(config, 55_000) == config  # 430 steps x 5 epochs suffice
    explicit = resolve_config({"model": "relu-ape", "preset": "quick", "epochs": 5})
    assert explicit.min_steps == 0 and apply_min_steps(explicit, 1300) == explicit
    both = resolve_config({"model": "relu-ape", "epochs": 2, "min_steps": 100, "batch_size": 50})
    assert apply_min_steps(both, 1000).epochs == 5  # 20 steps per epoch
    with pytest.raises(ConfigError, match="min-steps"):
        resolve_config({"model": "relu-ape", "min_steps": -1})


def test_a_small_run_trains_the_minimum_and_records_it(tmp_path, capsys):
    from rpevit.experiments.grid import config_mismatch

    overrides = dict(max_train_samples=128, epochs=None, min_steps=12, run_name="small", **TINY)
    train(tiny_run(tmp_path, **overrides))  # 2 steps per epoch: 5 preset epochs are 10 steps
    assert "training 6 epochs instead of 5" in capsys.readouterr().err
    stored = json.loads((tmp_path / "small" / "config.json").read_text())
    assert (stored["epochs"], stored["requested_epochs"], stored["min_steps"]) == (6, 5, 12)
    last = load_checkpoint(tmp_path / "small" / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 12 and last["hyper_parameters"]["config"]["epochs"] == 6
    # a grid re-run compares the request (5 preset epochs), so it accepts the folder
    again = resolve_config(tiny_run(tmp_path, **overrides))
    assert again.epochs == 5 and config_mismatch(tmp_path / "small", again) == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model": "linear-ape"}, "unknown model"),
        ({"dataset": "svhn"}, "unknown dataset"),
        ({"preset": "huge"}, "unknown preset"),
        ({"patch_size": 5}, "does not divide"),
        ({"dim": 30, "heads": 4}, "not divisible"),
        ({"epochs": 0}, "epochs must be positive"),
        ({"precision": "8-bit"}, "unknown precision"),
        ({"bogus": 1}, "unknown config field"),
    ],
)
def test_bad_configs_are_user_errors(change, message):
    with pytest.raises(ConfigError, match=message):
        resolve_config({"model": "relu-ape", **change})


def test_fp16_needs_a_gpu():
    check_precision("bf16-mixed", "cpu")
    with pytest.raises(ConfigError, match="needs a GPU"):
        check_precision("16-mixed", "cpu")


def test_bf16_on_a_cpu_without_native_bf16_gets_a_one_line_note(tmp_path, monkeypatch):
    zen4 = tmp_path / "zen4"
    zen4.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16 avx2\n")
    old = tmp_path / "old"
    old.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16 sve\n")
    assert cpu_has_native_bf16(str(zen4)) and cpu_has_native_bf16(str(arm))
    assert cpu_has_native_bf16(str(old)) is False
    assert cpu_has_native_bf16(str(tmp_path / "missing")) is None
    import rpevit.training.precision as precision

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    note = bf16_note("bf16-mixed", "cpu")
    assert "no native bf16" in note and "--precision 32-true" in note and "\n" not in note
    assert bf16_note("32-true", "cpu") is None and bf16_note("bf16-mixed", "gpu") is None
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: None)  # unknown: no note
    assert bf16_note("bf16-mixed", "cpu") is None


def test_cli_arguments_become_a_config():
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    args = parser.parse_args(
        "--model favor-rope --preset quick --nb-features 16 --no-ape --devices 0,1 "
        "--option rope_mode=mixed --option rope_base=50 --lr 0.01 --resume".split()
    )
    config = config_from_args(args)
    assert config.model == "favor-rope" and config.lr == 0.01 and config.resume is True
    assert config.devices == [0, 1] and config.dim is None  # preset decides later
    assert config.model_options == {
        "nb_features": 16,
        "ape": False,
        "rope_mode": "mixed",
        "rope_base": 50,
    }
    with pytest.raises(SystemExit):
        parser.parse_args(["--devices", "two"])
    evaluate_parser = argparse.ArgumentParser()
    add_evaluate_arguments(evaluate_parser)
    assert evaluate_parser.parse_args(["runs/x"]).device == "auto"


def test_missing_or_corrupt_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.ckpt")
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(bad)
    torch.save({"state_dict": {}}, tmp_path / "foreign.ckpt")
    with pytest.raises(CheckpointError, match="not an rpevit training checkpoint"):
        load_checkpoint(tmp_path / "foreign.ckpt")
    with pytest.raises(CheckpointError, match="no checkpoints/best.ckpt"):
        evaluate(tmp_path)
    with pytest.raises(CheckpointError, match="nothing to resume"):
        train({"model": "relu-ape", "out": str(tmp_path), "resume": True, **TINY})


def test_missing_data_fails_before_training(tmp_path):
    config = {
        "model": "relu-ape",
        "data_dir": str(tmp_path),
        "download": False,
        "out": str(tmp_path),
    }
    with pytest.raises(DataNotFoundError, match="MNIST/raw/"):
        train(config)


# --- real training on a slice of MNIST -----


def tiny_run(tmp_path, **overrides) -> dict:
    root = shared_data_dir()
    if root is None:
        pytest.skip("shared MNIST data not found")
    config = dict(
        model="relu-ape",
        dataset="mnist",
        preset="quick",
        data_dir=str(root),
        out=str(tmp_path),
        max_train_samples=640,
        max_val_samples=256,
        max_test_samples=500,
        batch_size=64,
        epochs=3,
        lr=3e-3,
        warmup_epochs=0.5,
        progress_bar=False,
        log_every_n_steps=5,
        inference_batch_size=32,
    )
    return {**config, **overrides}


def test_end_to_end_training_writes_a_complete_run(tmp_path):
    ballast = torch.ones(256 * 2**20)  # 1 GiB freed before the run: not the run's memory
    earlier_peak = peak_memory_mb("cpu")
    del ballast
    metrics = train(tiny_run(tmp_path, run_name="e2e", max_train_samples=2048, epochs=4, lr=5e-3))
    if sys.platform == "linux":  # each run reports its own peak, as in a grid worker
        assert metrics["peak_memory_per_run"] is True
        assert metrics["peak_memory_mb"] < earlier_peak - 512
    run = tmp_path / "e2e"
    for name in ("config.json", "metrics.json", "checkpoints/best.ckpt", "checkpoints/last.ckpt"):
        assert (run / name).is_file(), name
    assert (run / "logs" / "csv" / "version_0" / "metrics.csv").is_file()
    assert any((run / "logs" / "tensorboard").glob("events.out.tfevents.*"))
    on_disk = json.loads((run / "metrics.json").read_text())
    assert METRIC_KEYS <= set(on_disk)
    assert on_disk["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert metrics["test_accuracy"] > 0.5  # chance is 0.1; a full quick run reaches 0.97
    assert metrics["params"]["trainable"] > 0 and metrics["flops_per_image"] > 0
    assert (
        len(metrics["per_class"]) == 10 and sum(c["support"] for c in metrics["per_class"]) == 500
    )
    assert metrics["aic"] == pytest.approx(
        2 * metrics["params"]["trainable"] - 2 * metrics["log_likelihood"]
    )
    assert metrics["train_seconds_per_epoch"] > 0 and len(metrics["train_seconds_epochs"]) == 4
    # the final state beside the best: last.ckpt's epoch and its logged validation accuracy
    val = RunDir(run).curves("epoch")["val/acc"]
    assert metrics["last_checkpoint_epoch"] == 3 == max(val)
    assert metrics["last_val_accuracy"] == pytest.approx(val[3], abs=1e-6)
    assert metrics["val_accuracy"] == pytest.approx(val[metrics["checkpoint_epoch"]], abs=1e-6)
    if metrics["checkpoint_epoch"] == 3:  # best is last: the same model
        assert metrics["last_test_accuracy"] == pytest.approx(metrics["test_accuracy"], abs=1e-6)
    assert json.loads((run / "config.json").read_text())["dim"] == 64

    again = evaluate(run)  # the stand-alone evaluation reproduces the numbers
    assert again["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert again["log_likelihood"] == pytest.approx(metrics["log_likelihood"], rel=1e-6)
    assert again["train_seconds_per_epoch"] == pytest.approx(metrics["train_seconds_per_epoch"])
    for key in ("last_checkpoint_epoch", "last_val_accuracy", "last_test_accuracy"):
        assert again[key] == pytest.approx(metrics[key]), key

    with pytest.raises(ConfigError, match="already has checkpoints"):
        train(tiny_run(tmp_path, run_name="e2e"))


def test_training_console_has_no_framework_chatter_but_keeps_real_warnings(tmp_path, capfd):
    config = tiny_run(tmp_path, run_name="quiet", epochs=1, max_train_samples=128)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train({**config, "log_every_n_steps": 50})
    messages = [str(w.message) for w in caught]
    assert any("smaller than the logging interval" in m for m in messages)  # a real warning
    assert not any("LeafSpec" in m for m in messages)
    printed = "".join(capfd.readouterr())
    for chatter in ("GPU available", "TPU available", "litlogger", "Loading `train_dataloader`"):
        assert chatter not in printed, chatter


class Scramble(L.Callback):
    """Overwrites every weight with noise at the start of epoch ``epoch``: the run ends far
    below its best (a collapse like a late FAVOR+ redraw's)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, module) -> None:
        if trainer.current_epoch == self.epoch:
            with torch.no_grad():
                for param in module.parameters():
                    param.normal_(0, 1)


def test_a_run_that_ends_below_its_best_records_its_final_state(tmp_path):
    metrics = train(tiny_run(tmp_path, run_name="drop", epochs=3), callbacks=[Scramble(2)])
    val = RunDir(tmp_path / "drop").curves("epoch")["val/acc"]
    assert metrics["checkpoint_epoch"] < 2 == metrics["last_checkpoint_epoch"]
    assert metrics["last_val_accuracy"] == pytest.approx(val[2], abs=1e-6)
    assert metrics["last_val_accuracy"] < metrics["val_accuracy"] - 0.1
    assert metrics["last_test_accuracy"] < metrics["test_accuracy"] - 0.1


class Crash(L.Callback):
    """Simulates a crash after ``step`` optimizer steps, or as epoch ``epoch`` starts (after
    the previous epoch's checkpoints)."""

    def __init__(self, step: int | None = None, epoch: int | None = None) -> None:
        self.step, self.epoch = step, epoch

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError("simulated crash")

    def on_train_epoch_start(self, trainer, *args) -> None:
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("simulated crash")


def test_resume_mid_epoch_gives_identical_results(tmp_path):
    # FAVOR+ with feature redraws and dropout: exactness needs the feature buffers, the
    # data order, the augmentation and the global RNG to be restored, not just the weights.
    # The resumed part crosses redraws (passes 4 and 6) and the end of redraws (pass 7 of 10).
    overrides = dict(
        model="favor-ape",
        max_train_samples=320,
        epochs=2,
        checkpoint_every_n_steps=3,
        model_options={"redraw_interval": 2, "redraw_stop": 0.7, "dropout": 0.1, "nb_features": 16},
        **TINY,
    )
    reference = train(tiny_run(tmp_path, run_name="straight", **overrides))  # 5 steps/epoch

    config = tiny_run(tmp_path, run_name="crashed", **overrides)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(config, callbacks=[Crash(step=5)])
    # last.ckpt is from step 3 of the first epoch's 5, saved before the crash
    assert load_checkpoint(tmp_path / "crashed" / "checkpoints" / "last.ckpt")["global_step"] == 3
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = train({**config, "resume": True})
    # the checkpoint folder of a resumed run exists by design: no warning about it
    assert not any("is not empty" in str(w.message) for w in caught)

    for key in ("val_accuracy", "test_accuracy", "log_likelihood", "f1_macro", "checkpoint_step"):
        assert resumed[key] == reference[key], key
    straight = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.ckpt")["state_dict"]
    crashed = load_checkpoint(tmp_path / "crashed" / "checkpoints" / "last.ckpt")["state_dict"]
    assert straight.keys() == crashed.keys()
    assert all(torch.equal(straight[k], crashed[k]) for k in straight)
    # the schedule reached the kernel: the last draw is number 3 (pass 6), not 4 (pass 8)
    model = create_model("favor-ape", image_size=28, in_chans=1, num_classes=10, **TINY,
                         nb_features=16)  # fmt: skip
    kernel = model.blocks[0].attn.kernel
    kernel.feature_seed.copy_(straight["model.blocks.0.attn.kernel.feature_seed"])
    assert torch.equal(straight["model.blocks.0.attn.kernel.projection"], kernel._draw(3))


def test_resume_after_an_epoch_that_did_not_improve_is_exact_and_quiet(tmp_path):
    # An epoch whose validation accuracy is not a new best leaves the last.ckpt written at the
    # end of its validation, before the training epoch ends. Resuming from it replays that
    # epoch's end: best-model bookkeeping must already be in the checkpoint (no stale best, no
    # "could not find the monitored key 'val/acc'" warning from a save without validation).
    overrides = dict(epochs=3, lr=1e-9, warmup_epochs=0, max_train_samples=320, **TINY)
    reference = train(tiny_run(tmp_path, run_name="straight", **overrides))
    config = tiny_run(tmp_path, run_name="crashed", **overrides)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(config, callbacks=[Crash(epoch=2)])
    checkpoints = tmp_path / "crashed" / "checkpoints"
    last, best = (load_checkpoint(checkpoints / n) for n in ("last.ckpt", "best.ckpt"))
    assert (last["epoch"], best["epoch"]) == (1, 0), "epoch 1 must not be a new best here"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = train({**config, "resume": True})
    assert not [w for w in caught if "monitored key" in str(w.message)]
    for key in ("val_accuracy", "test_accuracy", "log_likelihood", "checkpoint_step"):
        assert resumed[key] == reference[key], key


def test_the_redraw_policy_is_recorded_for_favor_models_only(tmp_path):
    favor = resolve_config(tiny_run(tmp_path, model="favor-ape", **TINY))
    default = {"redraw_interval": DEFAULT_REDRAW_INTERVAL, "redraw_stop": DEFAULT_REDRAW_STOP}
    assert favor.model_options == default
    given = tiny_run(tmp_path, model="favor-rpe", model_options={"redraw_interval": 0})
    assert resolve_config(given).model_options == {
        "redraw_interval": 0,
        "redraw_stop": DEFAULT_REDRAW_STOP,
    }
    assert resolve_config(tiny_run(tmp_path, model="relu-ape")).model_options == {}


# --- experiments/train_baseline.py and training curves -----


def load_script(name: str):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "experiments" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_baseline_script_trains_and_plots(tmp_path, capsys):
    root = shared_data_dir()
    if root is None:
        pytest.skip("shared MNIST data not found")
    script = load_script("train_baseline")
    argv = ["--dataset", "mnist", "--epochs", "1", "--preset", "quick", "--data-dir", str(root)]
    argv += ["--out", str(tmp_path), "--max-train-samples", "256", "--max-val-samples", "64"]
    argv += ["--max-test-samples", "64", "--no-progress", "--log-every-n-steps", "1"]
    argv += ["--patch-size", "7", "--dim", "32", "--depth", "1", "--heads", "2"]
    assert script.main([*argv, "--save-model", "--save-metrics", "--save-plots"]) == 0
    run = tmp_path / "mnist-softmax-ape-quick-seed0"  # softmax-ape by default
    printed = capsys.readouterr().out
    assert f"metrics: {run / 'metrics.json'}" in printed
    assert f"model: {run / 'checkpoints' / 'best.ckpt'}" in printed
    assert json.loads((run / "metrics.json").read_text())["model"] == "softmax-ape"
    for name in ("loss.png", "accuracy.png"):
        assert (run / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert script.main([*argv, "--model", "nope-ape"]) == 2  # errors as `rpevit train`


def test_training_curves_prefer_the_resumed_start(tmp_path):
    from rpevit.runs import RunDir

    for version, rows in (
        (0, "epoch,step,train/loss_step,val/acc\n0,1,2.0,\n0,2,1.5,\n0,2,,0.3\n"),
        (1, "epoch,step,train/loss_step,val/acc\n0,2,1.4,\n1,3,1.2,\n"),
    ):
        folder = tmp_path / "logs" / "csv" / f"version_{version}"
        folder.mkdir(parents=True)
        (folder / "metrics.csv").write_text(rows)
    curves = RunDir(tmp_path).curves()
    assert curves["train/loss_step"] == {1: 2.0, 2: 1.4, 3: 1.2}
    assert curves["val/acc"] == {2: 0.3}


def test_last_checkpoint_is_refreshed_every_epoch_even_without_improvement(
    tmp_path, caplog, monkeypatch
):
    """With a vanishing learning rate validation accuracy never improves after epoch 0, yet
    last.ckpt must follow every epoch (a resume must not retrain finished epochs). Every save
    says it writes a full checkpoint, so Lightning logs no "`weights_only` was not set" line
    (checked with Lightning's informational lines let through)."""
    import contextlib

    import rpevit.training.fit as fit

    monkeypatch.setattr(fit, "quiet_framework", contextlib.nullcontext)
    config = tiny_run(tmp_path, epochs=3, lr=1e-12, warmup_epochs=0.0)
    with caplog.at_level(logging.INFO, logger="lightning.pytorch"):
        train(config)
    assert "`Trainer.fit` stopped" in caplog.text  # Lightning's log was captured
    assert "weights_only" not in caplog.text
    run_dir = resolve_config(config).run_dir
    last = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    best = load_checkpoint(run_dir / "checkpoints" / "best.ckpt")
    assert last["epoch"] == 2 and best["epoch"] == 0
    assert last["global_step"] == 3 * best["global_step"]
