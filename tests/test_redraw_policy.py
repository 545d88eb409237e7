"""The redraw-policy measurement (rpevit.experiments.redraw): per-run rows from records, the
summary table, and the draw spread of a trained FAVOR+ run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import shared_data_dir

from rpevit.attention import FavorKernel
from rpevit.experiments.redraw import (
    DRAWS_FILE,
    EVAL_DRAW_BASE,
    draw_spread,
    policy_rows,
    summary_table,
    write_policy_report,
)
from rpevit.runs import RunDir
from rpevit.training import train


def record(study: Path, grid: str, model: str, seed: int, curve: list[float], **options) -> Path:
    """A finished run's records as the policy study keeps them (no checkpoints)."""
    run = study / grid / model / f"seed{seed}"
    (run / "logs" / "csv" / "version_0").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"model": model, "model_options": options}))
    metrics = {"model": model, "seed": seed, "test_accuracy": 0.5, "dataset": "cifar10"}
    (run / "metrics.json").write_text(json.dumps(metrics))
    lines = ["epoch,step,val/acc"] + [f"{e},{e * 10 + 9},{a}" for e, a in enumerate(curve)]
    (run / "logs" / "csv" / "version_0" / "metrics.csv").write_text("\n".join(lines) + "\n")
    return run


def test_policy_rows_and_table_by_hand(tmp_path):
    old = {"redraw_interval": 1000, "redraw_stop": 1.0}
    none = {"redraw_interval": 0, "redraw_stop": 1.0}
    record(tmp_path, "e3-old", "favor-ape", 1, [0.40, 0.53, 0.41], **old)
    record(tmp_path, "e3-old", "favor-ape", 2, [0.40, 0.55, 0.43], **old)
    run = record(tmp_path, "e3-none", "favor-ape", 1, [0.40, 0.50, 0.56], **none)
    (run / DRAWS_FILE).write_text(
        json.dumps({"stored_draw_val_accuracy": 0.56, "fresh_draw_val_accuracy": [0.5, 0.52]})
    )
    record(tmp_path, "not-a-grid", "favor-ape", 1, [0.1])  # outside the e<epochs>-<policy> layout
    rows = policy_rows(tmp_path)
    assert [(r["policy"], r["seed"]) for r in rows] == [("none", 1), ("old", 1), ("old", 2)]
    first = rows[1]
    assert (first["best_epoch"], first["best_val"], first["final_val"]) == (2, 0.53, 0.41)
    assert first["redraw_interval"] == 1000 and first["fresh_draw_val_mean"] is None
    assert rows[0]["fresh_draw_val_mean"] == pytest.approx(0.51)
    table = summary_table(rows)
    assert "| 3 | old | 1000 | 1.0 | favor-ape | 2 | 42.00 ± 1.41 | 54.00 ± 1.41 | 2 | — |" in table
    assert (
        "| 3 | none | 0 | 1.0 | favor-ape | 1 | 56.00 | 56.00 | 0 | 51.00; 50.00..52.00 |" in table
    )
    write_policy_report(tmp_path, tmp_path / "report")
    assert (tmp_path / "report" / "policy.csv").read_text().count("\n") == 4  # header + 3 rows
    png = (tmp_path / "report" / "policy_curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_draw_spread_evaluates_fresh_draws_of_the_final_model(tmp_path, monkeypatch):
    root = shared_data_dir()
    if root is None:
        pytest.skip("shared MNIST data not found")
    config = dict(
        model="favor-ape", dataset="mnist", preset="quick", data_dir=str(root), out=str(tmp_path),
        run_name="run", max_train_samples=256, max_val_samples=200, max_test_samples=100,
        epochs=1, batch_size=64, patch_size=7, dim=16, depth=1, heads=2, mlp_dim=32,
        progress_bar=False, model_options={"nb_features": 8, "redraw_interval": 0},
    )  # fmt: skip
    train(config)
    run = RunDir(tmp_path / "run")
    drawn = []
    redraw = FavorKernel.redraw
    monkeypatch.setattr(
        FavorKernel, "redraw", lambda self, index: drawn.append(index) or redraw(self, index)
    )
    result = draw_spread(run, draws=3)
    assert drawn == [EVAL_DRAW_BASE, EVAL_DRAW_BASE + 1, EVAL_DRAW_BASE + 2]  # one layer
    assert json.loads((run.path / DRAWS_FILE).read_text()) == result
    metrics = run.read_metrics()
    assert result["stored_draw_val_accuracy"] == pytest.approx(metrics.last_val_accuracy)
    fresh = result["fresh_draw_val_accuracy"]
    assert len(fresh) == 3 and all(0 <= a <= 1 for a in fresh)
