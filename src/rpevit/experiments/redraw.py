"""The FAVOR+ redraw-policy measurement (README "Redraw policy"): how a policy's trained runs
end on the validation split, and how much their accuracy depends on the projection draw.

A policy study is a folder of grids ``e<epochs>-<policy>/`` (``scripts/redraw-policy.sh``).
For every finished run, :func:`draw_spread` evaluates ``last.ckpt`` on the validation split
with its stored projection and with ``draws`` fresh ones (indices no training run reaches)
and writes ``redraw_draws.json`` beside the run's records; :func:`policy_rows` then reads,
per run, the best and final validation accuracy of its curve and that spread, and
:func:`write_policy_report` aggregates them per (budget, policy, model) over seeds.

``python -m rpevit.experiments.redraw STUDY_FOLDER [--out DIR] [--draws K]``
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path
from typing import Any

import torch

from rpevit.atomic import atomic_write, write_json_atomic, write_rows_atomic
from rpevit.attention.kernels import FavorKernel
from rpevit.data import DataConfig, ImageDataModule
from rpevit.runs import RunDir, finished_runs
from rpevit.training.inference import load_model, predict

#: Draw indices for evaluation-time draws: far beyond any training run's redraw count.
EVAL_DRAW_BASE = 10**9
DRAWS_FILE = "redraw_draws.json"
GRID_NAME = re.compile(r"e(?P<epochs>\d+)-(?P<policy>[\w.-]+)")


def _val_accuracy(model: torch.nn.Module, datamodule: ImageDataModule) -> float:
    logits, labels = predict(model, datamodule.loader("val"))
    return float((logits.argmax(-1) == labels).double().mean())


def draw_spread(run: RunDir, draws: int = 5) -> dict[str, Any]:
    """Validation accuracy of ``run``'s ``last.ckpt`` with its stored projection and with
    ``draws`` fresh ones (the same draw index in every layer's own seed), written to
    ``redraw_draws.json`` in the run folder and returned."""
    model, info = load_model(run.last)
    datamodule = ImageDataModule.from_config(
        info.config["dataset"], DataConfig.from_record(info.config), eval_batch_size=500
    )
    kernels = [m for m in model.modules() if isinstance(m, FavorKernel)]
    stored = _val_accuracy(model, datamodule)
    fresh = []
    for index in range(draws):
        for kernel in kernels:
            kernel.redraw(EVAL_DRAW_BASE + index)
        fresh.append(_val_accuracy(model, datamodule))
    record = {"stored_draw_val_accuracy": stored, "fresh_draw_val_accuracy": fresh}
    write_json_atomic(run.path / DRAWS_FILE, record)
    return record


def policy_rows(study: Path) -> list[dict[str, Any]]:
    """One row per finished run of the study folder: budget, policy, model, seed, its redraw
    options, best / final validation accuracy (epoch curve) and the draw spread if measured."""
    rows = []
    for run in finished_runs(study):
        grid = GRID_NAME.fullmatch(run.path.relative_to(study).parts[0])
        config, metrics = run.read_config() or {}, run.read_metrics()
        if grid is None or metrics is None:
            continue
        val = run.curves("epoch").get("val/acc", {})
        if not val:
            continue
        best_epoch = max(val, key=lambda e: (val[e], -e))
        path = run.path / DRAWS_FILE
        draws = json.loads(path.read_text()) if path.is_file() else {}
        fresh = draws.get("fresh_draw_val_accuracy") or []
        options = config.get("model_options", {})
        rows.append(
            {
                "epochs": int(grid["epochs"]),
                "policy": grid["policy"],
                "redraw_interval": options.get("redraw_interval"),
                "redraw_stop": options.get("redraw_stop"),
                "model": metrics.model,
                "seed": metrics.seed,
                "best_val": val[best_epoch],
                "best_epoch": best_epoch + 1,
                "final_val": val[max(val)],
                "final_epoch": max(val) + 1,
                "stored_draw_val": draws.get("stored_draw_val_accuracy"),
                "fresh_draw_val_mean": statistics.fmean(fresh) if fresh else None,
                "fresh_draw_val_min": min(fresh) if fresh else None,
                "fresh_draw_val_max": max(fresh) if fresh else None,
            }
        )
    return sorted(rows, key=lambda r: (r["epochs"], r["policy"], r["model"], r["seed"]))


def _pct(values: list[float]) -> str:
    """``mean ± std`` in percent over seeds (std over fewer than two values: omitted)."""
    mean = 100 * statistics.fmean(values)
    return (
        f"{mean:.2f} ± {100 * statistics.stdev(values):.2f}" if len(values) > 1 else f"{mean:.2f}"
    )


def summary_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table per (budget, policy, model): final and best validation accuracy over
    seeds, how many runs ended below their best by > 2 pp, and the fresh-draw spread."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        key = (row["epochs"], row["policy"], row["redraw_interval"], row["redraw_stop"])
        groups.setdefault((*key, row["model"]), []).append(row)
    lines = [
        "| epochs | policy | interval | stop | model | seeds | final val % | best val % "
        "| final < best - 2 pp | fresh-draw val % (mean; min..max over draws x seeds) |",
        "| ---: | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for (epochs, policy, interval, stop, model), group in sorted(groups.items()):
        final, best = [r["final_val"] for r in group], [r["best_val"] for r in group]
        drops = sum(r["final_val"] < r["best_val"] - 0.02 for r in group)
        measured = [r for r in group if r["fresh_draw_val_mean"] is not None]
        spread = "—"
        if measured:
            low = min(r["fresh_draw_val_min"] for r in measured)
            high = max(r["fresh_draw_val_max"] for r in measured)
            mean = statistics.fmean(r["fresh_draw_val_mean"] for r in measured)
            spread = f"{100 * mean:.2f}; {100 * low:.2f}..{100 * high:.2f}"
        lines.append(
            f"| {epochs} | {policy} | {interval} | {stop} | {model} | {len(group)} "
            f"| {_pct(final)} | {_pct(best)} | {drops} | {spread} |"
        )
    return "\n".join(lines) + "\n"


def plot_policy_curves(study: Path, path: Path) -> Path | None:
    """Validation accuracy per epoch: one panel per (budget, model), one colour per policy
    (thick: mean over seeds, thin: each seed); None if there are no runs."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    from rpevit.report.plot_style import save_png

    curves: dict[tuple[int, str], dict[str, list[dict[int, float]]]] = {}
    for run in finished_runs(study):
        grid = GRID_NAME.fullmatch(run.path.relative_to(study).parts[0])
        metrics = run.read_metrics()
        val = run.curves("epoch").get("val/acc", {})
        if grid and metrics and val:
            panel = curves.setdefault((int(grid["epochs"]), metrics.model), {})
            panel.setdefault(grid["policy"], []).append(val)
    if not curves:
        return None
    policies = sorted({policy for panel in curves.values() for policy in panel})
    fig = Figure(figsize=(5 * len(curves), 4.2), layout="constrained")
    axes = fig.subplots(1, len(curves), squeeze=False)[0]
    for ax, ((epochs, model), panel) in zip(axes, sorted(curves.items()), strict=True):
        for policy, seeds in sorted(panel.items()):
            color = f"C{policies.index(policy) % 10}"
            for val in seeds:
                ax.plot([e + 1 for e in sorted(val)], [100 * val[e] for e in sorted(val)],
                        color=color, alpha=0.3, linewidth=0.8)  # fmt: skip
            common = sorted(set.intersection(*(set(v) for v in seeds)))
            mean = [100 * statistics.fmean(v[e] for v in seeds) for e in common]
            ax.plot([e + 1 for e in common], mean, color=color, marker="o", label=policy)
        ax.set_title(f"{model}, {epochs} epochs")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation accuracy (%)")
        ax.grid(True, alpha=0.3)
        ax.legend(title="policy", fontsize=8)
    return save_png(fig, path)


def write_policy_report(study: Path, out: Path) -> list[dict[str, Any]]:
    """``policy.md`` (summary table), ``policy.csv`` (one row per run) and
    ``policy_curves.png`` (validation curves) in ``out``."""
    rows = policy_rows(study)
    out.mkdir(parents=True, exist_ok=True)
    plot_policy_curves(study, out / "policy_curves.png")
    with atomic_write(out / "policy.md", "w") as f:
        f.write(summary_table(rows))
    write_rows_atomic(out / "policy.csv", rows)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study", type=Path, help="folder of e<epochs>-<policy>/ grids")
    parser.add_argument("--out", type=Path, help="report folder (default: STUDY/report)")
    parser.add_argument("--draws", type=int, default=5, help="fresh evaluation draws per run")
    parser.add_argument(
        "--records",
        type=Path,
        help="also copy every finished run's records (no checkpoints) to RECORDS/<grid>/...",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    out = args.out or args.study / "report"
    for run in finished_runs(args.study):
        if run.last.is_file() and not (run.path / DRAWS_FILE).is_file():
            draw_spread(run, args.draws)
        if args.records is not None:
            dest = args.records / run.path.relative_to(args.study)
            run.copy_records(dest, (DRAWS_FILE,), predictions=False)  # validation study
    write_policy_report(args.records or args.study, out)
    print(out.joinpath("policy.md").read_text(), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
