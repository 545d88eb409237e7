"""Training curves of a run folder, from its CSV logs, as PNG files (matplotlib, Agg)."""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

from rpevit.atomic import atomic_write
from rpevit.errors import DataNotFoundError

#: (file name, title, y label, [(CSV column, legend label)]): one figure each.
FIGURES = (
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


def read_curves(run_dir: str | os.PathLike[str]) -> dict[str, dict[int, float]]:
    """``{column: {step: value}}`` from every ``logs/csv/version_<k>/metrics.csv`` of a run.

    Versions are read in order, so after a resume the values the resumed run logged again
    for the same step replace those of the interrupted start.
    """
    folder = Path(run_dir) / "logs" / "csv"
    versions = sorted(
        folder.glob("version_*/metrics.csv"),
        key=lambda p: int(re.sub(r"\D", "", p.parent.name) or 0),
    )
    if not versions:
        raise DataNotFoundError(f"no CSV logs in {folder}: is {run_dir} a training run folder?")
    curves: dict[str, dict[int, float]] = {}
    for path in versions:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                step = int(row["step"])
                for key, value in row.items():
                    if key not in ("epoch", "step") and value not in (None, ""):
                        curves.setdefault(key, {})[step] = float(value)
    return curves


def plot_curves(
    run_dir: str | os.PathLike[str], out: str | os.PathLike[str] | None = None
) -> list[Path]:
    """Write loss and accuracy curves (x: optimizer step) to ``out`` (default
    ``<run>/plots/``); return the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = read_curves(run_dir)
    out = Path(out) if out is not None else Path(run_dir) / "plots"
    written = []
    for name, title, ylabel, series in FIGURES:
        fig, ax = plt.subplots(figsize=(6, 4))
        for key, label in series:
            points = sorted(curves.get(key, {}).items())
            if points:
                style = "-" if key.endswith("_step") else "o-"
                ax.plot(*zip(*points, strict=True), style, label=label, markersize=3)
        ax.set(title=f"{title}: {Path(run_dir).name}", xlabel="optimizer step", ylabel=ylabel)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
        with atomic_write(out / name) as f:
            fig.savefig(f, format="png", dpi=120, bbox_inches="tight")
        plt.close(fig)
        written.append(out / name)
    return written
