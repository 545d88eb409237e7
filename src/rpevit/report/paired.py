"""Paired comparisons between variants and "gap closed" with bootstrap intervals.

Comparisons (see :mod:`rpevit.report.stats` for the statistics): every variant with a kernel
other than softmax against softmax with the same position encoding and options, and every
variant with a position encoding other than APE against APE with the same kernel and options
(both trained from scratch). A pair is formed only by runs of the same seed. Each record holds
the paired difference over seeds with its t interval (training variability), and where both
variants recorded test predictions for the same test images, a paired bootstrap interval over
images, the exact sign-flip (McNemar) p-value and its Holm-adjusted value over all comparisons
of the report (test-set sampling variability). Whatever cannot be computed is None, with the
reason in ``notes``.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rpevit.atomic import atomic_write
from rpevit.registry import PERFORMER_KERNELS, RELATIVE_POSITIONS
from rpevit.report.runs import Predictions, Run, read_predictions
from rpevit.report.stats import (
    ALPHA,
    BOOTSTRAP_SAMPLES,
    CONFIDENCE,
    bootstrap_means,
    holm,
    paired_difference,
    percentile_interval,
    sign_flip_p,
)
from rpevit.report.tables import GAP_EPS, NA, markdown_table

#: How to read the statistics section (printed below its tables).
METHODS = (
    "Over seeds (training variability, this test set): mean ± sample std (n − 1) and the "
    "Student t interval mean ± t(0.975, n − 1) s / √n. A comparison pairs runs of the same "
    "seed: Δ is the mean over the seeds both variants ran of acc(first) − acc(second) (> 0: the "
    "first is better), with the t interval of the per-seed differences. Over test images "
    "(test-set sampling, these trained models): the bootstrap interval resamples the test "
    f"images ({BOOTSTRAP_SAMPLES} resamples, the same images for both variants and every "
    "seed) and takes percentiles of Δ; p is the exact sign-flip test of, per image, the number "
    "of seeds on which the first variant is right minus the number on which the second is "
    "(with one seed this is McNemar's exact test). The image, not the (image, seed) pair, is "
    "the unit: an image that splits the two models on every seed counts once, not once per "
    "seed. p Holm: Holm-adjusted over all comparisons in the table. only first / only second "
    "right: discordant (image, seed) pairs summed over seeds. Gap closed: (acc(K-X) − "
    "acc(K-ape)) / (acc(softmax-ape) − acc(K-ape)) on the seeds the three models share; its "
    "interval is a percentile bootstrap resampling seeds and test images jointly for the three "
    "(with few seeds it understates training variability; with one seed it covers images "
    "only). A difference whose seed interval contains 0 is not established across training "
    "runs, whatever p says. n/a: undefined, the note says why; runs without "
    "test_predictions.npz get it from `rpevit evaluate RUN`."
)


class _Runs:
    """The finished runs by variant and seed, with their predictions read once."""

    def __init__(self, runs: Sequence[Run]) -> None:
        self.by_variant: dict[str, dict[int | None, list[Run]]] = {}
        for run in runs:
            self.by_variant.setdefault(run.variant, {}).setdefault(run.seed, []).append(run)
        self._predictions: dict[Path, tuple[Predictions | None, str | None]] = {}

    def seeds(self, variants: Sequence[str]) -> tuple[dict[str, dict[int, Run]], str | None]:
        """Per variant ``{seed: run}``, or why the variants cannot be paired by seed."""
        for variant in variants:
            if variant not in self.by_variant:
                return {}, f"no {variant} runs"
            if None in self.by_variant[variant]:
                return {}, f"{variant} has runs without a recorded seed: cannot pair them"
            twice = [s for s, group in self.by_variant[variant].items() if len(group) > 1]
            if twice:
                return {}, f"{variant} ran seed(s) {twice} more than once: cannot pair them"
        return {v: {s: g[0] for s, g in self.by_variant[v].items()} for v in variants}, None

    def image_arrays(
        self, runs: Sequence[Sequence[Run]]
    ) -> tuple[list[np.ndarray], list[np.ndarray], str | None]:
        """Per variant (a list of runs, one per seed): ``[seeds, images]`` correctness and NLL
        arrays, or why there are none (predictions missing, or on other test images)."""
        correct, nll = [], []
        first: tuple[Run, Predictions] | None = None
        for group in runs:
            per_seed = []
            for run in group:
                if run.path not in self._predictions:
                    self._predictions[run.path] = read_predictions(run)
                predictions, reason = self._predictions[run.path]
                if predictions is None:
                    return [], [], f"{run.variant} seed {run.seed}: {reason}"
                if first is None:
                    first = (run, predictions)
                elif not np.array_equal(predictions.labels, first[1].labels):
                    other = f"{first[0].variant} seed {first[0].seed}"
                    return [], [], f"test sets differ ({run.variant} seed {run.seed}, {other})"
                per_seed.append(predictions)
            correct.append(np.stack([p.correct for p in per_seed]))
            nll.append(np.stack([-p.true_log_prob for p in per_seed]))
        return correct, nll, None


def _metric(runs: dict[int, Run], key: str) -> dict[int, float]:
    values = {s: getattr(r.metrics, key) for s, r in runs.items()}
    return {s: float(v) for s, v in values.items() if v is not None}


def _compare(data: _Runs, variant: str, reference: str, kind: str) -> dict[str, Any]:
    record: dict[str, Any] = {
        "variant": variant,
        "reference": reference,
        "kind": kind,
        "seeds": [],
        "difference": None,
        "difference_std": None,
        "seed_ci": None,
        "image_ci": None,
        "nll_difference": None,
        "nll_seed_ci": None,
        "nll_image_ci": None,
        "discordant": None,
        "p_value": None,
        "notes": [],
    }
    by_seed, reason = data.seeds([variant, reference])
    if reason:
        record["notes"].append(reason)
        return record
    a, b = by_seed[variant], by_seed[reference]
    accuracy = paired_difference(_metric(a, "test_accuracy"), _metric(b, "test_accuracy"))
    nll = paired_difference(_metric(a, "mean_nll"), _metric(b, "mean_nll"))
    seeds = accuracy["seeds"]
    record.update(
        seeds=seeds,
        difference=accuracy["mean"],
        difference_std=accuracy["std"],
        seed_ci=accuracy["ci"],
        nll_difference=nll["mean"],
        nll_seed_ci=nll["ci"],
    )
    if not seeds:
        record["notes"].append(
            f"no seed in common ({variant}: {sorted(a)}, {reference}: {sorted(b)})"
        )
        return record
    if len(seeds) == 1:
        record["notes"].append("one common seed: no interval over seeds")
    correct, losses, reason = data.image_arrays([[a[s] for s in seeds], [b[s] for s in seeds]])
    if reason:
        record["notes"].append(f"no test on images: {reason}")
        return record
    ca, cb = correct
    record["discordant"] = [int((ca & ~cb).sum()), int((~ca & cb).sum())]
    record["p_value"] = sign_flip_p(ca.sum(axis=0, dtype=np.int64) - cb.sum(axis=0, dtype=np.int64))
    replicates = bootstrap_means([*correct, *losses])  # the same resampled images for all four
    record["image_ci"] = percentile_interval(replicates[:, 0] - replicates[:, 1])
    record["nll_image_ci"] = percentile_interval(replicates[:, 2] - replicates[:, 3])
    return record


def comparisons(rows: Sequence[dict[str, Any]], runs: Sequence[Run]) -> list[dict[str, Any]]:
    """Paired comparison records (see the module docstring): first every kernel against
    softmax, then every position encoding against APE, each in table order; with ``p_holm``
    and ``significant`` (Holm-adjusted p below :data:`ALPHA`) over all of them."""
    data = _Runs(runs)
    scratch = [row for row in rows if row["init_from"] is None]
    records = [
        _compare(
            data,
            row["variant"],
            row["family"].replace(row["model"], f"softmax-{row['position']}", 1),
            "kernel",
        )
        for row in scratch
        if row["kernel"] != "softmax"
    ]
    records += [
        _compare(
            data,
            row["variant"],
            row["variant"].replace(row["model"], f"{row['kernel']}-ape", 1),
            "position",
        )
        for row in scratch
        if row["position"] != "ape"
    ]
    for record, adjusted in zip(records, holm([r["p_value"] for r in records]), strict=True):
        record["p_holm"] = adjusted
        record["significant"] = None if adjusted is None else adjusted < ALPHA
    return records


def _gap_interval(data: _Runs, kernel: str, position: str) -> dict[str, Any]:
    target, base, reference = f"{kernel}-{position}", f"{kernel}-ape", "softmax-ape"
    record: dict[str, Any] = {"estimate": None, "ci": None, "seeds": [], "note": None}
    by_seed, reason = data.seeds([target, base, reference])
    if reason:
        record["note"] = reason
        return record
    seeds = sorted(set(by_seed[target]) & set(by_seed[base]) & set(by_seed[reference]))
    record["seeds"] = seeds
    if not seeds:
        record["note"] = f"no seed common to {target}, {base} and {reference}"
        return record
    acc = {v: np.mean([by_seed[v][s].metrics.test_accuracy for s in seeds]) for v in by_seed}
    gap = acc[reference] - acc[base]
    if gap < GAP_EPS:
        record["note"] = f"{base} is not behind {reference}: no gap to close"
        return record
    record["estimate"] = float((acc[target] - acc[base]) / gap)
    correct, _, reason = data.image_arrays([[by_seed[v][s] for s in seeds] for v in by_seed])
    if reason:
        record["note"] = f"no interval: {reason}"
        return record
    replicates = bootstrap_means(correct, resample_seeds=True)
    gain, gaps = replicates[:, 0] - replicates[:, 1], replicates[:, 2] - replicates[:, 1]
    gap_ci = percentile_interval(gaps)
    if gap_ci[0] <= 0:
        record["note"] = (
            f"no interval: the gap to close, acc({reference}) - acc({base}), is not significant "
            f"(95% bootstrap interval [{100 * gap_ci[0]:.2f}, {100 * gap_ci[1]:.2f}] pp)"
        )
        return record
    # the few replicates without a gap (fewer than 2.5%) close it infinitely, by the gain's sign
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(gaps > 0, gain / gaps, np.where(gain >= 0, np.inf, -np.inf))
    record["ci"] = percentile_interval(ratio)
    return record


def gap_closed_intervals(runs: Sequence[Run]) -> dict[str, dict[str, dict[str, Any]]]:
    """``{kernel: {position: record}}``: gap closed on the seeds the three plain models share
    (``estimate``), its 95% bootstrap interval resampling seeds and test images jointly for the
    three (``ci``), the seeds, and why either is missing (``note``)."""
    data = _Runs(runs)
    return {
        kernel: {position: _gap_interval(data, kernel, position) for position in RELATIVE_POSITIONS}
        for kernel in PERFORMER_KERNELS
    }


def _pp(x: float) -> str:
    return f"{100 * x:+.2f}"


def _interval(ci: Sequence[float] | None, fmt: Any = _pp) -> str:
    return NA if ci is None else f"[{fmt(ci[0])}, {fmt(ci[1])}]"


def _p(p: float | None) -> str:
    if p is None:
        return NA
    return f"{p:.3f}" if p >= 1e-3 else ("<1e-300" if p < 1e-300 else f"{p:.1e}")


def _seeds(seeds: Sequence[int]) -> str:
    return " ".join(map(str, seeds)) if seeds else NA


def _comparison_table(records: Sequence[dict[str, Any]]) -> str:
    body = []
    for r in records:
        diff = NA
        if r["difference"] is not None:
            std = r["difference_std"]
            diff = _pp(r["difference"]) + (f" ± {100 * std:.2f}" if std is not None else "")
        discordant = NA if r["discordant"] is None else "{} / {}".format(*r["discordant"])
        body.append(
            [
                f"{r['variant']} − {r['reference']}",
                _seeds(r["seeds"]),
                diff,
                _interval(r["seed_ci"]),
                _interval(r["image_ci"]),
                discordant,
                _p(r["p_value"]),
                _p(r["p_holm"]),
                {True: "*", False: "", None: NA}[r["significant"]],
                "; ".join(r["notes"]),
            ]
        )
    return markdown_table(
        [
            "comparison",
            "seeds",
            "Δ test acc (pp)",
            "95% CI, seeds (t)",
            "95% CI, images (bootstrap)",
            "only first / only second right",
            "p (images)",
            "p Holm",
            f"Holm p < {ALPHA:.2f}",
            "note",
        ],
        body,
    )


def statistics_markdown(
    rows: Sequence[dict[str, Any]],
    records: Sequence[dict[str, Any]],
    intervals: dict[str, dict[str, dict[str, Any]]],
) -> list[str]:
    """The parts of the ``results.md`` statistics section: test accuracy with its interval over
    seeds, the paired comparisons, gap closed with bootstrap intervals, and how to read them."""

    def pct(x: float) -> str:
        return f"{100 * x:.2f}"

    accuracy = markdown_table(
        ["model", "seeds", "test acc % (mean ± std)", "95% CI over seeds (t)"],
        [
            [
                row["variant"],
                _seeds(row["seeds"]),
                pct(row["test_accuracy_mean"])
                + (
                    f" ± {pct(row['test_accuracy_std'])}"
                    if row["test_accuracy_std"] is not None
                    else ""
                ),
                _interval(row["test_accuracy_ci"], pct),
            ]
            for row in rows
        ],
    )
    gap_rows = []
    for kernel, by_position in intervals.items():
        for position, g in by_position.items():
            estimate = NA if g["estimate"] is None else f"{g['estimate']:.2f}"
            ci = _interval(g["ci"], lambda x: f"{x:.2f}")
            gap_rows.append(
                [f"{kernel}-{position}", _seeds(g["seeds"]), estimate, ci, g["note"] or ""]
            )
    return [
        "## Statistics",
        f"All intervals are {100 * CONFIDENCE:.0f}%, tests two-sided at alpha = {ALPHA:.2f}.",
        "### Test accuracy over seeds",
        accuracy,
        "### Paired comparisons",
        _comparison_table(records),
        "### Gap closed with bootstrap intervals",
        markdown_table(
            ["model", "seeds", "gap closed", "95% CI (seeds x images)", "note"], gap_rows
        ),
        METHODS,
    ]


def write_comparisons_csv(records: Sequence[dict[str, Any]], path: Path) -> Path:
    """``comparisons.csv``: one row per paired comparison, raw values (differences as
    fractions, NLL in nats), empty where undefined; ``notes`` says why."""
    columns = ["variant", "reference", "kind", "seeds", "difference", "difference_std"]
    columns += ["seed_ci_low", "seed_ci_high", "image_ci_low", "image_ci_high"]
    columns += ["nll_difference", "nll_seed_ci_low", "nll_seed_ci_high"]
    columns += ["nll_image_ci_low", "nll_image_ci_high", "only_first_right", "only_second_right"]
    columns += ["p_value", "p_holm", "significant", "notes"]
    with atomic_write(path, "w") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for r in records:
            flat = {**r, "seeds": " ".join(map(str, r["seeds"])), "notes": "; ".join(r["notes"])}
            for key in ("seed_ci", "image_ci", "nll_seed_ci", "nll_image_ci"):
                flat[f"{key}_low"], flat[f"{key}_high"] = r[key] or (None, None)
            flat["only_first_right"], flat["only_second_right"] = r["discordant"] or (None, None)
            writer.writerow({k: "" if flat[k] is None else flat[k] for k in columns})
    return path
