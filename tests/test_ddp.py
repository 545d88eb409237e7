"""Real 2-process DDP (gloo, CPU) against a single process with the same global batch."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import shared_data_dir

from rpevit.training import load_checkpoint, train

pytestmark = pytest.mark.slow

#: Run as ``python driver.py CONFIG_JSON``; Lightning's DDP launcher re-runs that command
#: for rank 1. Each rank records its first batch's labels and its final buffers.
DRIVER = """
import json, sys
from pathlib import Path
import lightning as L
import torch
from rpevit.training import train


class Record(L.Callback):
    def __init__(self, out):
        self.out, self.first_labels = Path(out), None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.first_labels is None:
            self.first_labels = batch[1].tolist()

    def on_train_end(self, trainer, pl_module):
        buffers = {k: v.clone() for k, v in pl_module.model.named_buffers()}
        torch.save(
            {"labels": self.first_labels, "buffers": buffers, "world": trainer.world_size},
            self.out / f"rank{trainer.global_rank}.pt",
        )


config = json.loads(sys.argv[1])
train(config, callbacks=[Record(config["out"])])
"""


def base_config(out: Path, **overrides) -> dict:
    return {
        "model": "favor-ape",
        "dataset": "mnist",
        "preset": "quick",
        "data_dir": str(shared_data_dir()),
        "out": str(out),
        "run_name": "run",
        "max_train_samples": 256,
        "max_val_samples": 101,  # odd: the two ranks evaluate 51 and 50 images
        "max_test_samples": 100,
        "epochs": 2,
        "lr": 3e-3,
        "patch_size": 7,
        "dim": 32,
        "depth": 1,
        "heads": 2,
        "mlp_dim": 64,
        # 8 steps: a redraw at step 3, none from step 5 on (redraw_stop), so step 6 keeps draw 1
        "model_options": {"nb_features": 16, "redraw_interval": 3, "redraw_stop": 0.7},
        "threads": 1,
        "accelerator": "cpu",
        "progress_bar": False,
        "log_every_n_steps": 1,
        **overrides,
    }


class FirstBatch(L.Callback):
    """Labels of the first training batch."""

    def __init__(self) -> None:
        self.labels: list[int] | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.labels is None:
            self.labels = batch[1].tolist()


def csv_rows(run: Path) -> list[dict[str, str]]:
    with open(run / "logs" / "csv" / "version_0" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def logged(rows: list[dict[str, str]], key: str) -> list[float]:
    return [float(r[key]) for r in rows if r.get(key)]


def test_two_process_ddp_matches_one_process_with_the_same_global_batch(tmp_path):
    if shared_data_dir() is None:
        pytest.skip("shared MNIST data not found")
    ddp_out = tmp_path / "ddp"
    ddp_out.mkdir()
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    config = base_config(ddp_out, batch_size=32, devices=2, strategy="ddp")
    process = subprocess.run(
        [sys.executable, str(driver), json.dumps(config)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert process.returncode == 0, process.stderr[-3000:]

    first = FirstBatch()
    threads = torch.get_num_threads()
    try:
        single_config = base_config(tmp_path / "single", batch_size=64, devices=1)
        single = train(single_config, callbacks=[first])
    finally:
        torch.set_num_threads(threads)
    ddp_run, single_run = ddp_out / "run", tmp_path / "single" / "run"
    ddp = json.loads((ddp_run / "metrics.json").read_text())

    # The loader shards by rank: together the ranks' first batches are the single batch.
    ranks = [torch.load(ddp_out / f"rank{r}.pt") for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert len(ranks[0]["labels"]) == len(ranks[1]["labels"]) == 32
    assert sorted(ranks[0]["labels"] + ranks[1]["labels"]) == sorted(first.labels)
    assert ranks[0]["labels"] != ranks[1]["labels"]
    # FAVOR+ features (and every other buffer) are identical on every rank without syncing.
    assert ranks[0]["buffers"].keys() == ranks[1]["buffers"].keys()
    for key, value in ranks[0]["buffers"].items():
        assert torch.equal(value, ranks[1]["buffers"][key]), key
    assert any("projection" in k for k in ranks[0]["buffers"])

    # Same training: weights, buffers and all metrics agree up to float summation order.
    a = load_checkpoint(ddp_run / "checkpoints" / "last.ckpt")
    b = load_checkpoint(single_run / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == 8
    for key, value in b["state_dict"].items():
        assert torch.allclose(a["state_dict"][key].float(), value.float(), atol=1e-5), key
    assert ddp["test_accuracy"] == single["test_accuracy"]
    assert ddp["log_likelihood"] == pytest.approx(single["log_likelihood"], rel=1e-5)
    # Logged validation metrics are reduced over both ranks' shards (51 + 50 images), and
    # the training loss over both ranks' halves of each batch.
    ddp_rows, single_rows = csv_rows(ddp_run), csv_rows(single_run)
    for key in ("val/acc", "val/loss", "train/loss_epoch"):
        assert logged(ddp_rows, key) == pytest.approx(logged(single_rows, key), abs=1e-5), key
    assert ddp["val_accuracy"] == pytest.approx(logged(ddp_rows, "val/acc")[-1])

    # Only rank 0 wrote files: the same set of files as the single-process run.
    def files(run: Path) -> set[str]:
        return {str(p.relative_to(run)) for p in run.rglob("*") if "events.out" not in p.name}

    assert files(ddp_run) == files(single_run)
    assert len(list((ddp_run / "logs" / "tensorboard").glob("events.out.*"))) == 1
