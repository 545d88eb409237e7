"""How each run ended: the epoch of its best checkpoint, its final validation accuracy, and
the test accuracy of its last checkpoint beside that of its best; and the warnings for runs
that ended below their best (a collapse late in training, e.g. a FAVOR+ redraw).

Every variant is compared under one rule: the test accuracy of its best-validation checkpoint
(``best.ckpt``, chosen on the validation split only). That rule hides a run that peaked early
and then fell; these numbers show it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rpevit.report.runs import Run
from rpevit.report.stats import mean_std

#: A run whose final validation accuracy is more than this below its best gets a warning.
DROP = 0.02

#: The comparison rule, as the report states it.
RULE = (
    "Every variant is compared on the test accuracy of its best-validation checkpoint "
    "(best.ckpt, chosen on the validation split only). Best epoch: the epoch of that "
    "checkpoint, per seed, of the epochs trained; final val: validation accuracy after the "
    "last epoch; last-checkpoint test: test accuracy of the final model (last.ckpt; n/a for "
    f"runs that did not record it). A warning names every variant with a run whose best epoch "
    f"is not its last or whose final validation accuracy is more than {100 * DROP:.0f} pp "
    "below its best."
)


@dataclass(frozen=True)
class Ending:
    """How one run ended (epochs 1-based)."""

    best_epoch: int
    final_epoch: int
    best_val: float
    final_val: float
    last_test: float | None

    @property
    def warnings(self) -> list[str]:
        """What is wrong with this ending (empty: it ended at its best)."""
        found = []
        if self.best_epoch != self.final_epoch:
            found.append(f"best epoch {self.best_epoch} of {self.final_epoch}")
        if self.final_val < self.best_val - DROP:
            found.append(
                f"final val {100 * self.final_val:.2f}% vs best {100 * self.best_val:.2f}%"
            )
        return found


def ending(run: Run) -> Ending | None:
    """The run's :class:`Ending` from its validation curve (the best epoch is its best
    checkpoint's where recorded); None without a validation curve."""
    curve = {
        epoch: values["val_acc"] for epoch, values in run.curves.items() if "val_acc" in values
    }
    if not curve:
        return None
    best = run.metrics.checkpoint_epoch
    if best not in curve:
        best = max(curve, key=lambda epoch: (curve[epoch], -epoch))  # earliest of the maxima
    final = max(curve)
    return Ending(best + 1, final + 1, curve[best], curve[final], run.metrics.last_test_accuracy)


def ending_rows(runs: Sequence[Run]) -> dict[str, dict[str, Any]]:
    """Per variant: best epochs and final epochs per seed, best/final validation accuracy and
    last-checkpoint test accuracy (mean, std), and the warnings of its runs."""
    by_variant: dict[str, list[tuple[Run, Ending]]] = {}
    for run in runs:
        if (end := ending(run)) is not None:
            by_variant.setdefault(run.variant, []).append((run, end))
    rows = {}
    for variant, group in by_variant.items():
        ends = [end for _, end in group]
        row: dict[str, Any] = {
            "best_epochs": [end.best_epoch for end in ends],
            "final_epochs": [end.final_epoch for end in ends],
            "warnings": [
                f"seed {run.seed}: {', '.join(end.warnings)}" for run, end in group if end.warnings
            ],
        }
        for key, values in (
            ("best_val_accuracy", [end.best_val for end in ends]),
            ("final_val_accuracy", [end.final_val for end in ends]),
            ("last_test_accuracy", [end.last_test for end in ends]),
        ):
            row[f"{key}_mean"], row[f"{key}_std"] = mean_std(values)
        rows[variant] = row
    return rows


def warning_lines(endings: dict[str, dict[str, Any]], order: Sequence[str]) -> list[str]:
    """One line per variant (in ``order``) with a run that did not end at its best."""
    return [
        f"WARNING: {variant} did not end at its best ({'; '.join(endings[variant]['warnings'])})"
        for variant in order
        if variant in endings and endings[variant]["warnings"]
    ]
