"""Experiment grid: run planning, sharding, skipping finished runs, resuming interrupted ones."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import lightning as L
import pytest
from conftest import shared_data_dir

import rpevit.experiments.grid as grid
from rpevit.cli.grid import add_grid_arguments, run_grid_command
from rpevit.errors import ConfigError, TrainingInterrupted
from rpevit.experiments import (
    GridSpec,
    parse_shard,
    plan_grid,
    run_grid,
    run_grids_parallel,
    shard_runs,
)
from rpevit.registry import CORE_MODELS
from rpevit.report import build_report
from rpevit.report.build import NO_CHECKPOINTS
from rpevit.training import TrainConfig, load_checkpoint, train


class FakeTrain:
    """Stands in for ``train``: writes a valid run folder and records every call; raises
    ``crash_on`` (an exception instance) at the given call number, after a last.ckpt."""

    def __init__(self, crash_at: int | None = None, crash_on: BaseException | None = None):
        self.calls: list[TrainConfig] = []
        self.crash_at, self.crash_on = crash_at, crash_on

    def __call__(self, config: TrainConfig) -> dict:
        self.calls.append(config)
        run_dir = config.run_dir
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(config.to_dict()))
        (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"partial")
        if len(self.calls) == self.crash_at:
            raise self.crash_on
        metrics = {"model": config.model, "seed": config.seed, "test_accuracy": 0.5}
        metrics["val_accuracy"] = 0.5
        (run_dir / "metrics.json").write_text(json.dumps(metrics))
        return metrics


class Killed(BaseException):
    """A crash the grid must not survive (like SIGKILL): not an ``Exception``."""


def base_config(tmp_path: Path, **overrides) -> TrainConfig:
    return TrainConfig(dataset="mnist", preset="quick", out=str(tmp_path), **overrides)


def test_plan_is_sorted_complete_and_validated():
    runs = plan_grid(list(reversed(CORE_MODELS)), [44, 42, 43, 42])
    assert len(runs) == 36 and runs == sorted(runs)
    assert runs == plan_grid(CORE_MODELS, [42, 43, 44])
    with pytest.raises(ConfigError, match="unknown model"):
        plan_grid(["softmax-nope"], [0])


@pytest.mark.parametrize("count", [1, 2, 3, 5, 36, 40])
def test_shards_partition_the_grid_deterministically(count):
    runs = plan_grid(CORE_MODELS, [42, 43, 44])
    shards = [shard_runs(runs, i, count) for i in range(1, count + 1)]
    flat = [run for shard in shards for run in shard]
    assert sorted(flat) == runs and len(flat) == len(set(flat))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert shards == [shard_runs(list(reversed(runs)), i, count) for i in range(1, count + 1)]


def test_parse_shard():
    assert parse_shard("2/4") == (2, 4)
    for bad in ("0/4", "5/4", "2", "a/b", "1/0"):
        with pytest.raises(ConfigError, match="I/N"):
            parse_shard(bad)


def test_interrupted_grid_redoes_no_finished_run(tmp_path, monkeypatch):
    out = tmp_path / "grid"
    models = ["favor-rpe", "relu-ape", "softmax-ape"]
    crashed = FakeTrain(crash_at=4, crash_on=Killed())
    monkeypatch.setattr(grid, "train", crashed)
    with pytest.raises(Killed):
        run_grid(base_config(tmp_path), models=models, seeds=[1, 2], out=out)
    done = [(c.model, c.seed) for c in crashed.calls[:3]]
    statuses = [r["status"] for r in json.loads((out / "grid_summary.json").read_text())["runs"]]
    assert statuses == ["finished"] * 3 + ["interrupted", "pending", "pending"]

    resumed = FakeTrain()
    monkeypatch.setattr(grid, "train", resumed)
    summary = run_grid(base_config(tmp_path), models=models, seeds=[1, 2], out=out)
    redone = [(c.model, c.seed) for c in resumed.calls]
    assert not set(done) & set(redone) and len(redone) == 3
    assert resumed.calls[0].resume is True  # the interrupted 4th run continues
    assert all(not c.resume for c in resumed.calls[1:])
    assert all(c.run_dir == out / c.model / f"seed{c.seed}" for c in resumed.calls)
    on_disk = json.loads((out / "grid_summary.json").read_text())
    assert on_disk["counts"] == {"finished": 6} == summary["counts"]

    again = FakeTrain()
    monkeypatch.setattr(grid, "train", again)
    run_grid(base_config(tmp_path), models=models, seeds=[1, 2], out=out)
    assert again.calls == []


def test_time_left_counts_only_runs_trained_from_scratch(tmp_path, monkeypatch, capsys):
    """A resumed run's wall time covers only its last part: the estimate of the time left
    must not average it in (it would promise the rest of the grid too early)."""
    clock = [0.0]
    monkeypatch.setattr(grid.time, "perf_counter", lambda: clock[0])
    out, models = tmp_path / "grid", ["relu-ape", "softmax-ape"]
    monkeypatch.setattr(grid, "train", FakeTrain(crash_at=1, crash_on=Killed()))
    with pytest.raises(Killed):
        run_grid(base_config(tmp_path), models=models, seeds=[1, 2], out=out)

    fake = FakeTrain()

    def timed(config: TrainConfig) -> dict:
        clock[0] += 10.0 if config.resume else 100.0
        return fake(config)

    monkeypatch.setattr(grid, "train", timed)
    capsys.readouterr()
    run_grid(base_config(tmp_path), models=models, seeds=[1, 2], out=out)
    lines = [line for line in capsys.readouterr().out.splitlines() if ": training (" in line]
    assert fake.calls[0].resume and len(lines) == 3
    assert " left)" not in lines[0]  # only the resumed run so far: no estimate
    assert lines[1].endswith("~3m20s left)")  # 2 runs x 100 s, not x the mean of 10 and 100
    assert lines[2].endswith("~1m40s left)")


def test_cli_passes_train_options_and_reports_failures(tmp_path, monkeypatch, capsys):
    class Failing(FakeTrain):
        def __call__(self, config):
            if config.model == "relu-ape":
                self.calls.append(config)
                raise RuntimeError("diverged")
            return super().__call__(config)

    fake = Failing()
    monkeypatch.setattr(grid, "train", fake)
    parser = argparse.ArgumentParser()
    add_grid_arguments(parser)
    argv = ["--models", "relu-ape,softmax-rope", "--seeds", "3,4", "--out", str(tmp_path)]
    argv += ["--epochs", "2", "--dim", "16", "--max-train-samples", "100", "--preset", "quick"]
    argv += ["--shard", "1/2", "--option", "rope_mode=mixed", "--qk-norm"]
    assert run_grid_command(parser.parse_args(argv)) == 1  # relu-ape seed 3 failed
    assert [(c.model, c.seed) for c in fake.calls] == [("relu-ape", 3), ("softmax-rope", 3)]
    config = fake.calls[1]
    assert (config.epochs, config.dim, config.max_train_samples) == (2, 16, 100)
    assert config.model_options == {"rope_mode": "mixed", "qk_norm": True}
    assert fake.calls[0].model_options == {"qk_norm": True}  # rope_mode is for RoPE models
    summary = json.loads((tmp_path / "grid_summary.shard-1-of-2.json").read_text())
    status = {(r["model"], r["seed"]): r["status"] for r in summary["runs"]}
    assert status == {
        ("relu-ape", 3): "failed",
        ("relu-ape", 4): "pending",
        ("softmax-rope", 3): "finished",
        ("softmax-rope", 4): "pending",
    }
    assert "[2/2] softmax-rope/seed3: done" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="none of the models"):
        run_grid_command(parser.parse_args(["--models", "relu-ape", *argv[2:]]))
    with pytest.raises(SystemExit):  # the grid resumes by itself
        parser.parse_args(["--resume"])
    with pytest.raises(SystemExit):
        parser.parse_args(["--run-name", "x"])


def test_a_signal_stops_the_grid_with_its_exit_code(tmp_path, monkeypatch, capsys):
    stop = TrainingInterrupted("interrupted by SIGTERM after step 3; saved last.ckpt", 15)
    monkeypatch.setattr(grid, "train", FakeTrain(crash_at=2, crash_on=stop))
    parser = argparse.ArgumentParser()
    add_grid_arguments(parser)
    argv = ["--models", "relu-ape", "--seeds", "1,2,3", "--out", str(tmp_path), "--jobs", "1"]
    args = parser.parse_args(argv)
    assert run_grid_command(args) == 128 + 15
    assert "run the same `rpevit grid` command to continue" in capsys.readouterr().err
    runs = json.loads((tmp_path / "grid_summary.json").read_text())["runs"]
    assert [r["status"] for r in runs] == ["finished", "interrupted", "pending"]
    resumed = FakeTrain()
    monkeypatch.setattr(grid, "train", resumed)
    assert run_grid_command(args) == 0
    assert [(c.seed, c.resume) for c in resumed.calls] == [(2, True), (3, None)]


def test_existing_runs_with_another_config_are_not_mixed_in(tmp_path, monkeypatch):
    monkeypatch.setattr(grid, "train", FakeTrain())
    run_grid(base_config(tmp_path, dim=16), models=["relu-ape"], seeds=[0], out=tmp_path)
    with pytest.raises(ConfigError, match="dim"):
        run_grid(base_config(tmp_path, dim=32), models=["relu-ape"], seeds=[0], out=tmp_path)
    fake = FakeTrain()
    monkeypatch.setattr(grid, "train", fake)
    config = base_config(tmp_path, dim=32, overwrite=True)
    run_grid(config, models=["relu-ape"], seeds=[0], out=tmp_path)
    assert len(fake.calls) == 1


class CrashAt(L.Callback):
    """Kills training after optimizer step ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step >= self.step:
            raise Killed


def test_tiny_real_grid_resumes_then_reports(tmp_path, monkeypatch):
    root = shared_data_dir()
    if root is None:
        pytest.skip("real MNIST not found (set RPEVIT_DATA_DIR)")
    config = base_config(
        tmp_path,
        data_dir=str(root),
        max_train_samples=256,
        max_val_samples=128,
        max_test_samples=128,
        batch_size=64,
        epochs=2,
        patch_size=7,
        dim=16,
        depth=1,
        heads=2,
        mlp_dim=32,
        checkpoint_every_n_steps=2,
        log_every_n_steps=1,
        inference_batch_size=16,
        progress_bar=False,
    )
    calls: list[TrainConfig] = []

    def crash_second_run(cfg: TrainConfig) -> dict:
        calls.append(cfg)
        return train(cfg, callbacks=[CrashAt(7)] if len(calls) == 2 else [])

    out = tmp_path / "grid"
    models = ["relu-rpe", "softmax-ape"]
    monkeypatch.setattr(grid, "train", crash_second_run)
    with pytest.raises(Killed):
        run_grid(config, models=models, seeds=[0], out=out)
    partial = out / "softmax-ape" / "seed0"
    assert load_checkpoint(partial / "checkpoints" / "last.ckpt")["global_step"] == 6
    assert not (partial / "metrics.json").exists()

    calls.clear()
    monkeypatch.setattr(grid, "train", lambda cfg: calls.append(cfg) or train(cfg))
    summary = run_grid(config, models=models, seeds=[0], out=out)
    assert [(c.model, c.resume) for c in calls] == [("softmax-ape", True)]
    assert summary["counts"] == {"finished": 2}
    assert (partial / "logs" / "csv" / "version_1" / "metrics.csv").is_file()

    report = build_report(out, tmp_path / "report", data_dir=root)
    rows = {row["model"]: row for row in report["rows"]}
    assert set(rows) == set(models)
    assert rows["softmax-ape"]["test_accuracy_mean"] == pytest.approx(
        json.loads((partial / "metrics.json").read_text())["test_accuracy"]
    )
    for name in ("curves", "tradeoff", "accuracy_heatmap", "attention_maps"):
        assert (tmp_path / "report" / f"{name}.png").stat().st_size > 10_000
    assert not [n for n in report["notes"] if "attention" in n], report["notes"]
    # a run kept as a record without checkpoints: its panel says so, the others are drawn
    for ckpt in (partial / "checkpoints").glob("*.ckpt"):
        ckpt.unlink()
    report = build_report(out, tmp_path / "report", data_dir=root)
    assert [n for n in report["notes"] if "attention" in n] == [
        f"attention maps of softmax-ape not drawn: {NO_CHECKPOINTS}"
    ]
    assert (tmp_path / "report" / "attention_maps.png").stat().st_size > 10_000


def test_parallel_jobs_run_every_shard_and_merge_the_summary(tmp_path):
    """``--jobs 2``: two worker processes each run one shard; together they finish the grid."""
    root = shared_data_dir()
    if root is None:
        pytest.skip("real MNIST not found")
    parser = argparse.ArgumentParser()
    add_grid_arguments(parser)
    argv = ["--models", "relu-ape,softmax-ape", "--seeds", "0", "--out", str(tmp_path)]
    argv += ["--jobs", "2", "--data-dir", str(root), "--preset", "quick", "--epochs", "1"]
    argv += ["--max-train-samples", "128", "--max-val-samples", "64", "--max-test-samples", "64"]
    argv += ["--dim", "16", "--depth", "1", "--heads", "2", "--mlp-dim", "16", "--no-progress"]
    assert run_grid_command(parser.parse_args(argv)) == 0
    summary = json.loads((tmp_path / "grid_summary.json").read_text())
    assert summary["jobs"] == 2 and summary["counts"] == {"finished": 2}
    assert [r["model"] for r in summary["runs"]] == ["relu-ape", "softmax-ape"]
    for shard in (1, 2):
        assert (tmp_path / f"grid_summary.shard-{shard}-of-2.json").is_file()
    for model in ("relu-ape", "softmax-ape"):
        metrics = json.loads((tmp_path / model / "seed0" / "metrics.json").read_text())
        assert metrics["config"]["threads"] == 1  # 2 cores / 2 workers
    with pytest.raises(ConfigError, match="--shard and --jobs > 1 do not combine"):
        run_grid_command(parser.parse_args([*argv, "--shard", "1/2"]))


def test_grids_with_different_settings_share_the_workers(tmp_path):
    """Two grids with different learning rates and options, run by two workers: every run is
    trained with its own grid's settings, in its own grid's folder, and each grid gets one
    merged summary of its own runs."""
    root = shared_data_dir()
    if root is None:
        pytest.skip("real MNIST not found")
    base = TrainConfig.from_dict(dict(
        dataset="mnist", data_dir=str(root), preset="quick", epochs=1, dim=16, depth=1, heads=2,
        mlp_dim=16, max_train_samples=128, max_val_samples=64, max_test_samples=64,
        progress_bar=False,
    ))  # fmt: skip
    first = GridSpec(dataclasses.replace(base, lr=1e-3), ("relu-ape",), (0, 1), tmp_path / "a")
    options = {"frpe_terms": 2}
    second = GridSpec(
        dataclasses.replace(base, lr=2e-3, model_options=options),
        ("relu-frpe",), (0,), tmp_path / "b", records=tmp_path / "records",
    )  # fmt: skip
    summaries = run_grids_parallel([first, second], jobs=2)
    assert [s["counts"] for s in summaries] == [{"finished": 2}, {"finished": 1}]
    for spec, seeds in ((first, (0, 1)), (second, (0,))):
        model = spec.models[0]
        summary = json.loads((spec.out / "grid_summary.json").read_text())
        assert [(r["model"], r["seed"]) for r in summary["runs"]] == [(model, s) for s in seeds]
        for seed in seeds:
            config = json.loads((spec.out / model / f"seed{seed}" / "metrics.json").read_text())
            assert config["config"]["lr"] == spec.config.lr
            assert config["config"]["threads"] == 1
    frpe = json.loads((tmp_path / "b" / "relu-frpe" / "seed0" / "config.json").read_text())
    assert frpe["model_options"]["frpe_terms"] == 2
    assert (tmp_path / "records" / "relu-frpe" / "seed0" / "metrics.json").is_file()


def test_feature_ablation_plans_one_run_per_m_where_the_kernel_has_features():
    models = ["softmax-ape", "favor-rope", "learnable-ape", "relu-ape", "exp-ape"]
    runs = plan_grid(models, [1], [32, 16])
    assert [r.name for r in runs] == [
        "exp-ape/seed1",
        "favor-rope/m16/seed1",
        "favor-rope/m32/seed1",
        "learnable-ape/m16/seed1",
        "learnable-ape/m32/seed1",
        "relu-ape/seed1",  # identity ReLU: m = head_dim, nothing to vary
        "softmax-ape/seed1",
    ]
    learned = plan_grid(["relu-ape"], [1], [16], {"feature_projection": "learned"})
    assert [(r.model, r.nb_features) for r in learned] == [("relu-ape", 16)]
    with pytest.raises(ConfigError, match="applies to none of the models"):
        plan_grid(["softmax-ape", "relu-ape", "linformer-ape"], [1], [16])
    with pytest.raises(ConfigError, match="feature counts must be >= 1, got 0"):
        plan_grid(["favor-ape"], [1], [16, 0])


def test_grid_cli_runs_the_ablation_into_per_m_folders(tmp_path, monkeypatch):
    fake = FakeTrain()
    monkeypatch.setattr(grid, "train", fake)
    out = tmp_path / "ablation"
    parser = argparse.ArgumentParser()
    add_grid_arguments(parser)
    argv = ["--models", "softmax-ape,favor-ape", "--nb-features", "64,16", "--jobs", "1"]
    argv += ["--out", str(out), "--preset", "quick", "--option", "redraw_interval=7"]
    assert run_grid_command(parser.parse_args(argv)) == 0
    calls = {(c.model, c.model_options.get("nb_features")): c for c in fake.calls}
    assert {key: c.run_dir for key, c in calls.items()} == {
        ("favor-ape", 16): out / "favor-ape" / "m16" / "seed42",
        ("favor-ape", 64): out / "favor-ape" / "m64" / "seed42",
        ("softmax-ape", None): out / "softmax-ape" / "seed42",
    }
    expected = {"nb_features": 16, "redraw_interval": 7, "redraw_stop": 0.5}  # policy recorded
    assert calls[("favor-ape", 16)].model_options == expected
    summary = json.loads((out / "grid_summary.json").read_text())
    assert summary["nb_features"] == [16, 64] and summary["counts"] == {"finished": 3}
    assert [r["nb_features"] for r in summary["runs"]] == [16, 64, None]

    again = FakeTrain()  # finished runs of an ablation are recognised as such
    monkeypatch.setattr(grid, "train", again)
    assert run_grid_command(parser.parse_args(argv)) == 0 and again.calls == []
    with pytest.raises(ConfigError, match="nb_features is set twice"):
        options = {"nb_features": 8}
        run_grid(
            base_config(tmp_path, model_options=options), models=["favor-ape"], nb_features=[16]
        )


def test_init_from_a_grid_folder_starts_each_run_from_its_softmax_source(tmp_path, monkeypatch):
    source, out = tmp_path / "softmax", tmp_path / "finetune"
    monkeypatch.setattr(grid, "train", FakeTrain())
    run_grid(
        base_config(tmp_path), models=["softmax-ape", "softmax-rope"], seeds=[1, 2], out=source
    )
    fake = FakeTrain()
    monkeypatch.setattr(grid, "train", fake)
    tuned = base_config(tmp_path, init_from=str(source))
    run_grid(tuned, models=["favor-rope", "relu-ape"], seeds=[1, 2], out=out)
    assert {(c.model, c.seed): c.init_from for c in fake.calls} == {
        (model, seed): str(source / f"softmax-{model.partition('-')[2]}" / f"seed{seed}")
        for model in ("favor-rope", "relu-ape")
        for seed in (1, 2)
    }
    with pytest.raises(ConfigError, match="without a finished softmax-rpe run for seed 1"):
        run_grid(tuned, models=["favor-rpe"], seeds=[1], out=tmp_path / "other")
    # a from-checkpoint run is not the result of a from-scratch request, nor the reverse
    with pytest.raises(ConfigError, match="init_from"):
        run_grid(base_config(tmp_path), models=["favor-rope"], seeds=[1], out=out)
    single = base_config(tmp_path, init_from=str(source / "softmax-ape" / "seed1"))
    monkeypatch.setattr(grid, "train", fake := FakeTrain())
    run_grid(single, models=["favor-ape"], seeds=[3], out=tmp_path / "one")
    assert fake.calls[0].init_from == str(source / "softmax-ape" / "seed1")


def test_records_let_a_fresh_machine_continue_the_grid(tmp_path, monkeypatch):
    """With --records, finished runs leave their records (no checkpoints) in the records
    folder; a grid in an empty runs folder (a fresh clone) restores them and trains only the
    rest; records made with another configuration are refused like any run folder."""
    records = tmp_path / "records"
    first = FakeTrain(crash_at=2, crash_on=Killed())  # the "session" ends during run 2
    monkeypatch.setattr(grid, "train", first)
    models = ["softmax-ape", "relu-ape"]
    with pytest.raises(Killed):
        run_grid(base_config(tmp_path), models=models, out=tmp_path / "a", records=records)
    assert sorted(p.relative_to(records).as_posix() for p in records.rglob("*.json")) == [
        "relu-ape/seed42/config.json",
        "relu-ape/seed42/metrics.json",
    ]
    assert not list(records.rglob("*.ckpt"))
    fresh = FakeTrain()
    monkeypatch.setattr(grid, "train", fresh)
    summary = run_grid(base_config(tmp_path), models=models, out=tmp_path / "b", records=records)
    assert [c.model for c in fresh.calls] == ["softmax-ape"]  # relu-ape came from the records
    assert summary["counts"] == {"finished": 2}
    assert (records / "softmax-ape" / "seed42" / "metrics.json").is_file()
    with pytest.raises(ConfigError, match="another configuration"):
        run_grid(base_config(tmp_path, epochs=9), models=models, out=tmp_path / "c",
                 records=records)  # fmt: skip


def test_the_records_the_study_scripts_commit_are_not_git_ignored():
    """Records are how a study continues on a fresh clone: they must be committable."""
    import shutil
    import subprocess

    root = Path(__file__).resolve().parents[1]
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout")
    paths = [
        "docs/results/cifar10-study/runs/favor-ape/seed42/metrics.json",
        "docs/results/mnist-study/runs/relu-rope/seed43/logs/csv/version_0/metrics.csv",
        "docs/results/budget-study/e9/favor/favor-rpe/seed44/test_predictions.npz",
        "docs/results/budget-study/tune/relu-ape/lr0.003-wu0.3/relu-ape/seed42/config.json",
        "docs/results/bf16-accuracy/records/softmax-ape/seed42/metrics.json",
        "docs/results/redraw-policy/records/e9-none/favor-ape/seed42/metrics.json",
    ]
    check = subprocess.run(["git", "check-ignore", *paths], cwd=root, capture_output=True)
    assert check.returncode == 1, f"ignored: {check.stdout.decode()}"  # 1: none is ignored
    ignored = subprocess.run(["git", "check-ignore", "-q", "runs/x/seed0/last.ckpt"], cwd=root)
    assert ignored.returncode == 0  # the working runs folder stays out of the repository
