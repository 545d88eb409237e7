"""The look shared by every report figure, so a variant looks alike across plots, and PNG saving.

Colour encodes the position encoding and line style / marker the attention kernel. Figures are
drawn with matplotlib's Agg canvas (no display, no global pyplot state).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from rpevit.atomic import atomic_write
from rpevit.registry import CORE_KERNELS, CORE_POSITIONS

LINE_STYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P")
DPI = 150


def kernels_and_positions(models: Sequence[str]) -> tuple[list[str], list[str]]:
    """Kernel and position names to lay out: the core ones, then any others present."""
    kernels, positions = list(CORE_KERNELS), list(CORE_POSITIONS)
    for model in models:
        kernel, _, position = model.partition("-")
        kernels += [kernel] if kernel not in kernels else []
        positions += [position] if position not in positions else []
    return kernels, positions


def variant_style(model: str, models: Sequence[str], plain: bool = True) -> dict[str, Any]:
    """Colour by position, line style and marker by kernel; variants other than the plain model
    (``plain=False``: explicit options or m, or initialised from a checkpoint) are drawn
    lighter with an ``x``."""
    kernels, positions = kernels_and_positions(models)
    kernel, _, position = model.partition("-")
    k, p = kernels.index(kernel), positions.index(position)
    style = {
        "color": f"C{p % 10}",
        "linestyle": LINE_STYLES[k % len(LINE_STYLES)],
        "marker": MARKERS[k % len(MARKERS)],
    }
    if not plain:
        style.update(marker="x", alpha=0.7)
    return style


def save_png(fig: Figure, path: Path, dpi: int = DPI) -> Path:
    FigureCanvasAgg(fig)
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=dpi, bbox_inches="tight")
    return path
