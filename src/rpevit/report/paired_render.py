"""Renders the paired statistics (rpevit.report.paired): the results.md section, comparisons.csv."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rpevit.atomic import atomic_write
from rpevit.report.results_render import NA, markdown_table
from rpevit.report.stats import ALPHA, BOOTSTRAP_SAMPLES, CONFIDENCE
from rpevit.report.tables import pct, pp

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
    "seed. p Holm: Holm-adjusted over all comparisons in the table. "
    "Seed-level tests: p (seeds, t) is the paired t-test of the per-seed differences (n − 1 "
    "degrees of freedom); the family it is corrected for was declared before the runs: each "
    "Performer kernel against softmax with the same encoding and each relative encoding "
    "against APE with the same kernel, plain study models only (— : outside the family); p "
    "Holm (seeds, family) is Holm-adjusted over that family. Equivalence margin δ: the smallest "
    "margin for which two one-sided t-tests (TOST) reject |Δ| ≥ δ at family-wise level 0.05 "
    "(Bonferroni over the family): the seeds exclude differences of δ or more, and only a "
    'statement of equivalence within δ is supported, not "no difference". '
    "only first / only second "
    "right: discordant (image, seed) pairs summed over seeds. Gap closed: (acc(K-X) − "
    "acc(K-ape)) / (acc(softmax-ape) − acc(K-ape)) on the seeds the three models share; its "
    "interval is a percentile bootstrap resampling seeds and test images jointly for the three "
    "(with few seeds it understates training variability; with one seed it covers images "
    "only). A difference whose seed interval contains 0 is not established across training "
    "runs, whatever p says. n/a: undefined, the note says why; runs without "
    "test_predictions.npz get it from `rpevit evaluate RUN`."
)


def _interval(ci: Sequence[float] | None, fmt: Any = pp) -> str:
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
            diff = pp(r["difference"]) + (f" ± {100 * std:.2f}" if std is not None else "")
        discordant = NA if r["discordant"] is None else "{} / {}".format(*r["discordant"])
        body.append(
            [
                f"{r['variant']} − {r['reference']}",
                _seeds(r["seeds"]),
                diff,
                _interval(r["seed_ci"]),
                _p(r["seed_p"]),
                _p(r["seed_p_holm"]) if r["family"] else "—",
                NA if r["equivalence_margin"] is None else f"{100 * r['equivalence_margin']:.2f}",
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
            "p (seeds, t)",
            "p Holm (seeds, family)",
            "equivalence margin δ (pp, family-wise)",
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
    columns += ["seed_ci_low", "seed_ci_high", "seed_p", "family", "seed_p_holm"]
    columns += ["seed_significant", "equivalence_margin", "image_ci_low", "image_ci_high"]
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
