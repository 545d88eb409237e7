"""Renders the summary rows (rpevit.report.tables) as the results.md tables and results.csv."""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rpevit.atomic import atomic_write
from rpevit.registry import PERFORMER_KERNELS, RELATIVE_POSITIONS
from rpevit.report.endings import RULE, warning_lines
from rpevit.report.tables import METRICS, Metric, applies_gap_closed, gap_closed_table, pct, pp

NA = "n/a"


def _cell(mean: float | None, std: float | None, fmt: Callable[[float], str]) -> str:
    if mean is None:
        return NA
    return f"{fmt(mean)} ± {fmt(std)}" if std is not None else fmt(mean)


def _applies_gap(row: dict[str, Any]) -> bool:
    return row["kernel"] != "softmax"


def markdown_table(header: list[str], body: list[list[str]]) -> str:
    lines = [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join(["---"] + ["---:"] * (len(header) - 1)) + " |",
    ]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines)


def _ablation_markdown(rows: Sequence[dict[str, Any]]) -> str:
    metrics = {m.key: m for m in METRICS}
    shown = (
        "test_accuracy",
        "train_seconds_per_epoch",
        "inference_ms_per_sample",
        "peak_memory_mb",
    )
    return markdown_table(
        ["model", "m", "runs", *[metrics[k].label for k in shown]],
        [
            [
                row["family"],
                str(row["nb_features"]),
                str(row["runs"]),
                *[_cell(row[f"{k}_mean"], row[f"{k}_std"], metrics[k].fmt) for k in shown],
            ]
            for row in rows
        ],
    )


def _comparison_markdown(table: Sequence[dict[str, Any]]) -> str:
    def epochs(value: Any) -> str:
        return NA if value is None else str(value)

    def acc(value: float | None) -> str:
        return NA if value is None else pct(value)

    body = []
    for r in table:
        total = f"{epochs(r['source_epochs'])} + {epochs(r['finetune_epochs'])}"
        total += f" = {r['total_epochs']}" if r["total_epochs"] is not None else ""
        if r["scratch_epochs"] is not None and not r["equal_epochs"]:
            total += " (budgets differ)"
        diff = NA if r["difference"] is None else pp(r["difference"])
        body.append(
            [
                r["model"],
                epochs(r["scratch_epochs"]),
                acc(r["scratch_accuracy"]),
                r["source"],
                total,
                acc(r["finetuned_accuracy"]),
                diff,
            ]
        )
    return markdown_table(
        [
            "model",
            "from scratch: epochs",
            "test acc %",
            "initialised from",
            "source + fine-tune epochs",
            "test acc %",
            "difference (pp)",
        ],
        body,
    )


def _transfer_markdown(transfer: dict[str, Any]) -> str:
    sizes = sorted({size for acc in transfer["accuracy"].values() for size in acc})
    trained = set(transfer["trained_image_sizes"])
    header = ["variant", *[f"{s} px" + (" (trained)" if s in trained else "") for s in sizes]]
    body = [
        [label, *[pct(acc[s]) if s in acc else NA for s in sizes]]
        for label, acc in transfer["accuracy"].items()
    ]
    return markdown_table(header, body)


def _endings_markdown(rows: Sequence[dict[str, Any]], endings: dict[str, dict[str, Any]]) -> str:
    body = []
    for row in rows:
        end = endings.get(row["variant"])
        if end is None:
            continue
        finals = sorted(set(end["final_epochs"]))
        body.append(
            [
                row["variant"],
                ", ".join(map(str, end["best_epochs"])) + f" of {'/'.join(map(str, finals))}",
                _cell(end["best_val_accuracy_mean"], end["best_val_accuracy_std"], pct),
                _cell(end["final_val_accuracy_mean"], end["final_val_accuracy_std"], pct),
                _cell(row["test_accuracy_mean"], row["test_accuracy_std"], pct),
                _cell(end["last_test_accuracy_mean"], end["last_test_accuracy_std"], pct),
                "⚠" if end["warnings"] else "",
            ]
        )
    return markdown_table(
        [
            "model",
            "best epoch (per seed)",
            "best val %",
            "final val %",
            "best-checkpoint test %",
            "last-checkpoint test %",
            "warning",
        ],
        body,
    )


def markdown(
    rows: Sequence[dict[str, Any]],
    title: str,
    notes: Sequence[str],
    plots: Sequence[str],
    *,
    endings: dict[str, dict[str, Any]] | None = None,
    ablation: Sequence[dict[str, Any]] = (),
    comparison: Sequence[dict[str, Any]] = (),
    transfer: dict[str, Any] | None = None,
    statistics: Sequence[str] = (),
) -> str:
    """``results.md``: warnings for runs that did not end at their best (``endings``), a
    quality table (accuracy, fit, gaps), how the runs ended, a cost table, the gap-closed
    matrix, the ``statistics`` section's parts (already rendered), then where the runs hold
    them the random-feature ablation, from-scratch vs from-checkpoint and resolution-transfer
    tables, the plots and the notes."""

    def shown(metric: Metric) -> bool:  # e.g. top-5 only where recorded (> 10 classes)
        return any(row[f"{metric.key}_mean"] is not None for row in rows)

    quality = [m for m in METRICS if m.table == "quality" and shown(m)]
    cost = [m for m in METRICS if m.table == "cost" and shown(m)]

    def metric_cells(row: dict[str, Any], metrics: Sequence[Metric]) -> list[str]:
        return [_cell(row[f"{m.key}_mean"], row[f"{m.key}_std"], m.fmt) for m in metrics]

    def gap(row: dict[str, Any]) -> str:
        if not _applies_gap(row):
            return "—"
        return NA if row["gap_to_softmax"] is None else pp(row["gap_to_softmax"])

    def closed(row: dict[str, Any]) -> str:
        if not applies_gap_closed(row):
            return "—"
        return NA if row["gap_closed"] is None else f"{row['gap_closed']:.2f}"

    quality_table = markdown_table(
        ["model", "runs", *[m.label for m in quality], "gap to softmax (pp)", "gap closed"],
        [
            [row["variant"], str(row["runs"]), *metric_cells(row, quality), gap(row), closed(row)]
            for row in rows
        ],
    )
    cost_table = markdown_table(
        ["model", "runs", *[m.label for m in cost]],
        [[row["variant"], str(row["runs"]), *metric_cells(row, cost)] for row in rows],
    )
    matrix = gap_closed_table(rows)
    closed_table = markdown_table(
        ["kernel", *RELATIVE_POSITIONS],
        [
            [kernel, *[NA if v is None else f"{v:.2f}" for v in matrix[kernel].values()]]
            for kernel in PERFORMER_KERNELS
        ],
    )
    endings = endings or {}
    parts = [
        f"# {title}",
        *warning_lines(endings, [row["variant"] for row in rows]),
        "Mean ± sample standard deviation over seeds (one value: a single run). Accuracies, "
        "precision, recall and F1 (macro) in %, on the test split unless marked val; "
        "log-likelihood, AIC and BIC on the test split (natural log).",
        "## Accuracy and statistical fit",
        quality_table,
        "Gap to softmax: test accuracy minus that of softmax with the same position encoding "
        "and options (trained from scratch), in percentage points. Gap closed: (acc(K-X) - "
        "acc(K-ape)) / (acc(softmax-ape) - acc(K-ape)) on mean test accuracies; n/a when a "
        "model is missing or K-ape is not behind softmax-ape (no gap to close).",
    ]
    if endings:
        parts += ["## How the runs ended", _endings_markdown(rows, endings), RULE]
    parts += [
        "## Cost",
        cost_table,
        "Parameters: trainable. FLOPs: forward, per image. Training seconds per epoch exclude "
        "validation; inference milliseconds per sample are the median over timed batches; "
        "peak memory is the run's peak RSS on CPU (from the start of its training), max "
        "allocated on GPU; not shown for CPU records written before it was measured per run "
        "(they hold the peak of a worker process that may have trained other runs first).",
        "## Gap closed by relative position encodings",
        closed_table,
        *statistics,
    ]
    if ablation:
        parts += [
            "## Random-feature ablation",
            _ablation_markdown(ablation),
            "m: features per head of the kernel's feature map (FAVOR+: random features, "
            "learnable: rows of the trained W). The variants' other rows above give the "
            "exact-attention reference. On CPU peak memory is the process's peak RSS, which "
            "for small models is mostly data and framework, not attention.",
        ]
    if comparison:
        parts += [
            "## From scratch vs from a softmax checkpoint",
            _comparison_markdown(comparison),
            "A fine-tuned run starts from its source's best checkpoint; its training budget is "
            "the source's epochs plus its own. The comparison is fair when that total equals "
            "the from-scratch run's epochs. Difference: fine-tuned minus from-scratch test "
            "accuracy, in percentage points.",
        ]
    if transfer and transfer["accuracy"]:
        parts += [
            "## Resolution transfer",
            _transfer_markdown(transfer),
            "Test accuracy (%) on the test images brought to each size by "
            f"{' / '.join(transfer['resize_modes'])} (pad: zero border on the patch grid; "
            "upscale: bilinear resize), from `rpevit evaluate RUN --image-size ...`. Each "
            "position encoding applies its own rule off the trained grid: APE interpolates its "
            "table, RPE clamps offsets beyond the trained range, RoPE/STRING extrapolate their "
            "rotations, gates reuse their last trained row/column. n/a: not evaluated there "
            "(Linformer has a fixed token count).",
        ]
    if plots:
        parts += ["## Plots", "\n\n".join(f"![{Path(p).stem}]({Path(p).name})" for p in plots)]
    if notes:
        parts += ["## Notes", "\n".join(f"- {note}" for note in notes)]
    return "\n\n".join(parts) + "\n"


def write_csv(
    rows: Sequence[dict[str, Any]],
    path: Path,
    gap_intervals: dict[str, dict[str, dict[str, Any]]] | None = None,
    endings: dict[str, dict[str, Any]] | None = None,
) -> Path:
    """``results.csv``: one row per model, raw values (accuracies as fractions), empty where a
    column does not apply and ``n/a`` where it is undefined; with ``gap_intervals``
    (:func:`rpevit.report.paired.gap_closed_intervals`) the gap-closed interval and its note."""
    columns = ["variant", "model", "kernel", "position", "nb_features", "init_from", "epochs"]
    columns += ["source_epochs", "runs", "seeds"]
    for metric in METRICS:
        columns += [f"{metric.key}_mean", f"{metric.key}_std"]
    columns += ["gap_to_softmax", "gap_closed", "test_accuracy_ci_low", "test_accuracy_ci_high"]
    columns += ["gap_closed_ci_low", "gap_closed_ci_high", "gap_closed_note"]
    columns += ["best_epochs", "final_val_accuracy_mean", "final_val_accuracy_std"]
    columns += ["last_test_accuracy_mean", "last_test_accuracy_std", "ending_warnings"]
    with atomic_write(path, "w") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            low, high = row["test_accuracy_ci"] or ["", ""]
            row = {**row, "test_accuracy_ci_low": low, "test_accuracy_ci_high": high}
            gap = (gap_intervals or {}).get(row["kernel"], {}).get(row["position"])
            if gap is not None and applies_gap_closed(row):
                (low, high), note = gap["ci"] or [NA, NA], gap["note"]
            else:
                low = high = note = None
            row.update(gap_closed_ci_low=low, gap_closed_ci_high=high, gap_closed_note=note)
            end = (endings or {}).get(row["variant"], {})
            row.update({k: end.get(k) for k in columns if k.startswith(("final_", "last_"))})
            row["best_epochs"] = " ".join(map(str, end.get("best_epochs", []))) or None
            row["ending_warnings"] = "; ".join(end.get("warnings", [])) or None
            record = {key: ("" if row[key] is None else row[key]) for key in columns}
            record["seeds"] = " ".join(str(s) for s in row["seeds"])
            if _applies_gap(row) and row["gap_to_softmax"] is None:
                record["gap_to_softmax"] = NA
            if applies_gap_closed(row) and row["gap_closed"] is None:
                record["gap_closed"] = NA
            writer.writerow(record)
    return path
