"""Crash safety: runs killed (SIGKILL) or interrupted (SIGTERM, SIGINT) at any point resume
to exactly the metrics of an uninterrupted run; NaN losses stop the run cleanly.

Real ``rpevit train`` processes on a slice of MNIST; the kills "during a checkpoint write"
and "during evaluation" use a driver that SIGKILLs its own process at that exact point.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import shared_data_dir

from rpevit.errors import CheckpointError, NonFiniteLossError, TrainingInterrupted
from rpevit.training import load_checkpoint, train

pytestmark = pytest.mark.slow

#: 640 images, batch 32: 20 steps per epoch, 40 in all, last.ckpt every 4 steps.
ARGS = (
    "--model favor-ape --dataset mnist --preset quick --max-train-samples 640 "
    "--max-val-samples 128 --max-test-samples 200 --batch-size 32 --epochs 2 --lr 3e-3 "
    "--patch-size 7 --dim 32 --depth 1 --heads 2 --mlp-dim 64 --nb-features 16 "
    "--redraw-interval 2 --dropout 0.1 --checkpoint-every-n-steps 4 --threads 1 --no-progress"
).split()
TOTAL_STEPS = 40
COMPARED = ("val_accuracy", "test_accuracy", "log_likelihood", "mean_nll", "f1_macro", "aic")

DRIVER = """
import os, signal, sys
import torch
from rpevit.cli import main

mode, *argv = sys.argv[1:]
if mode == "kill-in-checkpoint-write":
    real_save = torch.save

    def save(obj, f, *args, **kwargs):  # write half a checkpoint, then die
        real_save(obj, f, *args, **kwargs)
        f.truncate(f.tell() // 2)
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    torch.save = save
elif mode == "kill-in-evaluation":
    from rpevit.training import evaluation

    def predict(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    evaluation.predict = predict
sys.exit(main(argv))
"""


def config(tmp_path: Path, run_name: str, **overrides) -> dict:
    """The in-process equivalent of ``ARGS``."""
    base = dict(
        model="favor-ape",
        dataset="mnist",
        preset="quick",
        data_dir=str(shared_data_dir()),
        out=str(tmp_path),
        run_name=run_name,
        max_train_samples=640,
        max_val_samples=128,
        max_test_samples=200,
        batch_size=32,
        epochs=2,
        lr=3e-3,
        patch_size=7,
        dim=32,
        depth=1,
        heads=2,
        mlp_dim=64,
        model_options={"nb_features": 16, "redraw_interval": 2, "dropout": 0.1},
        checkpoint_every_n_steps=4,
        threads=1,
        progress_bar=False,
    )
    return {**base, **overrides}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """Metrics of the uninterrupted run (one thread, like the subprocesses)."""
    if shared_data_dir() is None:
        pytest.skip("shared MNIST data not found")
    threads = torch.get_num_threads()
    try:
        yield train(config(tmp_path_factory.mktemp("reference"), "straight"))
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def command(tmp_path: Path, *extra: str, driver: str | None = None) -> list[str]:
    data = ["--data-dir", str(shared_data_dir()), "--out", str(tmp_path)]
    if driver is None:
        return [sys.executable, "-m", "rpevit.cli", "train", *ARGS, *data, *extra]
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    return [sys.executable, str(script), driver, "train", *ARGS, *data, *extra]


def wait_for(predicate, process: subprocess.Popen, timeout: float = 120.0) -> None:
    start = time.monotonic()
    while not predicate():
        assert process.poll() is None, process.communicate()[1][-2000:]
        assert time.monotonic() - start < timeout, "timed out"
        time.sleep(0.01)


def step_of(path: Path) -> int:
    return load_checkpoint(path)["global_step"]


def test_killed_and_interrupted_run_resumes_to_identical_metrics(tmp_path, reference, one_thread):
    run = tmp_path / "run"
    last = run / "checkpoints" / "last.ckpt"
    name = ["--run-name", "run"]

    # 1. SIGTERM as soon as training is under way: checkpoint at the next batch boundary.
    process = subprocess.Popen(command(tmp_path, *name), stderr=subprocess.PIPE, text=True)
    wait_for(last.is_file, process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM
    message = stderr.strip().splitlines()[-1]
    assert message.startswith("rpevit train: interrupted by SIGTERM after step ")
    assert f"rpevit train --resume {run}" in message and "Traceback" not in stderr
    stopped = step_of(last)
    assert 4 <= stopped < TOTAL_STEPS and f"after step {stopped} " in message

    # 2. SIGKILL in the middle of writing the next checkpoint: last.ckpt stays intact.
    process = subprocess.run(
        command(tmp_path, *name, "--resume", driver="kill-in-checkpoint-write"),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert process.returncode == -signal.SIGKILL, process.stderr[-2000:]
    assert step_of(last) == stopped  # the half-written file never replaced it
    assert len(list((run / "checkpoints").glob(".last.ckpt.*.tmp"))) == 1

    # 3. SIGKILL at an arbitrary moment once a newer checkpoint exists.
    process = subprocess.Popen(
        command(tmp_path, *name, "--resume"), stderr=subprocess.PIPE, text=True
    )
    wait_for(lambda: step_of(last) > stopped, process)
    process.kill()
    process.communicate(timeout=60)
    assert not (run / "metrics.json").exists()

    # 4. SIGKILL during the final evaluation, after training finished.
    process = subprocess.run(
        command(tmp_path, *name, "--resume", driver="kill-in-evaluation"),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert process.returncode == -signal.SIGKILL, process.stderr[-2000:]
    assert step_of(last) == TOTAL_STEPS and not (run / "metrics.json").exists()

    # 5. The last resume only evaluates, and gives the uninterrupted run's numbers.
    resumed = train(config(tmp_path, "run", resume=True))
    for key in COMPARED:
        assert resumed[key] == pytest.approx(reference[key], rel=1e-9, abs=1e-12), key
    assert resumed["checkpoint_step"] == reference["checkpoint_step"]
    assert (
        json.loads((run / "metrics.json").read_text())["test_accuracy"] == resumed["test_accuracy"]
    )
    assert not list(run.rglob(".*.tmp"))  # stale temporaries were cleaned up


class SendSignal(L.Callback):
    """Signals its own process after ``step`` optimizer steps, as Ctrl-C mid-step would."""

    def __init__(self, step: int, signum: int) -> None:
        self.step, self.signum = step, signum

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


def test_ctrl_c_saves_at_the_next_batch_boundary_and_resumes_exactly(
    tmp_path, reference, one_thread
):
    handler = signal.getsignal(signal.SIGINT)
    settings = config(tmp_path, "ctrl-c")
    with pytest.raises(TrainingInterrupted, match="interrupted by SIGINT after step 7 ") as info:
        train(settings, callbacks=[SendSignal(6, signal.SIGINT)])
    assert info.value.signum == signal.SIGINT
    assert signal.getsignal(signal.SIGINT) is handler  # handlers restored
    # the signal arrived after step 6's checks: step 7 ran completely and was saved
    assert step_of(tmp_path / "ctrl-c" / "checkpoints" / "last.ckpt") == 7
    resumed = train({**settings, "resume": True})
    for key in COMPARED:
        assert resumed[key] == pytest.approx(reference[key], rel=1e-9, abs=1e-12), key


class PoisonBatch(L.Callback):
    """Puts a NaN into the input of the ``step``-th optimizer step (1-based)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step + 1 == self.step:
            batch[0][0, 0, 0, 0] = math.nan


def test_nan_loss_stops_with_the_step_and_the_last_good_checkpoint(tmp_path, one_thread):
    if shared_data_dir() is None:
        pytest.skip("shared MNIST data not found")
    settings = config(tmp_path, "nan", epochs=1)
    with pytest.raises(NonFiniteLossError) as info:
        train(settings, callbacks=[PoisonBatch(6)])
    last = tmp_path / "nan" / "checkpoints" / "last.ckpt"
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("training loss is nan at step 6 (epoch 0); the step was not applied")
    assert f"last good checkpoint: {last} (after step 4)" in message
    assert f"rpevit train --resume {tmp_path / 'nan'} --lr" in message
    state = load_checkpoint(last)
    assert state["global_step"] == 4
    weights = [t for t in state["state_dict"].values() if t.is_floating_point()]
    assert all(torch.isfinite(t).all() for t in weights)
    assert not (tmp_path / "nan" / "metrics.json").exists()


def test_unreadable_last_checkpoint_falls_back_to_best(tmp_path, one_thread, capsys):
    if shared_data_dir() is None:
        pytest.skip("shared MNIST data not found")
    run = tmp_path / "straight"
    train(config(tmp_path, "straight", epochs=1))
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])  # e.g. a copy cut short
    resumed = train(config(tmp_path, "straight", epochs=1, resume=True))
    assert "last.ckpt" in capsys.readouterr().err
    assert resumed["checkpoint_step"] == 20  # best.ckpt: the end of the only epoch
    (run / "checkpoints" / "best.ckpt").write_bytes(b"garbage")
    last.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="no intact checkpoint to resume .* --overwrite"):
        train(config(tmp_path, "straight", epochs=1, resume=True))


def _stat(pid: int) -> list[str] | None:
    """Fields of ``/proc/<pid>/stat`` after the command name (state, parent pid, ...)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


def children(pid: int) -> list[int]:
    """Live child processes of ``pid``."""
    pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]
    return [c for c in pids if (s := _stat(c)) is not None and int(s[1]) == pid and s[0] != "Z"]


GRIDS_DRIVER = """
import json, sys
from pathlib import Path
from rpevit.experiments.parallel import GridSpec, run_grids_parallel
from rpevit.training import TrainConfig

base, out, *models = sys.argv[1:]
config = TrainConfig.from_dict(json.loads(base))
specs = [GridSpec(config, (m,), (0,), Path(out) / f"grid{i}") for i, m in enumerate(models)]
run_grids_parallel(specs, jobs=2)
"""


def _no_orphans(process: subprocess.Popen, workers: list[int]) -> str:
    """SIGKILL the grid's parent; the workers must exit within a minute. Its stderr."""
    process.kill()
    start = time.monotonic()
    while any(alive(pid) for pid in workers) and time.monotonic() - start < 60:
        time.sleep(0.1)
    orphans = [pid for pid in workers if alive(pid)]
    for pid in orphans:  # do not leave them training on a failure
        os.kill(pid, signal.SIGKILL)
    _, stderr = process.communicate(timeout=60)
    assert workers and not orphans, "workers outlived the grid"
    return stderr


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc (Linux)")
def test_killed_parent_of_several_grids_starts_no_queued_shard(tmp_path):
    """Three one-run grids on two workers (as the budget study queues them), the parent
    SIGKILLed: the two running shards checkpoint, and no worker takes the queued third."""
    if shared_data_dir() is None:
        pytest.skip("shared MNIST data not found")
    models = ("relu-ape", "softmax-ape", "favor-ape")
    base = json.dumps(config(tmp_path, "unused", epochs=10000, model_options={}))
    argv = [sys.executable, "-c", GRIDS_DRIVER, base, str(tmp_path), *models]
    process = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    lasts = [tmp_path / f"grid{i}" / m / "seed0" / "checkpoints" / "last.ckpt"
             for i, m in enumerate(models)]  # fmt: skip
    wait_for(lambda: all(p.is_file() for p in lasts[:2]), process, timeout=240)
    stderr = _no_orphans(process, children(process.pid))
    assert stderr.count("SIGTERM received: saving a checkpoint") == 2, stderr[-2000:]
    assert all(step_of(p) > 0 for p in lasts[:2])
    assert not lasts[2].exists(), "a worker trained a grid queued before the parent died"


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc (Linux)")
def test_killed_grid_parent_leaves_no_orphan_workers(tmp_path):
    """``rpevit grid --jobs 2`` SIGKILLed: its workers checkpoint and exit, not train on."""
    if shared_data_dir() is None:
        pytest.skip("shared MNIST data not found")
    models = ("relu-ape", "softmax-ape")
    grid_args = ["--models", ",".join(models), "--seeds", "0", "--jobs", "2", "--epochs", "10000"]
    pairs = dict(zip(ARGS[:-1:2], ARGS[1::2], strict=True))  # option-value pairs, then a flag
    dropped = ("--model", "--epochs", "--nb-features", "--redraw-interval")
    args = [x for k, v in pairs.items() if k not in dropped for x in (k, v)]
    argv = [sys.executable, "-m", "rpevit.cli", "grid", *args, *grid_args, ARGS[-1]]
    argv += ["--data-dir", str(shared_data_dir()), "--out", str(tmp_path)]
    process = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    lasts = [tmp_path / m / "seed0" / "checkpoints" / "last.ckpt" for m in models]
    wait_for(lambda: all(p.is_file() for p in lasts), process, timeout=240)
    stderr = _no_orphans(process, children(process.pid))
    assert stderr.count("SIGTERM received: saving a checkpoint") == len(models), stderr[-2000:]
    assert all(step_of(p) > 0 for p in lasts)  # and the checkpoints are readable
