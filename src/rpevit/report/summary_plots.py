"""Summary figures: trade-off, accuracy heatmap, attention maps, feature ablation, resolution."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.text import Annotation
from matplotlib.transforms import Bbox

from rpevit.report.plot_style import MARKERS, kernels_and_positions, save_png, variant_style

#: Where a point's label may go, in order of preference: offset (points) and alignment.
LABEL_PLACES = ((6, 4, "left"), (6, -12, "left"), (-6, 4, "right"), (-6, -12, "right"))
#: Half the side of the square kept free around each marker (pixels).
MARKER_CLEARANCE = 5.0


def separate_labels(fig: Figure, labels: Sequence[Annotation]) -> None:
    """Place each point's label beside its point (right, below-right, left, below-left: the
    first place that covers no other label and no other point), else above-right moved up
    until it covers no other label: variants with nearly equal accuracy and time would
    otherwise print their names over each other."""
    FigureCanvasAgg(fig)
    fig.draw_without_rendering()  # lay out first: the boxes are measured where they will be
    renderer = fig.canvas.get_renderer()
    points = [label.axes.transData.transform(label.xy) for label in labels]
    markers = [Bbox.from_bounds(x - MARKER_CLEARANCE, y - MARKER_CLEARANCE,
                                2 * MARKER_CLEARANCE, 2 * MARKER_CLEARANCE)
               for x, y in points]  # fmt: skip
    placed: list[Bbox] = []

    def put(label: Annotation, dx: float, dy: float, align: str) -> Bbox:
        label.xyann = (dx, dy)
        label.set_horizontalalignment(align)
        return label.get_window_extent(renderer)

    for i, label in enumerate(labels):
        obstacles = placed + markers[:i] + markers[i + 1 :]
        for place in LABEL_PLACES:
            box = put(label, *place)
            if not any(box.overlaps(o) for o in obstacles):
                break
        else:
            dx, dy, align = LABEL_PLACES[0]
            box = put(label, dx, dy, align)
            while blocking := [p for p in placed if box.overlaps(p)]:
                dy += (max(p.y1 for p in blocking) - box.y0 + 1) * 72 / fig.dpi
                box = put(label, dx, dy, align)
        placed.append(box)


def plot_tradeoff(rows: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """Test accuracy against inference time per sample, one labelled point per variant
    (error bars: std over seeds); None if no row has both numbers."""
    rows = [
        r
        for r in rows
        if r["test_accuracy_mean"] is not None and r["inference_ms_per_sample_mean"] is not None
    ]
    if not rows:
        return None
    models = [r["model"] for r in rows]
    fig = Figure(figsize=(9, 6), layout="constrained")
    ax = fig.subplots()
    labels = []
    for row in rows:
        style = variant_style(row["model"], models, plain=row["variant"] == row["model"])
        ax.errorbar(
            row["inference_ms_per_sample_mean"],
            100 * row["test_accuracy_mean"],
            xerr=row["inference_ms_per_sample_std"],
            yerr=None if row["test_accuracy_std"] is None else 100 * row["test_accuracy_std"],
            color=style["color"],
            marker=style["marker"],
            markersize=8,
            linestyle="none",
            capsize=3,
        )
        label = ax.annotate(
            row["variant"],
            (row["inference_ms_per_sample_mean"], 100 * row["test_accuracy_mean"]),
            xytext=(6, 4),
            textcoords="offset points",
            fontsize=8,
        )
        labels.append(label)
    kernels, positions = kernels_and_positions(models)
    present = {m.partition("-")[0] for m in models}, {m.partition("-")[2] for m in models}
    handles = [
        Line2D([], [], color="grey", marker=MARKERS[i % len(MARKERS)], linestyle="none", label=k)
        for i, k in enumerate(kernels)
        if k in present[0]
    ] + [
        Line2D([], [], color=f"C{j % 10}", marker="o", linestyle="none", label=p)
        for j, p in enumerate(positions)
        if p in present[1]
    ]
    ax.legend(handles=handles, fontsize=8, title="kernel (marker), position (colour)", ncols=2)
    ax.set(
        title="Speed / accuracy trade-off",
        xlabel="inference time per sample (ms, median of timed batches)",
        ylabel="test accuracy (%)",
    )
    ax.grid(alpha=0.3)
    ax.margins(x=0.15, y=0.1)
    separate_labels(fig, labels)
    return save_png(fig, path)


def plot_heatmap(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Test accuracy (%) as a kernel x position grid, annotated (mean ± std), n/a if missing;
    the plain variants only (default m, from scratch)."""
    rows = [r for r in rows if r["variant"] == r["model"]]
    kernels, positions = kernels_and_positions([r["model"] for r in rows])
    by_model = {r["model"]: r for r in rows}
    values = np.full((len(kernels), len(positions)), np.nan)
    for i, kernel in enumerate(kernels):
        for j, position in enumerate(positions):
            row = by_model.get(f"{kernel}-{position}")
            if row and row["test_accuracy_mean"] is not None:
                values[i, j] = 100 * row["test_accuracy_mean"]
    fig = Figure(figsize=(1.9 * len(positions) + 2, 1.3 * len(kernels) + 1.5), layout="constrained")
    ax = fig.subplots()
    finite = values[np.isfinite(values)]
    image = ax.imshow(
        np.ma.masked_invalid(values),
        cmap=colormaps["viridis"].with_extremes(bad="lightgrey"),
        vmin=finite.min() if finite.size else 0,
        vmax=finite.max() if finite.size else 100,
    )
    middle = (finite.min() + finite.max()) / 2 if finite.size else 50
    for i, kernel in enumerate(kernels):
        for j, position in enumerate(positions):
            row = by_model.get(f"{kernel}-{position}")
            if math.isnan(values[i, j]):
                text, color = "n/a", "black"
            else:
                std = row["test_accuracy_std"]
                text = f"{values[i, j]:.2f}" + ("" if std is None else f"\n± {100 * std:.2f}")
                color = "black" if values[i, j] > middle else "white"
            ax.text(j, i, text, ha="center", va="center", color=color, fontsize=10)
    ax.set_xticks(range(len(positions)), positions)
    ax.set_yticks(range(len(kernels)), kernels)
    ax.set(xlabel="position encoding", ylabel="attention kernel", title="Test accuracy (%)")
    fig.colorbar(image, ax=ax, shrink=0.8)
    return save_png(fig, path)


def plot_attention_maps(
    image: np.ndarray,
    maps: Mapping[str, np.ndarray | str],
    path: Path,
    title: str,
) -> Path:
    """The test image and, per variant, its CLS attention map over patches (mean over heads)
    laid over it; a variant mapped to a string shows that note instead."""
    kernels, positions = kernels_and_positions(list(maps))
    fig = Figure(
        figsize=(2.6 * (len(positions) + 1), 2.6 * len(kernels) + 0.6), layout="constrained"
    )
    axes = fig.subplots(len(kernels), len(positions) + 1, squeeze=False)
    gray = image.mean(axis=0) if image.ndim == 3 and image.shape[0] != 3 else image
    rgb = np.transpose(image, (1, 2, 0)) if image.ndim == 3 and image.shape[0] == 3 else None
    shown = rgb if rgb is not None else gray
    height, width = shown.shape[:2]
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].imshow(shown, cmap=None if rgb is not None else "gray")
    axes[0, 0].set_title("input", fontsize=10)
    for ax in axes[1:, 0]:
        ax.axis("off")
    for i, kernel in enumerate(kernels):
        for j, position in enumerate(positions):
            ax, model = axes[i, j + 1], f"{kernel}-{position}"
            ax.set_title(model, fontsize=10)
            entry = maps.get(model)
            if entry is None or isinstance(entry, str):
                ax.text(
                    0.5, 0.5, entry or "no run", ha="center", va="center", fontsize=8, wrap=True,
                    transform=ax.transAxes,
                )  # fmt: skip
                ax.set_facecolor("whitesmoke")
                continue
            ax.imshow(shown, cmap=None if rgb is not None else "gray", extent=(0, width, height, 0))
            ax.imshow(
                entry, cmap="inferno", alpha=0.6, extent=(0, width, height, 0),
                interpolation="nearest",
            )  # fmt: skip
            ax.set_title(f"{model} (max {entry.max():.2f})", fontsize=10)
    fig.suptitle(f"{title}\ncolour scale per panel; max = largest weight on one patch")
    return save_png(fig, path)


def plot_feature_ablation(
    ablation: Sequence[dict[str, Any]], references: Sequence[dict[str, Any]], path: Path
) -> Path:
    """Test accuracy, training time per epoch and peak memory against the feature count m
    (log2 axis), one line per family (model and options); ``references`` (e.g. softmax rows)
    as dashed levels. A panel whose metric no run recorded is left out."""
    panels = [
        (key, scale, label)
        for key, scale, label in (
            ("test_accuracy", 100.0, "test accuracy (%)"),
            ("train_seconds_per_epoch", 1.0, "training time per epoch (s)"),
            ("peak_memory_mb", 1.0, "peak memory (MiB)"),
        )
        if any(r[f"{key}_mean"] is not None for r in (*ablation, *references))
    ]
    models = [r["model"] for r in (*ablation, *references)]
    fig = Figure(figsize=(5 * len(panels), 4.5), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    families = {r["family"]: r["model"] for r in ablation}  # in table order
    for ax, (key, scale, label) in zip(axes, panels, strict=True):
        for family, model in families.items():
            points = [
                (r["nb_features"], scale * r[f"{key}_mean"], r[f"{key}_std"])
                for r in ablation
                if r["family"] == family and r[f"{key}_mean"] is not None
            ]
            if not points:
                continue
            m, y, std = zip(*points, strict=True)
            err = None if any(e is None for e in std) else [scale * e for e in std]
            ax.errorbar(m, y, yerr=err, label=family, capsize=3, **variant_style(model, models))
        for row in references:
            if row[f"{key}_mean"] is not None:
                ax.axhline(
                    scale * row[f"{key}_mean"],
                    color=variant_style(row["model"], models)["color"],
                    linestyle=(0, (4, 3)),
                    linewidth=1,
                    label=f"{row['variant']} (reference)",
                )
        ax.set_xscale("log", base=2)
        ax.set(xlabel="features per head m", ylabel=label)
        ax.grid(alpha=0.3)
    axes[-1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
    fig.suptitle("Random-feature ablation (mean over seeds; error bars: std)")
    return save_png(fig, path)


def plot_resolution(transfer: dict[str, Any], path: Path) -> Path | None:
    """Test accuracy against evaluation image size, one line per variant, the trained size
    marked; None if no run was evaluated at other sizes."""
    accuracy = transfer["accuracy"]
    if not accuracy:
        return None
    variants, models = transfer["variants"], transfer["models"]
    fig = Figure(figsize=(9, 5.5), layout="constrained")
    ax = fig.subplots()
    for label, points in accuracy.items():
        sizes = sorted(points)
        style = variant_style(
            models[label], list(models.values()), variants[label] == models[label]
        )
        ax.plot(sizes, [100 * points[s] for s in sizes], label=label, **style)
    for size in transfer["trained_image_sizes"]:
        ax.axvline(size, color="grey", linewidth=1, linestyle=":")
    ax.set(
        title=f"Resolution transfer ({', '.join(transfer['resize_modes'])}; dotted: trained size)",
        xlabel="evaluation image size (px)",
        ylabel="test accuracy (%)",
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
    return save_png(fig, path)
