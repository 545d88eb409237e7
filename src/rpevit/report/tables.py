"""Per-variant result rows (mean and sample std over seeds), gaps to softmax, "gap closed",
the random-feature ablation, from-scratch vs from-checkpoint and resolution-transfer tables, and
their Markdown / CSV renderings.

Gap to softmax: ``acc(kernel-X) - acc(softmax-X)`` (mean test accuracies, same position X).
Gap closed, for a Performer kernel K and X in rpe/string/rope:
``(acc(K-X) - acc(K-ape)) / (acc(softmax-ape) - acc(K-ape))``, a ratio of mean accuracies:
1 means X lifts K as far as exact softmax attention with APE, 0 means no gain. It is
undefined ("n/a") when a model is missing or the denominator is below :data:`GAP_EPS` (the
plain Performer is not behind softmax: there is no gap to close). Both
are taken between variants trained from scratch with default feature counts (the plain model
names); ablation and from-checkpoint variants are compared in their own tables.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rpevit.atomic import atomic_write
from rpevit.registry import PERFORMER_KERNELS, RELATIVE_POSITIONS, list_available_models
from rpevit.report.runs import Run
from rpevit.report.stats import mean_std, t_interval
from rpevit.runs import Metrics

#: Denominators of "gap closed" smaller than this (in accuracy, a fraction) count as zero.
GAP_EPS = 1e-6
NA = "n/a"


@dataclass(frozen=True)
class Metric:
    """A per-run number: how to read it from metrics.json and how to show it."""

    key: str
    label: str
    read: Callable[[Metrics], Any]
    fmt: Callable[[float], str]
    table: str  # "quality" or "cost": which Markdown table shows it


def _get(key: str) -> Callable[[Metrics], Any]:
    return lambda metrics: getattr(metrics, key)


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


METRICS: tuple[Metric, ...] = (
    Metric("val_accuracy", "val acc %", _get("val_accuracy"), _pct, "quality"),
    Metric("test_accuracy", "test acc %", _get("test_accuracy"), _pct, "quality"),
    Metric("test_top5_accuracy", "top-5 %", _get("test_top5_accuracy"), _pct, "quality"),
    Metric("precision_macro", "precision %", _get("precision_macro"), _pct, "quality"),
    Metric("recall_macro", "recall %", _get("recall_macro"), _pct, "quality"),
    Metric("f1_macro", "F1 %", _get("f1_macro"), _pct, "quality"),
    Metric("log_likelihood", "log-lik", _get("log_likelihood"), lambda x: f"{x:,.1f}", "quality"),
    Metric("aic", "AIC", _get("aic"), lambda x: f"{x:,.0f}", "quality"),
    Metric("bic", "BIC", _get("bic"), lambda x: f"{x:,.0f}", "quality"),
    Metric(
        "params",
        "params",
        lambda m: (m.params or {}).get("trainable"),
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


def model_order(models: Iterable[str]) -> list[str]:
    """Registry order (kernel-major: softmax, favor, relu), unknown names last, sorted."""
    known = list_available_models()
    models = set(models)
    return [m for m in known if m in models] + sorted(models - set(known))


def _single(values: Iterable[Any]) -> Any:
    """The one value all runs of a variant share, or None if they differ or have none."""
    distinct = {v for v in values if v is not None}
    return distinct.pop() if len(distinct) == 1 else None


def gap_closed(acc: dict[str, float | None], kernel: str, position: str) -> float | None:
    """``(acc[K-X] - acc[K-ape]) / (acc[softmax-ape] - acc[K-ape])``; None if undefined."""
    target, base, reference = (
        acc.get(f"{kernel}-{position}"),
        acc.get(f"{kernel}-ape"),
        acc.get("softmax-ape"),
    )
    if target is None or base is None or reference is None or reference - base < GAP_EPS:
        return None
    return (target - base) / (reference - base)


def summarise(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """One row per variant (see :mod:`rpevit.report.runs`): seeds, feature count, epochs and
    initial weights, ``<metric>_mean`` / ``<metric>_std`` for every metric, the 95% t interval
    of the test accuracy over seeds ``test_accuracy_ci`` (``[low, high]``), ``gap_to_softmax``
    and ``gap_closed`` (None where not applicable or undefined)."""
    by_variant: dict[str, list[Run]] = {}
    for run in runs:
        by_variant.setdefault(run.variant, []).append(run)
    order = {model: i for i, model in enumerate(model_order(r.model for r in runs))}

    def position_in_table(variant: str) -> tuple[int, bool, int, str]:
        """Per model: the plain variant, the feature counts, then the fine-tuned ones."""
        first = by_variant[variant][0]
        source = str(first.source.get("model")) if first.source else ""
        return order[first.model], bool(source), first.explicit_nb_features or 0, source

    rows = []
    for variant in sorted(by_variant, key=position_in_table):
        group = by_variant[variant]
        model = group[0].model
        kernel, _, position = model.partition("-")
        source = group[0].source
        row: dict[str, Any] = {
            "variant": variant,
            "model": model,
            "kernel": kernel,
            "position": position,
            "runs": len(group),
            "seeds": [run.seed for run in group],
            "nb_features": _single(run.nb_features for run in group),
            "family": group[0].family,
            "explicit_nb_features": group[0].explicit_nb_features,
            "epochs": _single(run.epochs for run in group),
            "init_from": source.get("model") if source else None,
            "source_epochs": _single(run.source.get("epochs") for run in group if run.source),
        }
        for metric in METRICS:
            row[f"{metric.key}_mean"], row[f"{metric.key}_std"] = mean_std(
                metric.read(run.metrics) for run in group
            )
        interval = t_interval([run.metrics.test_accuracy for run in group])
        row["test_accuracy_ci"] = None if interval is None else [interval[1], interval[2]]
        rows.append(row)
    acc = {row["variant"]: row["test_accuracy_mean"] for row in rows}
    for row in rows:
        kernel, position = row["kernel"], row["position"]
        # softmax with the same position encoding and options, trained from scratch
        reference = acc.get(row["family"].replace(row["model"], f"softmax-{position}", 1))
        row["gap_to_softmax"] = (
            row["test_accuracy_mean"] - reference
            if kernel != "softmax"
            and reference is not None
            and row["test_accuracy_mean"] is not None
            else None
        )
        row["gap_closed"] = gap_closed(acc, kernel, position) if _applies_gap_closed(row) else None
    return rows


def ablation_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of the random-feature ablation: the from-scratch variants of every family (model
    and options, see :attr:`Run.family`) trained with two or more feature counts, in table
    order, then by m."""
    counts: dict[str, set[int]] = {}
    for row in rows:
        if row["init_from"] is None and row["nb_features"] is not None:
            counts.setdefault(row["family"], set()).add(row["nb_features"])
    swept = [family for family, ms in counts.items() if len(ms) > 1]
    chosen = [
        r
        for r in rows
        if r["family"] in swept and r["init_from"] is None and r["nb_features"] is not None
    ]
    return sorted(chosen, key=lambda r: (swept.index(r["family"]), r["nb_features"]))


def init_comparison(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """From-scratch vs from-checkpoint: for every variant initialised from another run, the
    from-scratch variant of the same model (and feature count), the epochs each trained in
    total (a fine-tuned run adds its source's) and the accuracy difference in points."""
    scratch = {(r["family"], r["explicit_nb_features"]): r for r in rows if r["init_from"] is None}
    table = []
    for row in rows:
        if row["init_from"] is None:
            continue
        base = scratch.get((row["family"], row["explicit_nb_features"]))
        total = (
            row["epochs"] + row["source_epochs"]
            if row["epochs"] is not None and row["source_epochs"] is not None
            else None
        )
        both = base is not None and None not in (
            base["test_accuracy_mean"],
            row["test_accuracy_mean"],
        )
        table.append(
            {
                "variant": row["variant"],
                "model": row["family"],
                "source": row["init_from"],
                "scratch_epochs": base["epochs"] if base else None,
                "scratch_accuracy": base["test_accuracy_mean"] if base else None,
                "scratch_runs": base["runs"] if base else 0,
                "source_epochs": row["source_epochs"],
                "finetune_epochs": row["epochs"],
                "total_epochs": total,
                "finetuned_accuracy": row["test_accuracy_mean"],
                "finetuned_runs": row["runs"],
                "difference": (
                    row["test_accuracy_mean"] - base["test_accuracy_mean"] if both else None
                ),
                "equal_epochs": base is not None and total is not None and total == base["epochs"],
            }
        )
    return table


def transfer_table(runs: Sequence[Run]) -> dict[str, Any]:
    """Resolution transfer per variant (runs evaluated with ``--image-size``): mean test
    accuracy at every evaluated image size, keyed ``{label: {size: accuracy}}``; the label adds
    the resize mode when runs used several. Also the trained sizes found."""
    evaluated = [run for run in runs if run.transfer]
    modes = {run.transfer["resize_mode"] for run in evaluated}
    values: dict[str, dict[int, list[float]]] = {}
    variants: dict[str, str] = {}
    models: dict[str, str] = {}
    trained: set[int] = set()
    for run in evaluated:
        label = run.variant + (f" ({run.transfer['resize_mode']})" if len(modes) > 1 else "")
        variants[label], models[label] = run.variant, run.model
        size = run.transfer.get("trained_image_size")
        if isinstance(size, list) and size:
            trained.add(int(size[0]))
        for point in run.transfer["results"]:
            if isinstance(point.get("test_accuracy"), float):
                values.setdefault(label, {}).setdefault(int(point["image_size"]), []).append(
                    point["test_accuracy"]
                )
    order = {model: i for i, model in enumerate(model_order(models.values()))}
    accuracy = {
        label: {size: sum(v) / len(v) for size, v in sorted(values[label].items())}
        for label in sorted(values, key=lambda label: (order[models[label]], label))
    }
    return {
        "resize_modes": sorted(modes),
        "trained_image_sizes": sorted(trained),
        "variants": variants,
        "models": models,
        "accuracy": accuracy,
    }


def gap_closed_table(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """``{kernel: {position: gap closed}}`` for the Performer kernels and relative positions."""
    acc = {row["variant"]: row["test_accuracy_mean"] for row in rows}
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
    return (
        row["kernel"] in PERFORMER_KERNELS
        and row["position"] in RELATIVE_POSITIONS
        and row["variant"] == row["model"]
    )


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
        return NA if value is None else _pct(value)

    body = []
    for r in table:
        total = f"{epochs(r['source_epochs'])} + {epochs(r['finetune_epochs'])}"
        total += f" = {r['total_epochs']}" if r["total_epochs"] is not None else ""
        if r["scratch_epochs"] is not None and not r["equal_epochs"]:
            total += " (budgets differ)"
        diff = NA if r["difference"] is None else f"{100 * r['difference']:+.2f}"
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
        [label, *[_pct(acc[s]) if s in acc else NA for s in sizes]]
        for label, acc in transfer["accuracy"].items()
    ]
    return markdown_table(header, body)


def markdown(
    rows: Sequence[dict[str, Any]],
    title: str,
    notes: Sequence[str],
    plots: Sequence[str],
    *,
    ablation: Sequence[dict[str, Any]] = (),
    comparison: Sequence[dict[str, Any]] = (),
    transfer: dict[str, Any] | None = None,
    statistics: Sequence[str] = (),
) -> str:
    """``results.md``: a quality table (accuracy, fit, gaps), a cost table, the gap-closed
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
        return NA if row["gap_to_softmax"] is None else f"{100 * row['gap_to_softmax']:+.2f}"

    def closed(row: dict[str, Any]) -> str:
        if not _applies_gap_closed(row):
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
    parts = [
        f"# {title}",
        "Mean ± sample standard deviation over seeds (one value: a single run). Accuracies, "
        "precision, recall and F1 (macro) in %, on the test split unless marked val; "
        "log-likelihood, AIC and BIC on the test split (natural log).",
        "## Accuracy and statistical fit",
        quality_table,
        "Gap to softmax: test accuracy minus that of softmax with the same position encoding "
        "and options (trained from scratch), in percentage points. Gap closed: (acc(K-X) - "
        "acc(K-ape)) / (acc(softmax-ape) - acc(K-ape)) on mean test accuracies; n/a when a "
        "model is missing or K-ape is not behind softmax-ape (no gap to close).",
        "## Cost",
        cost_table,
        "Parameters: trainable. FLOPs: forward, per image. Training seconds per epoch exclude "
        "validation; inference milliseconds per sample are the median over timed batches; "
        "peak memory is the peak RSS of the process on CPU, max allocated on GPU.",
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
    with atomic_write(path, "w") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            low, high = row["test_accuracy_ci"] or ["", ""]
            row = {**row, "test_accuracy_ci_low": low, "test_accuracy_ci_high": high}
            gap = (gap_intervals or {}).get(row["kernel"], {}).get(row["position"])
            if gap is not None and _applies_gap_closed(row):
                (low, high), note = gap["ci"] or [NA, NA], gap["note"]
            else:
                low = high = note = None
            row.update(gap_closed_ci_low=low, gap_closed_ci_high=high, gap_closed_note=note)
            record = {key: ("" if row[key] is None else row[key]) for key in columns}
            record["seeds"] = " ".join(str(s) for s in row["seeds"])
            if _applies_gap(row) and row["gap_to_softmax"] is None:
                record["gap_to_softmax"] = NA
            if _applies_gap_closed(row) and row["gap_closed"] is None:
                record["gap_closed"] = NA
            writer.writerow(record)
    return path
