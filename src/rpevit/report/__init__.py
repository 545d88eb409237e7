"""Results tables (Markdown, CSV) and figures built from finished run folders."""

from rpevit.report.attention import attention_weights, cls_attention_map
from rpevit.report.build import build_report
from rpevit.report.runs import Run, load_runs, read_curves
from rpevit.report.tables import (
    ablation_rows,
    gap_closed,
    init_comparison,
    mean_std,
    summarise,
    transfer_table,
)

__all__ = [
    "Run",
    "ablation_rows",
    "attention_weights",
    "build_report",
    "cls_attention_map",
    "gap_closed",
    "init_comparison",
    "load_runs",
    "mean_std",
    "read_curves",
    "summarise",
    "transfer_table",
]
