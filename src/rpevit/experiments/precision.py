"""bf16-mixed against float32 training at equal recipe: per model, the paired test-accuracy
difference over seeds and whether it meets the accuracy target (its seed interval contains 0
and ``|mean| <=`` :data:`TOLERANCE`).

``python -m rpevit.experiments.precision BF16_RUNS FP32_RUNS [--out DIR]`` compares the models
both folders ran (the float32 runs are typically the published study's records) and writes
``precision.md`` and ``precision.json``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rpevit.atomic import atomic_write, write_json_atomic
from rpevit.errors import ConfigError
from rpevit.report.results_render import NA, markdown_table
from rpevit.report.runs import Run, load_runs
from rpevit.report.stats import mean_std, paired_difference
from rpevit.report.tables import pct, pp

#: The accuracy target: bf16 may differ from float32 by at most this (absolute) on average.
TOLERANCE = 0.005


def _by_seed(runs: Sequence[Run], precision: str) -> dict[str, dict[int, Run]]:
    """Runs trained with ``precision`` by model and seed (others are an error: mixed inputs)."""
    found: dict[str, dict[int, Run]] = {}
    for run in runs:
        used = run.config.get("precision")
        if used != precision:
            raise ConfigError(f"{run.path} trained in {used!r}, expected {precision!r}")
        if run.seed is not None:
            found.setdefault(run.variant, {})[run.seed] = run
    return found


def compare(bf16: Sequence[Run], fp32: Sequence[Run]) -> list[dict[str, Any]]:
    """Per model both ran: test accuracy of each (mean, std), the paired difference bf16 -
    fp32 over common seeds, its t interval and whether the target holds."""
    low, full = _by_seed(bf16, "bf16-mixed"), _by_seed(fp32, "32-true")
    rows = []
    for variant in sorted(set(low) & set(full)):
        acc = {name: {s: r.metrics.test_accuracy for s, r in runs[variant].items()}
               for name, runs in (("bf16", low), ("fp32", full))}  # fmt: skip
        diff = paired_difference(acc["bf16"], acc["fp32"])
        ci, mean = diff["ci"], diff["mean"]
        met = None if ci is None else bool(ci[0] <= 0 <= ci[1] and abs(mean) <= TOLERANCE)
        rows.append({
            "variant": variant, "seeds": diff["seeds"],
            "fp32": mean_std(acc["fp32"][s] for s in diff["seeds"]),
            "bf16": mean_std(acc["bf16"][s] for s in diff["seeds"]),
            "difference": mean, "difference_ci": ci, "differences": diff["differences"],
            "target_met": met,
        })  # fmt: skip
    return rows


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    """``precision.md``: the comparison table and the rule."""

    def acc(pair: tuple[float | None, float | None]) -> str:
        mean, std = pair
        return NA if mean is None else pct(mean) + ("" if std is None else f" ± {pct(std)}")

    table = markdown_table(
        ["variant", "seeds", "fp32 test %", "bf16-mixed test %", "Δ bf16 - fp32 (pp)",
         "95% CI, seeds", "target met"],
        [[r["variant"], " ".join(map(str, r["seeds"])), acc(r["fp32"]), acc(r["bf16"]),
          NA if r["difference"] is None else pp(r["difference"]),
          NA if r["difference_ci"] is None
          else f"[{pp(r['difference_ci'][0])}, {pp(r['difference_ci'][1])}]",
          {True: "yes", False: "no", None: NA}[r["target_met"]]] for r in rows],
    )  # fmt: skip
    return "\n\n".join([
        "# bf16-mixed against float32 training",
        f"Test accuracy of the best-validation checkpoint, paired by seed. Target: the seed "
        f"interval (Student t, 95%) of the difference contains 0 and |mean| <= "
        f"{100 * TOLERANCE:.1f} pp.",
        table,
    ]) + "\n"  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rpevit.experiments.precision")
    parser.add_argument("bf16_runs", help="folder of bf16-mixed runs")
    parser.add_argument("fp32_runs", help="folder of float32 runs with the same recipe")
    parser.add_argument("--out", default=None, help="output folder (default: BF16_RUNS)")
    args = parser.parse_args(argv)
    try:
        rows = compare(load_runs(args.bf16_runs)[0], load_runs(args.fp32_runs)[0])
    except ConfigError as error:
        raise SystemExit(f"error: {error}") from None
    if not rows:
        raise SystemExit("error: no model ran in both folders")
    out = Path(args.out or args.bf16_runs)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "precision.md", "w") as f:
        f.write(markdown(rows))
    write_json_atomic(out / "precision.json", rows)
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
