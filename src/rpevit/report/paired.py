"""Paired comparisons between variants and "gap closed" with bootstrap intervals.

Comparisons (see :mod:`rpevit.report.stats` for the statistics): every variant with a kernel
other than softmax against softmax with the same position encoding and options (a Performer
with Luo et al.'s normalised q/k against plain softmax where no softmax run has them), and every
variant with a position encoding other than APE against APE with the same kernel and options
(both trained from scratch). A pair is formed only by runs of the same seed. Each record holds
the paired difference over seeds with its t interval (training variability), and where both
variants recorded test predictions for the same test images, a paired bootstrap interval over
images, the exact sign-flip (McNemar) p-value and its Holm-adjusted value over all comparisons
of the report (test-set sampling variability). Whatever cannot be computed is None, with the
reason in ``notes``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rpevit.registry import CORE_KERNELS, PERFORMER_KERNELS, RELATIVE_POSITIONS
from rpevit.report.runs import Predictions, Run, read_predictions
from rpevit.report.stats import (
    ALPHA,
    bootstrap_means,
    equivalence_margin,
    holm,
    paired_difference,
    percentile_interval,
    sign_flip_p,
)
from rpevit.report.tables import GAP_EPS


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
        "seed_differences": [],
        "seed_p": None,
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
        seed_differences=accuracy["differences"],
        seed_p=accuracy["p"],
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


#: Options of Luo et al.'s normalised Performer features (l2-normalised q/k, a temperature): a
#: stabiliser of the linear kernel, whose rows are compared with plain softmax.
NORMALISED = ("qk_norm", "qk_temperature")


def _options(variant: str) -> dict[str, str]:
    """The ``key=value`` options of a variant label (``favor-ape qk_norm=True`` -> qk_norm)."""
    return dict(token.partition("=")[::2] for token in variant.split()[1:])


def is_normalised(variant: str) -> bool:
    """Whether ``variant`` is a model with Luo et al.'s normalised q/k and no other option."""
    options = _options(variant)
    return options.get("qk_norm") == "True" and set(options) <= set(NORMALISED)


def _kernel_reference(row: dict[str, Any], variants: set[str]) -> str:
    """Softmax with ``row``'s encoding and options, or plain softmax for a normalised row."""
    plain = f"softmax-{row['position']}"
    same = row["family"].replace(row["model"], plain, 1)
    return plain if same not in variants and is_normalised(row["family"]) else same


def comparisons(rows: Sequence[dict[str, Any]], runs: Sequence[Run]) -> list[dict[str, Any]]:
    """Paired comparison records (see the module docstring): first every kernel against
    softmax, then every position encoding against APE, each in table order; with ``p_holm``
    and ``significant`` (Holm-adjusted p below :data:`ALPHA`) over all of them."""
    data = _Runs(runs)
    scratch = [row for row in rows if row["init_from"] is None]
    variants = {row["variant"] for row in scratch}
    records = [
        _compare(data, row["variant"], _kernel_reference(row, variants), "kernel")
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
    family = [r for r in records if in_declared_family(r) and r["seed_p"] is not None]
    for record in records:
        record["family"] = record in family
        record["seed_p_holm"] = record["seed_significant"] = record["equivalence_margin"] = None
    for record, adjusted in zip(family, holm([r["seed_p"] for r in family]), strict=True):
        record["seed_p_holm"] = adjusted
        record["seed_significant"] = adjusted < ALPHA
        # Bonferroni over the family: every stated margin holds at family-wise level ALPHA
        record["equivalence_margin"] = equivalence_margin(
            record["seed_differences"], ALPHA / len(family)
        )
    return records


def in_declared_family(record: dict[str, Any]) -> bool:
    """Whether a comparison belongs to the family the seed-level tests correct for, declared
    before any run: each Performer kernel against softmax with the same encoding, and each
    relative encoding against APE with the same kernel, between the plain study models and
    Luo et al.'s normalised FAVOR+ rows (against plain softmax; their RPE against their APE)."""
    variant = record["variant"]
    model, _, options = variant.partition(" ")
    kernel, _, position = model.partition("-")
    if options and not (kernel == "favor" and is_normalised(variant)):
        return False  # other options, or initialised from another run
    if kernel not in CORE_KERNELS or position not in ("ape", *RELATIVE_POSITIONS):
        return False  # another kernel or encoding
    if record["kind"] == "kernel":
        return kernel in PERFORMER_KERNELS and record["reference"] == f"softmax-{position}"
    reference = variant.replace(model, f"{kernel}-ape", 1)
    return position in RELATIVE_POSITIONS and record["reference"] == reference


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
