"""Per-variant result rows over seeds and the tables derived from them, as numbers to render.

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

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from rpevit.registry import PERFORMER_KERNELS, RELATIVE_POSITIONS, list_available_models
from rpevit.report.runs import Run
from rpevit.report.stats import mean_std, t_interval
from rpevit.runs import Metrics

#: Denominators of "gap closed" smaller than this (in accuracy, a fraction) count as zero.
GAP_EPS = 1e-6


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


def pct(x: float) -> str:
    """A fraction as a percentage with two decimals (e.g. ``0.9812`` -> ``98.12``)."""
    return f"{100 * x:.2f}"


def pp(x: float) -> str:
    """A difference of fractions in signed percentage points (``0.0123`` -> ``+1.23``)."""
    return f"{100 * x:+.2f}"


METRICS: tuple[Metric, ...] = (
    Metric("val_accuracy", "val acc %", _get("val_accuracy"), pct, "quality"),
    Metric("test_accuracy", "test acc %", _get("test_accuracy"), pct, "quality"),
    Metric("test_top5_accuracy", "top-5 %", _get("test_top5_accuracy"), pct, "quality"),
    Metric("precision_macro", "precision %", _get("precision_macro"), pct, "quality"),
    Metric("recall_macro", "recall %", _get("recall_macro"), pct, "quality"),
    Metric("f1_macro", "F1 %", _get("f1_macro"), pct, "quality"),
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
        "peak_memory_mb",
        "peak memory MiB",
        _get("run_peak_memory_mb"),
        lambda x: f"{x:,.0f}",
        "cost",
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


def applies_gap_closed(row: dict[str, Any]) -> bool:
    """Whether gap closed applies: a Performer kernel, a relative position, the plain model."""
    return (
        row["kernel"] in PERFORMER_KERNELS
        and row["position"] in RELATIVE_POSITIONS
        and row["variant"] == row["model"]
    )


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
        row["gap_closed"] = gap_closed(acc, kernel, position) if applies_gap_closed(row) else None
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
