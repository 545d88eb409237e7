"""Per-model result rows (mean and sample std over seeds), gaps to softmax, "gap closed", and
their Markdown / CSV renderings.

Gap to softmax: ``acc(kernel-X) - acc(softmax-X)`` (mean test accuracies, same position X).
Gap closed, for a Performer kernel K and X in rpe/string/rope:
``(acc(K-X) - acc(K-ape)) / (acc(softmax-ape) - acc(K-ape))``, a ratio of mean accuracies:
1 means X lifts K as far as exact softmax attention with APE, 0 means no gain. It is
undefined ("n/a") when a model is missing or the denominator is below :data:`GAP_EPS`.
"""

from __future__ import annotations

import csv
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rpevit.atomic import atomic_write
from rpevit.registry import list_available_models
from rpevit.report.runs import Run

#: Denominators of "gap closed" smaller than this (in accuracy, a fraction) count as zero.
GAP_EPS = 1e-6
PERFORMER_KERNELS = ("favor", "relu")
RELATIVE_POSITIONS = ("rpe", "string", "rope")
NA = "n/a"


@dataclass(frozen=True)
class Metric:
    """A per-run number: how to read it from metrics.json and how to show it."""

    key: str
    label: str
    read: Callable[[dict[str, Any]], Any]
    fmt: Callable[[float], str]
    table: str  # "quality" or "cost": which Markdown table shows it


def _get(key: str) -> Callable[[dict[str, Any]], Any]:
    return lambda metrics: metrics.get(key)


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


METRICS: tuple[Metric, ...] = (
    Metric("val_accuracy", "val acc %", _get("val_accuracy"), _pct, "quality"),
    Metric("test_accuracy", "test acc %", _get("test_accuracy"), _pct, "quality"),
    Metric("precision_macro", "precision %", _get("precision_macro"), _pct, "quality"),
    Metric("recall_macro", "recall %", _get("recall_macro"), _pct, "quality"),
    Metric("f1_macro", "F1 %", _get("f1_macro"), _pct, "quality"),
    Metric("log_likelihood", "log-lik", _get("log_likelihood"), lambda x: f"{x:,.1f}", "quality"),
    Metric("aic", "AIC", _get("aic"), lambda x: f"{x:,.0f}", "quality"),
    Metric("bic", "BIC", _get("bic"), lambda x: f"{x:,.0f}", "quality"),
    Metric(
        "params",
        "params",
        lambda m: (m.get("params") or {}).get("trainable"),
        lambda x: f"{x:,.0f}",
        "cost",
    ),
    Metric(
        "flops_per_image",
        "MFLOPs/image",
        _get("flops_per_image"),
        lambda x: f"{x / 1e6:.2f}",
        "cost",
    ),  # fmt: skip
    Metric(
        "train_seconds_per_epoch",
        "train s/epoch",
        _get("train_seconds_per_epoch"),
        lambda x: f"{x:.1f}",
        "cost",
    ),  # fmt: skip
    Metric(
        "inference_ms_per_sample",
        "inference ms/sample",
        _get("inference_ms_per_sample"),
        lambda x: f"{x:.3f}",
        "cost",
    ),  # fmt: skip
    Metric(
        "peak_memory_mb", "peak memory MiB", _get("peak_memory_mb"), lambda x: f"{x:,.0f}", "cost"
    ),  # fmt: skip
)


def mean_std(values: Iterable[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof 1) of the non-missing values; std is None
    with fewer than two values, both are None with none."""
    present = [float(v) for v in values if v is not None]
    if not present:
        return None, None
    return statistics.fmean(present), statistics.stdev(present) if len(present) > 1 else None


def model_order(models: Iterable[str]) -> list[str]:
    """Registry order (kernel-major: softmax, favor, relu), unknown names last, sorted."""
    known = list_available_models()
    models = set(models)
    return [m for m in known if m in models] + sorted(models - set(known))


def gap_closed(acc: dict[str, float | None], kernel: str, position: str) -> float | None:
    """``(acc[K-X] - acc[K-ape]) / (acc[softmax-ape] - acc[K-ape])``; None if undefined."""
    target, base, reference = (
        acc.get(f"{kernel}-{position}"),
        acc.get(f"{kernel}-ape"),
        acc.get("softmax-ape"),
    )
    if target is None or base is None or reference is None or abs(reference - base) < GAP_EPS:
        return None
    return (target - base) / (reference - base)


def summarise(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """One row per model: seeds, ``<metric>_mean`` / ``<metric>_std`` for every metric,
    ``gap_to_softmax`` and ``gap_closed`` (None where not applicable or undefined)."""
    by_model: dict[str, list[Run]] = {}
    for run in runs:
        by_model.setdefault(run.model, []).append(run)
    rows = []
    for model in model_order(by_model):
        group = by_model[model]
        kernel, _, position = model.partition("-")
        row: dict[str, Any] = {
            "model": model,
            "kernel": kernel,
            "position": position,
            "runs": len(group),
            "seeds": [run.seed for run in group],
        }
        for metric in METRICS:
            row[f"{metric.key}_mean"], row[f"{metric.key}_std"] = mean_std(
                metric.read(run.metrics) for run in group
            )
        rows.append(row)
    acc = {row["model"]: row["test_accuracy_mean"] for row in rows}
    for row in rows:
        kernel, position = row["kernel"], row["position"]
        reference = acc.get(f"softmax-{position}")
        row["gap_to_softmax"] = (
            row["test_accuracy_mean"] - reference
            if kernel != "softmax"
            and reference is not None
            and row["test_accuracy_mean"] is not None
            else None
        )
        row["gap_closed"] = (
            gap_closed(acc, kernel, position)
            if kernel in PERFORMER_KERNELS and position in RELATIVE_POSITIONS
            else None
        )
    return rows


def gap_closed_table(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """``{kernel: {position: gap closed}}`` for the Performer kernels and relative positions."""
    acc = {row["model"]: row["test_accuracy_mean"] for row in rows}
    return {
        kernel: {position: gap_closed(acc, kernel, position) for position in RELATIVE_POSITIONS}
        for kernel in PERFORMER_KERNELS
    }


def _cell(mean: float | None, std: float | None, fmt: Callable[[float], str]) -> str:
    if mean is None:
        return NA
    return f"{fmt(mean)} ± {fmt(std)}" if std is not None else fmt(mean)


def _applies_gap(row: dict[str, Any]) -> bool:
    return row["kernel"] != "softmax"


def _applies_gap_closed(row: dict[str, Any]) -> bool:
    return row["kernel"] in PERFORMER_KERNELS and row["position"] in RELATIVE_POSITIONS


def _markdown_table(header: list[str], body: list[list[str]]) -> str:
    lines = [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join(["---"] + ["---:"] * (len(header) - 1)) + " |",
    ]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines)


def markdown(
    rows: Sequence[dict[str, Any]], title: str, notes: Sequence[str], plots: Sequence[str]
) -> str:
    """``results.md``: a quality table (accuracy, fit, gaps), a cost table, the gap-closed
    matrix, the plots and the notes."""
    quality = [m for m in METRICS if m.table == "quality"]
    cost = [m for m in METRICS if m.table == "cost"]

    def metric_cells(row: dict[str, Any], metrics: Sequence[Metric]) -> list[str]:
        return [_cell(row[f"{m.key}_mean"], row[f"{m.key}_std"], m.fmt) for m in metrics]

    def gap(row: dict[str, Any]) -> str:
        if not _applies_gap(row):
            return "—"
        return NA if row["gap_to_softmax"] is None else f"{100 * row['gap_to_softmax']:+.2f}"

    def closed(row: dict[str, Any]) -> str:
        if not _applies_gap_closed(row):
            return "—"
        return NA if row["gap_closed"] is None else f"{row['gap_closed']:.2f}"

    quality_table = _markdown_table(
        ["model", "runs", *[m.label for m in quality], "gap to softmax (pp)", "gap closed"],
        [
            [row["model"], str(row["runs"]), *metric_cells(row, quality), gap(row), closed(row)]
            for row in rows
        ],
    )
    cost_table = _markdown_table(
        ["model", "runs", *[m.label for m in cost]],
        [[row["model"], str(row["runs"]), *metric_cells(row, cost)] for row in rows],
    )
    matrix = gap_closed_table(rows)
    closed_table = _markdown_table(
        ["kernel", *RELATIVE_POSITIONS],
        [
            [kernel, *[NA if v is None else f"{v:.2f}" for v in matrix[kernel].values()]]
            for kernel in PERFORMER_KERNELS
        ],
    )
    parts = [
        f"# {title}",
        "Mean ± sample standard deviation over seeds (one value: a single run). Accuracies, "
        "precision, recall and F1 (macro) in %, on the test split unless marked val; "
        "log-likelihood, AIC and BIC on the test split (natural log).",
        "## Accuracy and statistical fit",
        quality_table,
        "Gap to softmax: test accuracy minus that of softmax with the same position encoding, "
        "in percentage points. Gap closed: (acc(K-X) - acc(K-ape)) / (acc(softmax-ape) - "
        "acc(K-ape)) on mean test accuracies; n/a when undefined.",
        "## Cost",
        cost_table,
        "Parameters: trainable. FLOPs: forward, per image. Training seconds per epoch exclude "
        "validation; inference milliseconds per sample are the median over timed batches; "
        "peak memory is the peak RSS of the process on CPU, max allocated on GPU.",
        "## Gap closed by relative position encodings",
        closed_table,
    ]
    if plots:
        parts += ["## Plots", "\n\n".join(f"![{Path(p).stem}]({Path(p).name})" for p in plots)]
    if notes:
        parts += ["## Notes", "\n".join(f"- {note}" for note in notes)]
    return "\n\n".join(parts) + "\n"


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """``results.csv``: one row per model, raw values (accuracies as fractions), empty where a
    column does not apply and ``n/a`` where it is undefined."""
    columns = ["model", "kernel", "position", "runs", "seeds"]
    for metric in METRICS:
        columns += [f"{metric.key}_mean", f"{metric.key}_std"]
    columns += ["gap_to_softmax", "gap_closed"]
    with atomic_write(path, "w") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            record = {key: ("" if row[key] is None else row[key]) for key in columns}
            record["seeds"] = " ".join(str(s) for s in row["seeds"])
            if _applies_gap(row) and row["gap_to_softmax"] is None:
                record["gap_to_softmax"] = NA
            if _applies_gap_closed(row) and row["gap_closed"] is None:
                record["gap_closed"] = NA
            writer.writerow(record)
    return path
