"""``rpevit report``: options and handler."""

from __future__ import annotations

import argparse

from rpevit.report.budgets import build_budget_report
from rpevit.report.build import build_report


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``rpevit report``."""
    parser.add_argument(
        "runs_dirs",
        nargs="+",
        metavar="RUNS_DIR",
        help="folder(s) holding run folders (e.g. a grid's --out; several to compare grids, "
        "e.g. from scratch and from a checkpoint)",
    )
    parser.add_argument("--out", help="output folder (default: <first RUNS_DIR>/report)")
    parser.add_argument(
        "--data-dir", help="data folder for the attention-map image (default: the runs' own)"
    )
    parser.add_argument(
        "--image-index", type=int, default=0, help="test image for the attention maps (default 0)"
    )
    parser.add_argument(
        "--tuned",
        type=lambda text: tuple(k for k in text.split(",") if k),
        default=(),
        metavar="KEY[,KEY]",
        help="model options chosen per kernel by tuning (e.g. frpe_terms): runs that differ "
        "only in them are one variant, the values listed beside it",
    )
    parser.add_argument(
        "--by-budget",
        action="store_true",
        help="instead: the gap by training budget, runs grouped by their epochs (budgets.md, "
        "accuracy and gap against budget; default --out: <first RUNS_DIR>/budgets)",
    )


def run_report_command(args: argparse.Namespace) -> int:
    """Handler of ``rpevit report``: build the report, print where it is and any notes."""
    if args.by_budget:
        out = args.out or f"{args.runs_dirs[0]}/budgets"
        budgets = build_budget_report(args.runs_dirs, out, args.tuned)
        for note in budgets["notes"]:
            print(f"note: {note}")
        print(f"budget report of {len(budgets['accuracy'])} rows: {out}/budgets.md")
        return 0
    summary = build_report(
        args.runs_dirs,
        args.out,
        data_dir=args.data_dir,
        image_index=args.image_index,
        tuned=args.tuned,
    )
    for note in summary["notes"]:
        print(f"note: {note}")
    print(f"report of {summary['num_runs']} runs: {', '.join(summary['files'])}")
    return 0
