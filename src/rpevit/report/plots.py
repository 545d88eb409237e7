"""Training-curve figures: validation curves per variant, and one run's curves from its CSV logs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from rpevit.errors import DataNotFoundError
from rpevit.report.plot_style import save_png, variant_style
from rpevit.report.runs import Run
from rpevit.report.tables import model_order
from rpevit.runs import CSV_LOGS, RunDir


def plot_curves(runs: Sequence[Run], path: Path) -> Path | None:
    """Validation loss and accuracy per epoch for every variant (mean over its seeds);
    None if no run logged a validation curve."""
    by_model: dict[str, list[Run]] = {}
    for run in runs:
        if run.curves:
            by_model.setdefault(run.variant, []).append(run)
    if not by_model:
        return None
    bases = [group[0].model for group in by_model.values()]
    order = model_order(bases)
    variants = sorted(by_model, key=lambda v: (order.index(by_model[v][0].model), v))
    fig = Figure(figsize=(13, 5), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    for variant in variants:
        group = by_model[variant]
        style = variant_style(group[0].model, bases, plain=variant == group[0].model)
        epochs = sorted({e for run in group for e in run.curves})
        for ax, key, scale in ((loss_ax, "val_loss", 1.0), (acc_ax, "val_acc", 100.0)):
            points = [
                (e + 1, np.mean(values) * scale)
                for e in epochs
                if (values := [r.curves[e][key] for r in group if key in r.curves.get(e, {})])
            ]
            if points:
                x, y = zip(*points, strict=True)
                ax.plot(x, y, label=variant, markersize=4, **style)
    loss_ax.set(title="Validation loss", xlabel="epoch", ylabel="cross-entropy")
    acc_ax.set(title="Validation accuracy", xlabel="epoch", ylabel="accuracy (%)")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    acc_ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8, title="model")
    seeds = max(len(v) for v in by_model.values())
    fig.suptitle("Validation curves" + (" (mean over seeds)" if seeds > 1 else ""))
    return save_png(fig, path)


#: One run's figures: (file name, title, y label, [(CSV column, legend label)]).
RUN_FIGURES = (
    (
        "loss.png",
        "Loss",
        "cross-entropy",
        [
            ("train/loss_step", "train (step)"),
            ("train/loss_epoch", "train (epoch mean)"),
            ("val/loss", "validation"),
        ],
    ),
    (
        "accuracy.png",
        "Accuracy",
        "top-1 accuracy",
        [("train/acc", "train (epoch)"), ("val/acc", "validation")],
    ),
)


def plot_run_curves(run_dir: str | Path, out: str | Path | None = None) -> list[Path]:
    """One run's loss and accuracy curves (x: optimizer step) from its CSV logs, written to
    ``out`` (default ``<run>/plots/``); return the files written."""
    run = RunDir(Path(run_dir))
    if not run.csv_logs():
        raise DataNotFoundError(
            f"no CSV logs in {run.logs_dir / CSV_LOGS}: is {run_dir} a training run folder?"
        )
    curves = run.curves(by="step")
    out = Path(out) if out is not None else run.path / "plots"
    written = []
    for name, title, ylabel, series in RUN_FIGURES:
        fig = Figure(figsize=(6, 4))
        ax = fig.subplots()
        for key, label in series:
            points = sorted(curves.get(key, {}).items())
            if points:
                style = "-" if key.endswith("_step") else "o-"
                ax.plot(*zip(*points, strict=True), style, label=label, markersize=3)
        ax.set(title=f"{title}: {run.path.name}", xlabel="optimizer step", ylabel=ylabel)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
        written.append(save_png(fig, out / name, dpi=120))
    return written
