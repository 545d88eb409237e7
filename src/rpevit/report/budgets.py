"""The gap as a function of the training budget: runs of one data set trained for several epoch
budgets (a grid per budget), grouped by the epochs they trained.

Per budget and variant: test accuracy over seeds (mean, std, t interval). Per budget and
Performer variant ``K-X``: the paired difference to ``softmax-X`` (the declared family's
kernel comparison, with its seed-level Holm p over that budget's family, see
:func:`rpevit.report.paired.comparisons`) and to ``softmax-ape`` (seed t interval only: not in
the declared family), each over the seeds both ran. Two figures: test accuracy against budget
per variant, and each Performer gap to softmax with the same encoding against budget, with its
seed interval.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from rpevit.atomic import atomic_write, write_json_atomic, write_rows_atomic
from rpevit.registry import PERFORMER_KERNELS, RELATIVE_POSITIONS
from rpevit.report.endings import ending
from rpevit.report.paired import comparisons, is_normalised
from rpevit.report.plot_style import save_png, variant_style
from rpevit.report.results_render import NA, markdown_table
from rpevit.report.runs import Run, load_runs
from rpevit.report.stats import paired_difference
from rpevit.report.tables import pct, pp, summarise


def runs_by_budget(runs: Sequence[Run]) -> dict[int, list[Run]]:
    """The runs grouped by the epochs they trained, smallest budget first (runs initialised
    from another run are left out: their budget is not their own epochs)."""
    groups: dict[int, list[Run]] = {}
    for run in runs:
        if run.source is None and run.epochs is not None:
            groups.setdefault(int(run.epochs), []).append(run)
    return dict(sorted(groups.items()))


def _gap(runs: Sequence[Run], variant: str, reference: str) -> dict[str, Any]:
    """Paired test-accuracy difference ``variant - reference`` over their common seeds."""

    def accuracy(name: str) -> dict[int, float]:
        return {r.seed: r.metrics.test_accuracy for r in runs if r.variant == name}

    return paired_difference(accuracy(variant), accuracy(reference))


def budget_tables(by_budget: dict[int, list[Run]]) -> tuple[list[dict], list[dict]]:
    """Rows of test accuracy per (budget, variant) and of Performer gaps per (budget, variant)."""
    accuracy, gaps = [], []
    for budget, runs in by_budget.items():
        rows = summarise(runs)
        family = {(r["variant"], r["reference"]): r for r in comparisons(rows, runs) if r["family"]}
        for row in rows:
            tuned = sorted(
                {
                    json.dumps(r.tuned_options, sort_keys=True)
                    for r in runs
                    if r.variant == row["variant"] and r.tuned_options
                }
            )
            accuracy.append({"budget": budget, **{k: row[k] for k in (
                "variant", "model", "kernel", "position", "runs", "seeds",
                "test_accuracy_mean", "test_accuracy_std", "test_accuracy_ci")},
                "tuned": "; ".join(tuned) or None})  # fmt: skip
            plain = row["variant"] == row["model"] or is_normalised(row["variant"])
            if row["kernel"] not in PERFORMER_KERNELS or not plain:
                continue
            same = f"softmax-{row['position']}"
            record = family.get((row["variant"], same), {})
            to_same, to_ape = (
                _gap(runs, row["variant"], same),
                _gap(runs, row["variant"], "softmax-ape"),
            )
            gaps.append({
                "budget": budget, "variant": row["variant"], "model": row["model"],
                "kernel": row["kernel"], "position": row["position"], "seeds": to_same["seeds"],
                "gap_to_softmax_same": to_same["mean"], "gap_to_softmax_same_ci": to_same["ci"],
                "seed_p": record.get("seed_p"), "seed_p_holm": record.get("seed_p_holm"),
                "equivalence_margin": record.get("equivalence_margin"),
                "gap_to_softmax_ape": to_ape["mean"], "gap_to_softmax_ape_ci": to_ape["ci"],
            })  # fmt: skip
    return accuracy, gaps


#: A published budget-study run should end within this of its best validation accuracy.
ENDING_TOLERANCE = 0.01


def late_drops(by_budget: dict[int, list[Run]]) -> list[dict[str, Any]]:
    """Every run whose final validation accuracy is more than :data:`ENDING_TOLERANCE` below
    its best (budget, variant, seed, best and final validation accuracy)."""
    found = []
    for budget, runs in by_budget.items():
        for run in runs:
            end = ending(run)
            if end is not None and end.final_val < end.best_val - ENDING_TOLERANCE:
                found.append({
                    "budget": budget, "variant": run.variant, "seed": run.seed,
                    "best_val": end.best_val, "final_val": end.final_val,
                    "best_epoch": end.best_epoch, "final_epoch": end.final_epoch,
                })  # fmt: skip
    return found


def study_cost(by_budget: dict[int, list[Run]]) -> list[dict[str, Any]]:
    """Per budget: runs, their training time summed in hours (single-threaded runs: core-hours
    of training epochs, without validation and evaluation) and how many runs recorded none."""
    rows = []
    for budget, runs in by_budget.items():
        seconds = [run.metrics.training_seconds(run.epochs) for run in runs]
        timed = [s for s in seconds if s is not None]
        rows.append({"budget": budget, "runs": len(runs), "training_hours": sum(timed) / 3600,
                     "untimed_runs": len(seconds) - len(timed)})  # fmt: skip
    return rows


def _cost_markdown(cost: list[dict[str, Any]]) -> str:
    rows = [[str(c["budget"]), str(c["runs"]), f"{c['training_hours']:.1f}", str(c["untimed_runs"])]
            for c in cost]  # fmt: skip
    total = [sum(c[k] for c in cost) for k in ("runs", "training_hours", "untimed_runs")]
    rows.append(["all", str(total[0]), f"{total[1]:.1f}", str(total[2])])
    return "\n\n".join([
        markdown_table(["epochs", "runs", "training hours (sum over runs)", "runs without time"],
                       rows),
        "Time in the training epochs as each run recorded it (validation, test evaluation and "
        "start-up not included), summed over runs; a run uses the threads it was given (the "
        "budget study: one), so with one thread the sum is in core-hours.",
    ])  # fmt: skip


def gap_matrix_markdown(accuracy: list[dict], gaps: list[dict], budget: int) -> str:
    """The kernel comparison at one budget as a matrix, a column per encoding: softmax's test
    accuracy, then a row per Performer kernel (Luo's normalised FAVOR+ its own row) with Δ vs
    softmax with the same encoding in pp, its seed interval and its Holm p over the family."""
    mine = [g for g in gaps if g["budget"] == budget]
    softmax = {
        r["position"]: f"{pct(r['test_accuracy_mean'])} ± {pct(r['test_accuracy_std'] or 0)}"
        for r in accuracy
        if r["budget"] == budget and r["kernel"] == "softmax" and r["variant"] == r["model"]
    }
    present = {g["position"] for g in mine} | set(softmax)
    positions = [p for p in ("ape", *RELATIVE_POSITIONS) if p in present]
    positions += sorted(present - set(positions))
    cells: dict[str, dict[str, str]] = {"softmax: test acc %": softmax}
    for g in mine:
        kernel = g["variant"].replace(f"-{g['position']}", "", 1)
        if g["gap_to_softmax_same"] is None:
            cell = NA
        else:
            holm = "" if g["seed_p_holm"] is None else f", p_Holm {g['seed_p_holm']:.2f}"
            cell = f"{pp(g['gap_to_softmax_same'])} {_interval(g['gap_to_softmax_same_ci'])}{holm}"
        cells.setdefault(f"{kernel}: Δ pp", {})[g["position"]] = cell
    return markdown_table(
        ["kernel \\ encoding", *positions],
        [[kernel, *[row.get(p, "") for p in positions]] for kernel, row in cells.items()],
    )


def _interval(ci: Sequence[float] | None) -> str:
    return NA if ci is None else f"[{pp(ci[0])}, {pp(ci[1])}]"


def _endings_markdown(drops: list[dict], total: int) -> str:
    """The runs that ended more than :data:`ENDING_TOLERANCE` below their best, or that none
    did."""
    limit = f"{100 * ENDING_TOLERANCE:.0f} pp"
    if not drops:
        return f"All {total} runs ended within {limit} of their best validation accuracy."
    rows = [
        [str(d["budget"]), d["variant"], str(d["seed"]), pct(d["best_val"]),
         f"{d['best_epoch']} of {d['final_epoch']}", pct(d["final_val"])]
        for d in drops
    ]  # fmt: skip
    return "\n\n".join([
        f"WARNING: {len(drops)} of {total} runs ended more than {limit} below their best "
        "validation accuracy:",
        markdown_table(["epochs", "variant", "seed", "best val %", "best epoch", "final val %"],
                       rows),
    ])  # fmt: skip


def budgets_markdown(
    accuracy: list[dict],
    gaps: list[dict],
    plots: Sequence[Path],
    drops: list[dict],
    cost: list[dict],
) -> str:
    """``budgets.md``: test accuracy per variant and budget, the Performer gaps, the runs
    that did not end near their best, and the training time the runs took."""
    total = sum(c["runs"] for c in cost)
    budgets = sorted({r["budget"] for r in accuracy})
    cells: dict[str, dict[int, str]] = {}
    tuned: dict[str, set[str]] = {}
    for r in accuracy:
        std = "" if r["test_accuracy_std"] is None else f" ± {pct(r['test_accuracy_std'])}"
        text = f"{pct(r['test_accuracy_mean'])}{std} ({r['runs']})"
        cells.setdefault(r["variant"], {})[r["budget"]] = text
        tuned.setdefault(r["variant"], set()).update([r["tuned"]] if r["tuned"] else [])
    table = markdown_table(
        ["variant", *[f"{b} epochs: test acc % (seeds)" for b in budgets], "tuned options"],
        [[v, *[cells[v].get(b, NA) for b in budgets], "; ".join(sorted(tuned[v])) or ""]
         for v in cells],
    )  # fmt: skip
    gap_table = markdown_table(
        ["epochs", "variant", "seeds", "Δ vs softmax, same encoding (pp)", "95% CI, seeds",
         "p Holm (seeds, family)", "equivalence margin δ (pp)", "Δ vs softmax-ape (pp)",
         "95% CI, seeds"],
        [[str(g["budget"]), g["variant"], " ".join(map(str, g["seeds"])) or NA,
          NA if g["gap_to_softmax_same"] is None else pp(g["gap_to_softmax_same"]),
          _interval(g["gap_to_softmax_same_ci"]),
          NA if g["seed_p_holm"] is None else f"{g['seed_p_holm']:.3f}",
          NA if g["equivalence_margin"] is None else f"{100 * g['equivalence_margin']:.2f}",
          NA if g["gap_to_softmax_ape"] is None else pp(g["gap_to_softmax_ape"]),
          _interval(g["gap_to_softmax_ape_ci"])] for g in gaps],
    )  # fmt: skip
    return "\n\n".join([
        "# The gap by training budget",
        "Test accuracy: mean ± std over seeds (runs in brackets). Δ: paired over the seeds both "
        "variants ran, with the Student t interval over seeds. The kernel comparison (vs softmax "
        "with the same encoding) is in the declared family: its seed-level Holm p is adjusted "
        "over that budget's family, and δ is the TOST equivalence margin at family-wise "
        "0.05. Δ vs softmax-ape is outside the family: its interval is uncorrected.",
        f"## The gap at {budgets[-1]} epochs",
        "Softmax: test accuracy, mean ± std over seeds. Performer rows: Δ test accuracy vs "
        "softmax with the same encoding, pp [95% seed interval], with the Holm-adjusted seed p "
        "over that budget's declared family; empty: not run at this budget.",
        gap_matrix_markdown(accuracy, gaps, budgets[-1]),
        "## Test accuracy", table, "## Performer gaps", gap_table,
        "## How the runs ended", _endings_markdown(drops, total),
        "## Training time", _cost_markdown(cost),
        "## Plots", "\n\n".join(f"![{p.stem}]({p.name})" for p in plots),
    ]) + "\n"  # fmt: skip


def _budget_axis(ax: Any, budgets: list[int]) -> None:
    """A log-scale epoch axis labelled at the budgets only."""
    ax.set_xscale("log")
    ax.set_xticks(budgets, [str(b) for b in budgets])
    ax.minorticks_off()
    ax.set_xlabel("training budget (epochs)")


#: Neighbouring variants' points at one budget are drawn this factor apart (log axis), so their
#: error bars do not hide each other; small against the factor 3 between budgets.
DODGE = 1.025


def _dodge(i: int, n: int) -> float:
    return DODGE ** (i - (n - 1) / 2)


def _kernel_panels(rows: list[dict], width: float = 5.0) -> tuple[Figure, list[tuple[str, Any]]]:
    """One panel per kernel of ``rows`` (in their order), sharing the accuracy axis."""
    kernels = list(dict.fromkeys(r["kernel"] for r in rows))
    fig = Figure(figsize=(width * len(kernels), 5.5), layout="constrained")
    axes = fig.subplots(1, len(kernels), sharey=True, squeeze=False)[0]
    for ax, kernel in zip(axes, kernels, strict=True):
        ax.set_title(kernel)
        ax.grid(True, alpha=0.3)
    return fig, list(zip(kernels, axes, strict=True))


def _plot_by_kernel(
    rows: list[dict],
    point: Callable[[dict], tuple[float, float, float] | None],
    path: Path,
    ylabel: str,
    zero_line: bool = False,
) -> Path:
    """One panel per kernel, one line per variant against budget; ``point(row)`` gives the
    value with its error below and above, or None where there is nothing to draw."""
    models = sorted({r["model"] for r in rows})
    budgets = sorted({r["budget"] for r in rows})
    fig, panels = _kernel_panels(rows)
    for kernel, ax in panels:
        variants = list(dict.fromkeys(r["variant"] for r in rows if r["kernel"] == kernel))
        for i, variant in enumerate(variants):
            mine = [r for r in rows if r["variant"] == variant]
            found = sorted((r["budget"], p) for r in mine if (p := point(r)) is not None)
            if not found:
                continue
            y, below, above = zip(*(p for _, p in found), strict=True)
            model = mine[0]["model"]
            ax.errorbar([b * _dodge(i, len(variants)) for b, _ in found], y,
                        yerr=[below, above], capsize=3, label=variant,
                        **variant_style(model, models, plain=variant == model))  # fmt: skip
        if zero_line:
            ax.axhline(0, color="black", linewidth=0.8)
        _budget_axis(ax, budgets)
        ax.legend(fontsize=7)
    panels[0][1].set_ylabel(ylabel)
    return save_png(fig, path)


def plot_accuracy_vs_budget(accuracy: list[dict], path: Path) -> Path:
    """Test accuracy (mean, error bars: std over seeds) against budget, one panel per kernel and
    one line per variant."""

    def point(row: dict) -> tuple[float, float, float]:
        std = 100 * (row["test_accuracy_std"] or 0)
        return 100 * row["test_accuracy_mean"], std, std

    return _plot_by_kernel(accuracy, point, path, "test accuracy (%), mean ± std over seeds")


def plot_gap_vs_budget(gaps: list[dict], path: Path) -> Path:
    """Each Performer variant's gap to softmax with the same encoding against budget, one panel
    per kernel, error bars its seed t interval; the zero line is "no gap"."""

    def point(gap: dict) -> tuple[float, float, float] | None:
        if gap["gap_to_softmax_same"] is None:
            return None
        mean, ci = 100 * gap["gap_to_softmax_same"], gap["gap_to_softmax_same_ci"]
        return (mean, mean - 100 * ci[0], 100 * ci[1] - mean) if ci else (mean, 0.0, 0.0)

    ylabel = "test accuracy − softmax with the same encoding (pp), 95% CI"
    return _plot_by_kernel(gaps, point, path, ylabel, zero_line=True)


def build_budget_report(
    runs_dirs: Sequence[str | Path], out: str | Path, tuned: Sequence[str] = ()
) -> dict[str, Any]:
    """``budgets.md``, ``budgets.csv`` (gaps), ``budgets.json`` and the two figures in ``out``
    for the runs below ``runs_dirs`` (one data set, grouped by their epochs); ``tuned``: model
    options chosen per kernel by tuning (see :func:`~rpevit.report.runs.load_runs`)."""
    runs, notes = load_runs(*runs_dirs, tuned=tuned, by_epochs=True)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    by_budget = runs_by_budget(runs)
    accuracy, gaps = budget_tables(by_budget)
    drops = late_drops(by_budget)
    cost = study_cost(by_budget)
    plots = [
        plot_accuracy_vs_budget(accuracy, out / "accuracy_vs_budget.png"),
        plot_gap_vs_budget(gaps, out / "gap_vs_budget.png"),
    ]
    with atomic_write(out / "budgets.md", "w") as f:
        f.write(budgets_markdown(accuracy, gaps, plots, drops, cost))
    write_rows_atomic(out / "budgets.csv", gaps)
    summary = {"accuracy": accuracy, "gaps": gaps, "late_drops": drops, "cost": cost,
               "notes": notes}  # fmt: skip
    write_json_atomic(out / "budgets.json", summary)
    return summary
