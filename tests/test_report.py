"""Report: tables and figures from synthetic run folders, statistics, attention weights."""

from __future__ import annotations

import csv
import itertools
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import shared_data_dir
from einops import rearrange
from matplotlib.figure import Figure
from matplotlib.transforms import Bbox

from rpevit import create_model
from rpevit.errors import ConfigError
from rpevit.positions.base import TokenGrid
from rpevit.registry import CORE_MODELS, RECIPE_OPTIONS
from rpevit.report import (
    attention_weights,
    build_report,
    cls_attention_map,
    gap_closed,
    load_runs,
    mean_std,
    read_curves,
)
from rpevit.report.build import NO_CHECKPOINTS
from rpevit.report.summary_plots import LABEL_PLACES, separate_labels

#: Test accuracy per (model, seed); every other model gets 0.9 with seed 0.
ACCURACY = {
    ("softmax-ape", 0): 0.98,
    ("softmax-ape", 1): 0.99,
    ("softmax-rpe", 0): 0.97,
    ("favor-ape", 0): 0.90,
    ("favor-rpe", 0): 0.95,
    ("favor-rpe", 1): 0.96,
    ("favor-rpe", 2): 0.91,
    ("favor-string", 0): 0.88,
    ("relu-ape", 0): 0.985,  # equals the softmax-ape mean: gap closed undefined
}


def write_run(
    root: Path,
    model: str,
    seed: int,
    acc: float,
    dataset: str = "mnist",
    *,
    epochs: int = 3,
    options: dict | None = None,
    **extra,
) -> Path:
    """A run folder as training leaves it: config.json, metrics.json (plus ``extra``), CSV logs;
    ``<root>/<model>/m<m>/seed<seed>`` when ``options`` set nb_features, as the grid does."""
    m = (options or {}).get("nb_features")
    run = root / model / (f"m{m}" if m else "") / f"seed{seed}"
    (run / "logs" / "csv" / "version_0").mkdir(parents=True)
    config = {"model": model, "seed": seed, "dataset": dataset, "dim": 64, "epochs": epochs}
    config["model_options"] = options or {}
    (run / "config.json").write_text(json.dumps(config))
    metrics = {
        "model": model,
        "seed": seed,
        "dataset": dataset,
        "val_accuracy": acc - 0.01,
        "test_accuracy": acc,
        "precision_macro": acc,
        "recall_macro": acc,
        "f1_macro": acc,
        "log_likelihood": -1000.0 * (1 - acc),
        "aic": 2000.0,
        "bic": 3000.0,
        "params": {"trainable": 1000 + seed, "total": 1000 + seed},
        "flops_per_image": 2e6,
        "train_seconds_per_epoch": 10.0,
        "inference_ms_per_sample": 0.1 + 0.01 * len(model),
        "peak_memory_mb": 500.0,
        "config": config,
        "epochs": epochs,
        **extra,
    }
    (run / "metrics.json").write_text(json.dumps(metrics))
    lines = ["epoch,step,train/loss_step,val/acc,val/loss"]
    for epoch in range(3):
        lines.append(f"{epoch},{10 * epoch + 5},1.0,,")
        lines.append(f"{epoch},{10 * epoch + 9},,{acc - 0.1 / (epoch + 1)},{1 / (epoch + 1)}")
    (run / "logs" / "csv" / "version_0" / "metrics.csv").write_text("\n".join(lines) + "\n")
    return run


@pytest.fixture
def synthetic_runs(tmp_path) -> Path:
    root = tmp_path / "runs"
    for model in CORE_MODELS:
        seeds = sorted({s for m, s in ACCURACY if m == model}) or [0]
        for seed in seeds:
            write_run(root, model, seed, ACCURACY.get((model, seed), 0.9))
    (root / "relu-rope" / "seed9" / "checkpoints").mkdir(parents=True)  # unfinished run
    (root / "relu-rope" / "seed9" / "config.json").write_text("{}")
    return root


def test_mean_std_and_gap_closed_by_hand():
    mean, std = mean_std([0.95, 0.96, 0.91, None])
    assert mean == pytest.approx(0.94) and std == pytest.approx(math.sqrt(0.0007))
    assert mean_std([0.5]) == (0.5, None) and mean_std([None]) == (None, None)
    acc = {"softmax-ape": 0.985, "favor-ape": 0.90, "favor-rpe": 0.94, "relu-ape": 0.985}
    assert gap_closed(acc, "favor", "rpe") == pytest.approx(0.04 / 0.085)
    assert gap_closed(acc, "favor", "rope") is None  # missing model
    assert gap_closed({**acc, "relu-rpe": 0.99}, "relu", "rpe") is None  # denominator 0
    ahead = {**acc, "favor-ape": 0.99}  # the Performer beats softmax: no gap to close
    assert gap_closed(ahead, "favor", "rpe") is None


def test_report_tables_from_synthetic_runs(synthetic_runs, tmp_path):
    out = tmp_path / "report"
    summary = build_report(synthetic_runs, out, data_dir=tmp_path / "no-data")
    with (out / "results.csv").open() as f:
        rows = {row["model"]: row for row in csv.DictReader(f)}
    assert list(rows) == CORE_MODELS  # registry order, one row per model
    softmax, favor_rpe = rows["softmax-ape"], rows["favor-rpe"]
    assert float(softmax["test_accuracy_mean"]) == pytest.approx(0.985)
    assert float(softmax["test_accuracy_std"]) == pytest.approx(math.sqrt(0.00005))
    assert softmax["runs"] == "2" and softmax["seeds"] == "0 1"
    assert float(favor_rpe["test_accuracy_mean"]) == pytest.approx(0.94)
    assert float(favor_rpe["test_accuracy_std"]) == pytest.approx(math.sqrt(0.0007))
    assert rows["relu-ape"]["test_accuracy_std"] == ""  # single seed
    assert float(favor_rpe["params_mean"]) == pytest.approx(1001)
    # gap to softmax with the same position encoding
    assert float(favor_rpe["gap_to_softmax"]) == pytest.approx(0.94 - 0.97)
    assert softmax["gap_to_softmax"] == "" and softmax["gap_closed"] == ""
    # gap closed = (acc(K-X) - acc(K-ape)) / (acc(softmax-ape) - acc(K-ape))
    assert float(favor_rpe["gap_closed"]) == pytest.approx((0.94 - 0.90) / (0.985 - 0.90))
    assert float(rows["favor-string"]["gap_closed"]) == pytest.approx(-0.02 / 0.085)
    assert float(rows["favor-rope"]["gap_closed"]) == pytest.approx(0.0)
    assert rows["relu-rpe"]["gap_closed"] == "n/a"  # relu-ape == softmax-ape
    assert rows["favor-ape"]["gap_closed"] == ""
    assert summary["gap_closed"]["favor"]["rpe"] == pytest.approx(0.04 / 0.085)

    text = (out / "results.md").read_text()
    for model in CORE_MODELS:
        assert f"| {model} |" in text
    assert "98.50 ± 0.71" in text  # softmax-ape test accuracy in %
    assert "| favor | 0.47 | -0.24 | 0.00 |" in text and "| relu | n/a | n/a | n/a |" in text
    assert any("unfinished run" in note for note in summary["notes"])
    assert any("attention maps skipped" in note for note in summary["notes"])
    for name in ("curves", "tradeoff", "accuracy_heatmap"):
        png = out / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
        assert f"({name}.png)" in text


def test_missing_models_and_mixed_inputs(tmp_path):
    root = tmp_path / "runs"
    write_run(root, "favor-ape", 0, 0.9)
    summary = build_report(root, data_dir=tmp_path / "no-data")
    assert [row["model"] for row in summary["rows"]] == ["favor-ape"]
    assert summary["gap_closed"]["favor"]["rpe"] is None
    assert (root / "report" / "accuracy_heatmap.png").stat().st_size > 0
    write_run(root, "relu-ape", 0, 0.9, dataset="cifar10")
    with pytest.raises(ConfigError, match="several data sets"):
        load_runs(root)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no finished runs"):
        load_runs(tmp_path / "empty")
    with pytest.raises(ConfigError, match="does not exist"):
        load_runs(tmp_path / "missing")


def test_a_report_from_records_without_checkpoints_draws_no_empty_attention_figure(tmp_path):
    """Committed study records hold no checkpoints: with the data at hand, one note says why
    there are no attention maps and how to get them, and no figure of empty panels is drawn."""
    data = shared_data_dir()
    if data is None:
        pytest.skip("real MNIST not found (set RPEVIT_DATA_DIR)")
    runs = tmp_path / "runs"
    for model in ("softmax-ape", "favor-ape"):
        for seed in (0, 1):
            write_run(runs, model, seed, 0.9)
    summary = build_report(runs, tmp_path / "report", data_dir=data)
    assert [n for n in summary["notes"] if "attention" in n] == [
        f"attention maps skipped: {NO_CHECKPOINTS}"
    ]
    assert not (tmp_path / "report" / "attention_maps.png").exists()


def test_curves_keep_epochs_from_before_a_resume(tmp_path):
    logs = tmp_path / "logs" / "csv"
    header = "epoch,step,val/acc,val/loss\n"
    for version, rows in ((10, "2,29,0.7,1.0\n"), (0, "0,9,0.5,2.0\n1,19,0.6,1.5\n"),
                          (1, "1,19,0.65,1.4\n")):  # fmt: skip
        (logs / f"version_{version}").mkdir(parents=True)
        (logs / f"version_{version}" / "metrics.csv").write_text(header + rows)
    curves = read_curves(tmp_path)
    assert curves == {
        0: {"val_acc": 0.5, "val_loss": 2.0},
        1: {"val_acc": 0.65, "val_loss": 1.4},
        2: {"val_acc": 0.7, "val_loss": 1.0},
    }


@pytest.mark.parametrize("name", CORE_MODELS)
def test_attention_weights_reproduce_the_attention_output(name):
    torch.manual_seed(0)
    model = create_model(
        name, image_size=12, in_chans=1, num_classes=3, patch_size=4, dim=8, depth=2, heads=2,
        mlp_dim=16, qk_norm=name.startswith("favor"),
    ).double()  # fmt: skip
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    attn, grid = model.blocks[-1].attn, TokenGrid(3, 3, 1)
    x = torch.randn(2, 10, 8, dtype=torch.float64)
    v = rearrange(attn.qkv(x), "b n (three h d) -> three b h n d", three=3, h=2)[2]
    weights = attention_weights(attn, x, grid)
    assert torch.allclose(weights.sum(-1), torch.ones(2, 2, 10, dtype=torch.float64))
    rebuilt = attn.proj(rearrange(weights @ v, "b h n d -> b n (h d)"))
    assert torch.allclose(rebuilt, attn(x, grid), atol=1e-10)
    cls_map = cls_attention_map(model, torch.randn(1, 12, 12, dtype=torch.float64))
    assert cls_map.shape == (2, 3, 3) and bool((cls_map >= 0).all())


def test_point_labels_end_beside_their_points_and_over_no_other_label():
    """Variants with nearly equal accuracy and time: six labels on one spot (more than the
    four places beside a point), a label that must leave its first place so as not to hide a
    nearby point, and a lone point that keeps the first place."""
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.set(xlim=(0, 1), ylim=(0, 1))
    spots = [(0.5, 0.5), (0.505, 0.502), (0.51, 0.498), (0.5, 0.5), (0.5, 0.5), (0.5, 0.51)]
    spots += [(0.2, 0.8), (0.26, 0.825)]  # the first's label right-up would hide the second
    spots.append((0.9, 0.1))
    labels = [
        ax.annotate(f"variant-{i}", xy, xytext=(6, 4), textcoords="offset points")
        for i, xy in enumerate(spots)
    ]
    separate_labels(fig, labels)
    renderer = fig.canvas.get_renderer()
    boxes = [label.get_window_extent(renderer) for label in labels]
    assert not any(a.overlaps(b) for a, b in itertools.combinations(boxes, 2))
    for box, xy in zip(boxes, spots, strict=True):  # no label wanders off (< 1 inch away)
        x, y = ax.transData.transform(xy)
        gap = max(box.x0 - x, x - box.x1, 0), max(box.y0 - y, y - box.y1, 0)
        assert math.hypot(*gap) < fig.dpi
    assert labels[-1].xyann == LABEL_PLACES[0][:2]
    x, y = ax.transData.transform(spots[-2])
    assert not boxes[-3].overlaps(Bbox.from_bounds(x - 5, y - 5, 10, 10))


def test_peak_memory_only_where_it_is_the_runs_own(tmp_path):
    """An older CPU record holds the peak of a grid worker that trained other runs first (its
    value follows the order of the runs, not the model): the report leaves it out."""
    runs = tmp_path / "runs"
    write_run(runs, "softmax-ape", 0, 0.9, peak_memory_mb=300.0, peak_memory_per_run=True)
    write_run(runs, "favor-ape", 0, 0.9, peak_memory_mb=3000.0)  # no flag: older record
    write_run(runs, "relu-ape", 0, 0.9, device="cuda:0 (NVIDIA H100)")  # GPU: reset per run
    summary = build_report([runs], tmp_path / "report")
    peak = {row["variant"]: row["peak_memory_mb_mean"] for row in summary["rows"]}
    assert peak == {"softmax-ape": 300.0, "favor-ape": None, "relu-ape": 500.0}
    cost = (tmp_path / "report" / "results.md").read_text().split("## Cost")[1]
    assert "| favor-ape | 1 |" in cost and "3,000" not in cost and "| 300 |" in cost


@pytest.mark.filterwarnings("error::UserWarning")  # e.g. an empty panel's empty legend
def test_ablation_from_checkpoint_and_resolution_sections(tmp_path):
    scratch, tuned, ablation = tmp_path / "scratch", tmp_path / "tuned", tmp_path / "ablation"
    write_run(scratch, "softmax-ape", 0, 0.98)
    write_run(scratch, "favor-ape", 0, 0.90)
    source = {"model": "softmax-ape", "epochs": 2, "path": "x/best.ckpt", "transferred": 10}
    write_run(tuned, "favor-ape", 0, 0.95, epochs=1, init_from=source)
    write_run(tuned, "favor-rope", 0, 0.93, epochs=2, init_from={**source, "model": "softmax-rope"})
    for m, acc in ((16, 0.80), (32, 0.85), (64, 0.88)):
        cost = {"train_seconds_per_epoch": m / 8, "peak_memory_mb": 100.0 + m, "nb_features": m}
        write_run(ablation, "favor-ape", 0, acc, options={"nb_features": m}, **cost)
    seed1 = {"train_seconds_per_epoch": 2.0, "nb_features": 16}
    write_run(ablation, "favor-ape", 1, 0.82, options={"nb_features": 16}, **seed1)
    for model, accs in (("softmax-ape", (0.98, 0.60)), ("favor-ape", (0.90, 0.70))):
        results = [
            {"image_size": size, "test_accuracy": acc}
            for size, acc in zip((28, 42), accs, strict=True)
        ]
        evaluation = {"resolution_transfer": {"resize_mode": "pad", "results": results}}
        evaluation["resolution_transfer"]["trained_image_size"] = [28, 28]
        (scratch / model / "seed0" / "evaluation.json").write_text(json.dumps(evaluation))

    summary = build_report([scratch, tuned, ablation], tmp_path / "report")
    variants = [row["variant"] for row in summary["rows"]]
    assert variants == [
        "softmax-ape",
        "favor-ape",
        "favor-ape m=16",
        "favor-ape m=32",
        "favor-ape m=64",
        "favor-ape from softmax-ape",
        "favor-rope from softmax-rope",
    ]
    rows = {row["variant"]: row for row in summary["rows"]}
    assert rows["favor-ape m=16"]["test_accuracy_mean"] == pytest.approx(0.81)
    assert rows["favor-ape m=16"]["runs"] == 2
    assert rows["favor-ape"]["gap_to_softmax"] == pytest.approx(-0.08)
    assert rows["favor-ape from softmax-ape"]["gap_closed"] is None  # only plain variants

    ablation_rows = summary["feature_ablation"]
    assert [(r["nb_features"], r["train_seconds_per_epoch_mean"]) for r in ablation_rows] == [
        (16, 2.0),
        (32, 4.0),
        (64, 8.0),
    ]
    comparison = {r["variant"]: r for r in summary["init_comparison"]}
    ape = comparison["favor-ape from softmax-ape"]
    assert (ape["scratch_epochs"], ape["source_epochs"], ape["finetune_epochs"]) == (3, 2, 1)
    assert ape["total_epochs"] == 3 and ape["equal_epochs"] is True
    assert ape["difference"] == pytest.approx(0.05)
    rope = comparison["favor-rope from softmax-rope"]
    assert rope["scratch_accuracy"] is None and rope["difference"] is None  # no scratch run
    transfer = summary["resolution_transfer"]
    assert transfer["accuracy"] == {
        "softmax-ape": {28: 0.98, 42: 0.60},
        "favor-ape": {28: 0.90, 42: 0.70},
    }
    assert transfer["trained_image_sizes"] == [28]

    text = (tmp_path / "report" / "results.md").read_text()
    assert "| favor-ape | 16 | 2 | 81.00 ± 1.41 | 2.0 ± 0.0 |" in text
    assert "| favor-ape | 3 | 90.00 | softmax-ape | 2 + 1 = 3 | 95.00 | +5.00 |" in text
    assert "| softmax-ape | 98.00 | 60.00 |" in text and "| 28 px (trained) | 42 px |" in text
    assert "runs differ" not in text  # m and fine-tuning epochs tell variants apart
    for name in ("feature_ablation.png", "resolution_transfer.png"):
        assert (tmp_path / "report" / name).read_bytes()[:4] == b"\x89PNG"
    with (tmp_path / "report" / "results.csv").open() as f:
        csv_rows = {r["variant"]: r for r in csv.DictReader(f)}
    assert csv_rows["favor-ape m=32"]["nb_features"] == "32"
    assert csv_rows["favor-ape from softmax-ape"]["source_epochs"] == "2"


def test_unequal_budgets_are_flagged(tmp_path):
    write_run(tmp_path, "favor-ape", 0, 0.90, epochs=3)
    source = {"model": "softmax-ape", "epochs": 5}
    write_run(tmp_path / "tuned", "favor-ape", 0, 0.95, epochs=1, init_from=source)
    summary = build_report(tmp_path, tmp_path / "report")
    (row,) = summary["init_comparison"]
    assert row["total_epochs"] == 6 and row["equal_epochs"] is False
    assert "5 + 1 = 6 (budgets differ)" in (tmp_path / "report" / "results.md").read_text()


def test_explicit_model_options_make_their_own_variant(tmp_path):
    write_run(tmp_path / "a", "favor-rope", 0, 0.90)
    write_run(tmp_path / "b", "favor-rope", 0, 0.80, options={"ape": False})
    write_run(tmp_path / "b", "softmax-rope", 0, 0.85, options={"ape": False})
    for m in (16, 32):
        options = {"ape": False, "nb_features": m}
        write_run(tmp_path / "c", "favor-rope", 0, 0.7 + m / 1000, options=options, nb_features=m)
    summary = build_report(tmp_path, tmp_path / "report")
    assert [r["variant"] for r in summary["rows"]] == [
        "softmax-rope ape=False",
        "favor-rope",
        "favor-rope ape=False",
        "favor-rope ape=False m=16",
        "favor-rope ape=False m=32",
    ]
    ablation = summary["feature_ablation"]
    assert [(r["family"], r["nb_features"]) for r in ablation] == [
        ("favor-rope ape=False", 16),
        ("favor-rope ape=False", 32),
    ]
    assert not [note for note in summary["notes"] if "differ" in note]
    gaps = {r["variant"]: r["gap_to_softmax"] for r in summary["rows"]}
    assert gaps["favor-rope ape=False"] == pytest.approx(-0.05)  # vs softmax-rope ape=False
    assert gaps["favor-rope"] is None  # no plain softmax-rope run


def test_recipe_options_at_their_default_do_not_make_a_variant(tmp_path):
    """Every FAVOR+ run records its redraw recipe (RECIPE_OPTIONS): at the default it is the
    plain model, in the kernel comparison; a non-default recipe is its own variant."""
    default = RECIPE_OPTIONS["favor"]
    write_run(tmp_path / "a", "softmax-ape", 0, 0.85)
    write_run(tmp_path / "a", "favor-ape", 0, 0.80, options=dict(default))
    write_run(tmp_path / "b", "favor-ape", 0, 0.70, options={**default, "redraw_interval": 100})
    summary = build_report(tmp_path, tmp_path / "report")
    gaps = {r["variant"]: r["gap_to_softmax"] for r in summary["rows"]}
    assert gaps["favor-ape"] == pytest.approx(-0.05)
    assert "favor-ape redraw_interval=100" in gaps


def test_top5_column_appears_only_where_recorded(tmp_path):
    write_run(tmp_path / "c10", "favor-ape", 0, 0.90)  # 10 classes: top-5 not recorded
    build_report(tmp_path / "c10")
    assert "top-5 %" not in (tmp_path / "c10" / "report" / "results.md").read_text()
    write_run(tmp_path / "c100", "favor-ape", 0, 0.50, dataset="cifar100", test_top5_accuracy=0.8)
    build_report(tmp_path / "c100")
    text = (tmp_path / "c100" / "report" / "results.md").read_text()
    assert "| test acc % | top-5 % |" in text and "| 50.00 | 80.00 |" in text


def test_gap_closed_covers_the_linear_cost_frpe_rows():
    from rpevit.report.tables import gap_closed_table

    acc = {"softmax-ape": 0.90, "favor-ape": 0.80, "favor-frpe": 0.85, "relu-ape": 0.95}
    rows = [{"variant": m, "test_accuracy_mean": a} for m, a in acc.items()]
    table = gap_closed_table(rows)
    assert table["favor"]["frpe"] == pytest.approx(0.5)
    assert table["relu"]["frpe"] is None  # relu-ape is not behind softmax-ape


def _set_curve(run: Path, val_acc: list[float]) -> None:
    """Replace the run's CSV log by one with this validation accuracy per epoch."""
    lines = ["epoch,step,val/acc,val/loss"]
    lines += [f"{e},{10 * e + 9},{acc},{1 - acc}" for e, acc in enumerate(val_acc)]
    (run / "logs" / "csv" / "version_0" / "metrics.csv").write_text("\n".join(lines) + "\n")


def test_the_report_warns_about_runs_that_did_not_end_at_their_best(tmp_path):
    root = tmp_path / "runs"
    curves = {
        ("softmax-ape", 1): [0.40, 0.50, 0.55],  # rising: no warning
        ("softmax-ape", 2): [0.41, 0.52, 0.56],
        ("favor-ape", 1): [0.45, 0.53, 0.41],  # collapse in the last epoch
        ("favor-ape", 2): [0.44, 0.54, 0.55],
        ("relu-ape", 1): [0.40, 0.52, 0.51],  # best epoch 2 of 3, only 1 pp below
    }
    for (model, seed), curve in curves.items():
        best = max(range(3), key=lambda e: curve[e])
        run = write_run(root, model, seed, 0.5, checkpoint_epoch=best,
                        last_test_accuracy=curve[-1] - 0.01)  # fmt: skip
        _set_curve(run, curve)
    out = tmp_path / "report"
    summary = build_report(root, out, data_dir=tmp_path / "no-data")
    assert summary["warnings"] == [
        "WARNING: favor-ape did not end at its best (seed 1: best epoch 2 of 3, "
        "final val 41.00% vs best 53.00%)",
        "WARNING: relu-ape did not end at its best (seed 1: best epoch 2 of 3)",
    ]
    text = (out / "results.md").read_text()
    assert all(line in text for line in summary["warnings"])
    assert text.index("WARNING: favor-ape") < text.index("## Accuracy and statistical fit")
    favor = summary["endings"]["favor-ape"]
    assert favor["best_epochs"] == [2, 3] and favor["final_epochs"] == [3, 3]
    assert favor["final_val_accuracy_mean"] == pytest.approx((0.41 + 0.55) / 2)
    assert favor["best_val_accuracy_mean"] == pytest.approx((0.53 + 0.55) / 2)
    assert favor["last_test_accuracy_mean"] == pytest.approx((0.40 + 0.54) / 2)
    assert "| favor-ape | 2, 3 of 3 | 54.00 ± 1.41 | 48.00 ± 9.90 |" in text
    with (out / "results.csv").open() as f:
        rows = {row["model"]: row for row in csv.DictReader(f)}
    assert (
        rows["favor-ape"]["best_epochs"] == "2 3" and rows["softmax-ape"]["ending_warnings"] == ""
    )
    assert float(rows["relu-ape"]["final_val_accuracy_mean"]) == pytest.approx(0.51)
    # a rising curve alone: no warning line at all
    rising = tmp_path / "rising"
    _set_curve(write_run(rising, "softmax-ape", 1, 0.5), [0.4, 0.5, 0.6])
    assert build_report(rising, tmp_path / "r2", data_dir=tmp_path / "no-data")["warnings"] == []
    assert "WARNING" not in (tmp_path / "r2" / "results.md").read_text()


def test_budget_report_groups_runs_by_epochs_and_pairs_gaps_by_seed(tmp_path):
    from rpevit.report.budgets import build_budget_report

    accuracy = {  # (model, budget): per seed 1, 2, 3
        ("softmax-ape", 3): (0.50, 0.52, 0.51),
        ("favor-ape", 3): (0.53, 0.54, 0.52),
        ("softmax-ape", 9): (0.60, 0.62, 0.61),
        ("favor-ape", 9): (0.58, 0.59, 0.57),
        ("favor-rope", 9): (0.61, 0.63, 0.61),
        ("softmax-rope", 9): (0.62, 0.63, 0.63),
    }
    for (model, budget), values in accuracy.items():
        for seed, acc in zip((1, 2, 3), values, strict=True):
            write_run(tmp_path / f"e{budget}", model, seed, acc, epochs=budget)
    # per-epoch times recorded: their sum, not 10 s (the fixture's mean) x 9 epochs
    record = tmp_path / "e9" / "favor-rope" / "seed3" / "metrics.json"
    record.write_text(
        json.dumps({**json.loads(record.read_text()), "train_seconds_epochs": [100.0] * 9})
    )
    summary = build_budget_report([tmp_path / "e3", tmp_path / "e9"], tmp_path / "out")
    assert summary["cost"] == [
        {"budget": 3, "runs": 6, "training_hours": pytest.approx(6 * 30 / 3600), "untimed_runs": 0},
        {"budget": 9, "runs": 12, "training_hours": pytest.approx((11 * 90 + 900) / 3600),
         "untimed_runs": 0},
    ]  # fmt: skip
    gaps = {(g["budget"], g["variant"]): g for g in summary["gaps"]}
    assert set(gaps) == {(3, "favor-ape"), (9, "favor-ape"), (9, "favor-rope")}
    assert gaps[3, "favor-ape"]["gap_to_softmax_same"] == pytest.approx(0.02)
    assert gaps[9, "favor-ape"]["gap_to_softmax_same"] == pytest.approx(-0.03)
    rope = gaps[9, "favor-rope"]
    assert rope["gap_to_softmax_same"] == pytest.approx((-0.01 + 0.0 - 0.02) / 3)
    assert rope["gap_to_softmax_ape"] == pytest.approx(0.02 / 3)
    assert rope["seed_p_holm"] is not None and rope["gap_to_softmax_same_ci"][0] < 0
    rows = {(r["budget"], r["variant"]): r for r in summary["accuracy"]}
    assert rows[9, "softmax-ape"]["test_accuracy_mean"] == pytest.approx(0.61)
    text = (tmp_path / "out" / "budgets.md").read_text()
    assert "| favor-ape | 53.00 ± 1.00 (3) | 58.00 ± 1.00 (3) |" in text
    assert "| all | 18 | 0.6 | 0 |" in text  # (180 + 1890) s
    matrix = text.split("## The gap at 9 epochs")[1].split("## Test accuracy")[0]
    assert "| kernel \\ encoding | ape | rope |" in matrix
    assert "| softmax: test acc % | 61.00 ± 1.00 | 62.67 ± 0.58 |" in matrix
    assert "| favor: Δ pp | -3.00 [-5.48, -0.52], p_Holm " in matrix  # t(2) = 4.303, sd 1 pp
    assert "| -1.00 [-3.48, +1.48], p_Holm " in matrix
    for name in ("accuracy_vs_budget", "gap_vs_budget"):
        assert (tmp_path / "out" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # one seed at several budgets is the design, not a duplicate; a seed twice in one budget is one
    assert summary["notes"] == []
    write_run(tmp_path / "e9-again", "softmax-ape", 1, 0.6, epochs=9)
    again = build_budget_report([tmp_path / "e3", tmp_path / "e9", tmp_path / "e9-again"],
                                tmp_path / "out")  # fmt: skip
    assert again["notes"] == ["softmax-ape has 2 runs with seed 1 at 9 epochs; all are averaged"]


def test_the_gap_matrix_shows_softmax_encodings_no_performer_ran_with():
    # the 27-epoch grid runs softmax-string without a Performer partner, and a grid in progress
    # may have softmax rows only: their accuracy is shown, the Performer cells stay empty
    from rpevit.report.budgets import gap_matrix_markdown

    def softmax(position: str, mean: float) -> dict:
        model = f"softmax-{position}"
        return dict(budget=27, kernel="softmax", position=position, variant=model, model=model,
                    test_accuracy_mean=mean, test_accuracy_std=0.01)  # fmt: skip

    accuracy = [softmax("ape", 0.74), softmax("string", 0.75)]
    gap = dict(budget=27, variant="favor-ape", position="ape", gap_to_softmax_same=-0.02,
               gap_to_softmax_same_ci=(-0.03, -0.01), seed_p_holm=0.5)  # fmt: skip
    matrix = gap_matrix_markdown(accuracy, [gap], 27)
    assert "| kernel \\ encoding | ape | string |" in matrix
    assert "| softmax: test acc % | 74.00 ± 1.00 | 75.00 ± 1.00 |" in matrix
    assert "| favor: Δ pp | -2.00 [-3.00, -1.00], p_Holm 0.50 |  |" in matrix
    assert "| ape |" in gap_matrix_markdown(accuracy[:1], [], 27)  # softmax alone so far


def test_tuned_options_and_normalised_favor_rows_in_the_budget_report(tmp_path):
    """Per-kernel tuned frpe terms (``tuned``) keep the frpe rows in the kernel comparison;
    Luo's normalised FAVOR+ rows are compared with plain softmax and are in the declared
    family; a run ending > 1 pp below its best validation accuracy is listed."""
    from rpevit.report.budgets import build_budget_report
    from rpevit.report.paired import comparisons, in_declared_family
    from rpevit.report.tables import summarise

    luo = {"qk_norm": True, "qk_temperature": 8.0}
    for seed in (1, 2, 3):
        write_run(tmp_path, "softmax-ape", seed, 0.60 + seed / 100, epochs=9)
        write_run(tmp_path, "softmax-frpe", seed, 0.62, epochs=9, options={"frpe_terms": 1})
        write_run(tmp_path, "favor-frpe", seed, 0.61, epochs=9, options={"frpe_terms": 4})
        write_run(tmp_path / "luo", "favor-ape", seed, 0.58 + seed / 100, epochs=9, options=luo)
        write_run(tmp_path / "luo", "favor-rpe", seed, 0.63, epochs=9, options=luo)
    _set_curve(tmp_path / "favor-frpe" / "seed2", [0.5, 0.64, 0.62])
    summary = build_budget_report([tmp_path], tmp_path / "out", tuned=("frpe_terms",))
    gaps = {g["variant"]: g for g in summary["gaps"]}
    normalised = "favor-ape qk_norm=True qk_temperature=8.0"
    assert set(gaps) == {"favor-frpe", normalised, "favor-rpe qk_norm=True qk_temperature=8.0"}
    assert gaps["favor-frpe"]["gap_to_softmax_same"] == pytest.approx(-0.01)
    assert gaps[normalised]["gap_to_softmax_same"] == pytest.approx(-0.02)  # plain softmax-ape
    assert gaps[normalised]["seed_p_holm"] is not None
    tuned = {r["variant"]: r["tuned"] for r in summary["accuracy"]}
    assert tuned["favor-frpe"] == '{"frpe_terms": 4}' and tuned["softmax-ape"] is None
    assert [(d["variant"], d["seed"]) for d in summary["late_drops"]] == [("favor-frpe", 2)]
    text = (tmp_path / "out" / "budgets.md").read_text()
    assert "WARNING: 1 of 15 runs ended more than 1 pp below" in text
    runs, _ = load_runs(tmp_path, tuned=("frpe_terms",))
    records = comparisons(summarise(runs), runs)
    family = {(r["variant"], r["reference"]) for r in records if r["family"]}
    assert all(in_declared_family(r) for r in records if r["family"])
    assert family == {
        ("favor-frpe", "softmax-frpe"),
        (normalised, "softmax-ape"),
        ("favor-rpe qk_norm=True qk_temperature=8.0", normalised),
        ("softmax-frpe", "softmax-ape"),
    }
    untuned, notes = load_runs(tmp_path)  # without it, R is part of the name: no pair
    assert {r.variant for r in untuned} >= {"favor-frpe frpe_terms=4", "softmax-frpe frpe_terms=1"}
    assert not notes


def test_runs_of_one_variant_with_different_options_get_a_note(tmp_path):
    write_run(tmp_path, "favor-frpe", 1, 0.6, options={"frpe_terms": 2})
    write_run(tmp_path, "favor-frpe", 2, 0.6, options={"frpe_terms": 4})
    _, notes = load_runs(tmp_path, tuned=("frpe_terms",))
    assert any("runs of favor-frpe differ in model options" in note for note in notes)
