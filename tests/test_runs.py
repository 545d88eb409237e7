"""The run folder format (rpevit.runs): a run written by the code before the refactoring still
reads, round-trips byte for byte and re-evaluates to its recorded numbers; run states; atomic
writing of the metrics record."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import shared_data_dir

from rpevit.errors import OutputError
from rpevit.runs import Metrics, Predictions, RunDir
from rpevit.training import evaluate_checkpoint, load_model

#: favor-rpe, seed 1, of a 4 x 3 MNIST grid (tiny model, 1 epoch) written before rpevit.runs
#: existed (its last.ckpt left out to keep it small).
FIXTURE = Path(__file__).parent / "fixtures" / "run-v0"


def test_fixture_metrics_and_config_round_trip_byte_for_byte(tmp_path):
    run = RunDir(FIXTURE)
    metrics = run.read_metrics()
    assert metrics is not None
    assert metrics.to_dict() == json.loads(run.metrics_file.read_text())
    assert metrics.model == "favor-rpe" and metrics.seed == 1 and metrics.nb_features == 16
    assert metrics.test_accuracy == 0.14453125 and metrics.params == {
        "trainable": 3596,
        "total": 3596,
    }
    assert metrics.extra == {}  # environment info and epoch timings are fields
    assert metrics.hardware["cpu_count"] == 2 and metrics.train_seconds_epochs == [
        metrics.train_seconds_per_epoch
    ]
    config = run.read_config()
    assert config == json.loads(run.config_file.read_text()) == metrics.config
    copy = RunDir(tmp_path)
    copy.write_metrics(metrics)
    copy.write_config(config)
    assert copy.metrics_file.read_bytes() == run.metrics_file.read_bytes()  # key order too
    assert copy.config_file.read_bytes() == run.config_file.read_bytes()


def test_unknown_and_optional_keys_keep_their_place():
    stored = json.loads((FIXTURE / "metrics.json").read_text())
    without_env = {k: v for k, v in stored.items() if k not in ("hardware", "software")}
    assert Metrics.from_dict(without_env).to_dict() == without_env  # no null keys added
    assert list(Metrics.from_dict(without_env).to_dict()) == list(without_env)
    transfer = {"resize_mode": "pad", "results": [{"image_size": 35}]}
    newer = {**stored, "future_key": [1, 2], "resolution_transfer": transfer}
    record = Metrics.from_dict(newer)
    assert record.extra == {"future_key": [1, 2]} and record.resolution_transfer == transfer
    keys = list(record.to_dict())
    assert keys[-1] == "future_key"  # unknown keys after the known ones
    assert keys.index("config") < keys.index("resolution_transfer") < keys.index("hardware")
    for bad in ([], {"model": "x", "test_accuracy": 1}, {"test_accuracy": 0.5}):
        with pytest.raises(ValueError):
            Metrics.from_dict(bad)


def test_fixture_predictions_and_curves():
    run = RunDir(FIXTURE)
    predictions = run.read_predictions()
    metrics = run.read_metrics()
    assert predictions.labels.shape == (metrics.num_test_samples,)
    assert predictions.correct.sum() == round(metrics.test_accuracy * metrics.num_test_samples)
    assert np.all(predictions.true_log_prob <= 0)
    # the fixture's logs/csv/version_0/metrics.csv: a validation row and a train-epoch row
    assert run.curves() == {
        "val/acc": {3: 0.1484375},
        "val/loss": {3: 2.2898662090301514},
        "train/acc": {3: 0.08984375},
        "train/loss_epoch": {3: 2.308429479598999},
    }
    assert run.curves(by="epoch")["val/acc"] == {0: 0.1484375}


def test_predictions_save_and_load_exactly(tmp_path):
    original = RunDir(FIXTURE).read_predictions()
    original.save(tmp_path / "p.npz")
    again = Predictions.load(tmp_path / "p.npz")
    for name in ("labels", "predicted", "true_log_prob"):
        assert np.array_equal(getattr(again, name), getattr(original, name)), name
    assert again.true_log_prob.dtype == np.float64


def test_curves_read_starts_in_numeric_order_and_skip_bad_cells(tmp_path):
    for version, rows in ((10, "1,4,0.9\n"), (2, "0,2,0.5\n1,4,0.6\n1,5,nan\n,6,0.7\n")):
        folder = tmp_path / "logs" / "csv" / f"version_{version}"
        folder.mkdir(parents=True)
        (folder / "metrics.csv").write_text("epoch,step,val/acc\n" + rows)
    (tmp_path / "logs" / "csv" / "version_x").mkdir()  # not a start of training
    run = RunDir(tmp_path)
    assert [p.parent.name for p in run.csv_logs()] == ["version_2", "version_10"]
    assert run.curves() == {"val/acc": {2: 0.5, 4: 0.9, 6: 0.7}}  # version_10 wins step 4
    assert run.curves(by="epoch") == {"val/acc": {0: 0.5, 1: 0.9}}


def test_fixture_model_reloads_and_reproduces_its_recorded_evaluation(tmp_path):
    run = RunDir(FIXTURE)
    metrics = run.read_metrics()
    model, info = load_model(run.checkpoint())
    assert info.model_name == metrics.model and info.config == run.read_config()
    assert (info.epoch, info.step) == (metrics.checkpoint_epoch, metrics.checkpoint_step)
    assert not model.training and model.feature_count == metrics.nb_features
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        first, second = model(x), model(x)
    assert first.shape == (3, 10) and torch.isfinite(first).all()
    assert torch.equal(first, second)  # FAVOR+ features are fixed in eval mode
    root = shared_data_dir()
    if root is None:
        pytest.skip("shared MNIST data not found: reload checked, re-evaluation skipped")
    again = evaluate_checkpoint(
        run.best, data_dir=root, device="cpu", predictions_out=tmp_path / "p.npz"
    )
    assert again.test_accuracy == metrics.test_accuracy
    assert again.val_accuracy == metrics.val_accuracy
    assert again.log_likelihood == pytest.approx(metrics.log_likelihood, rel=1e-5)
    assert again.per_class == metrics.per_class  # same predictions: same counts
    predicted = Predictions.load(tmp_path / "p.npz")
    assert np.array_equal(predicted.predicted, run.read_predictions().predicted)
    assert list(again.to_dict()) == list(metrics.to_dict())[:-1]  # all but train_seconds_epochs


def _metrics(model: str = "favor-ape", seed: int = 0, accuracy: object = 0.5) -> str:
    return json.dumps({"model": model, "seed": seed, "test_accuracy": accuracy})


def test_run_states(tmp_path):
    run = RunDir(tmp_path / "run")
    assert run.state() == "pending" and run.checkpoint() is None  # no folder at all
    run.checkpoint_dir.mkdir(parents=True)
    run.best.write_bytes(b"x")
    assert run.state() == "pending"  # best.ckpt alone: nothing to resume from
    assert run.checkpoint() == run.best and run.has_checkpoints()
    run.last.write_bytes(b"x")
    assert run.state() == "partial"
    for broken in ('{"model": "favor-ape", "test_', _metrics(accuracy=1), _metrics(accuracy=None)):
        run.metrics_file.write_text(broken)  # truncated, or not a float accuracy
        assert run.state() == "partial", broken
    run.metrics_file.write_text(_metrics())
    assert run.state() == "finished" == run.state("favor-ape", 0)
    assert run.state("favor-ape", 1) == "partial"  # the result of another run
    assert run.state("softmax-ape", 0) == "partial"
    run.last.unlink()
    assert run.state("favor-ape", 1) == "pending"
    assert RunDir(FIXTURE).state("favor-rpe", 1) == "finished"


def test_metrics_are_written_atomically(tmp_path, monkeypatch):
    run = RunDir(tmp_path)
    first = Metrics.from_dict(json.loads(_metrics()))
    run.write_metrics(first)
    before = run.metrics_file.read_bytes()

    def no_space(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", no_space)
    with pytest.raises(OutputError, match="no space left"):
        run.write_metrics(Metrics.from_dict(json.loads(_metrics(accuracy=0.75))))
    monkeypatch.undo()
    assert run.metrics_file.read_bytes() == before  # the old result, complete
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]  # no temporaries
    assert run.read_metrics() == first


def test_a_copied_run_folder_reads_like_the_original(tmp_path):
    copy = RunDir(tmp_path / "run")
    shutil.copytree(FIXTURE, copy.path)
    assert copy.read_metrics() == RunDir(FIXTURE).read_metrics()
    assert RunDir.of_checkpoint(copy.best) == copy
    assert RunDir.of_checkpoint(tmp_path / "best.ckpt") is None


def test_records_copied_half_way_never_look_finished(tmp_path, monkeypatch):
    """``copy_records`` writes the metrics file (what marks a run finished, for a grid resuming
    from committed records) last: stopped after any number of files, the copy holds
    ``metrics.json`` only when it holds every other record too."""
    import rpevit.runs as runs

    source = RunDir(FIXTURE)
    expected = {"config.json", "test_predictions.npz", "logs/csv/version_0/metrics.csv",
                "metrics.json"}  # fmt: skip
    real = runs.atomic_write
    for stop_after in range(len(expected) + 1):
        written = 0

        def interrupted(path, *args, stop_after=stop_after, **kwargs):
            nonlocal written
            if written == stop_after:
                raise KeyboardInterrupt
            written += 1
            return real(path, *args, **kwargs)

        monkeypatch.setattr(runs, "atomic_write", interrupted)
        dest = tmp_path / f"copy{stop_after}"
        try:
            source.copy_records(dest)
        except KeyboardInterrupt:
            pass
        copied = {p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()}
        assert copied <= expected and len(copied) == min(stop_after, len(expected))
        assert ("metrics.json" in copied) == (copied == expected), copied
