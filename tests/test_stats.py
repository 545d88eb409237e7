"""Report statistics: t intervals over seeds, paired differences, the exact sign-flip (McNemar)
test, the paired bootstrap over images, gap closed with its interval, and every n/a case, on
synthetic run folders with known answers; and the per-image predictions a run records."""

from __future__ import annotations

import csv
import itertools
import json
import math
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import shared_data_dir

from rpevit.report import build_report, load_runs, summarise
from rpevit.report.paired import comparisons, gap_closed_intervals
from rpevit.report.runs import read_predictions
from rpevit.report.stats import (
    bootstrap_means,
    equivalence_margin,
    holm,
    mcnemar_p,
    paired_difference,
    paired_t_p,
    percentile_interval,
    sign_flip_p,
    t_interval,
)
from rpevit.runs import PREDICTIONS
from rpevit.training import evaluate, train
from rpevit.training.evaluation import write_predictions

# Student t quantiles 0.975 in closed form: 2 degrees of freedom, F(t) = 1/2 + t / (2 sqrt(2 +
# t^2)), so t^2 = 2 * 0.95^2 / (1 - 0.95^2); 1 degree of freedom (Cauchy), t = tan(0.475 pi)
T_975_2 = math.sqrt(2 * 0.95**2 / (1 - 0.95**2))  # 4.3027
T_975_1 = math.tan(0.475 * math.pi)  # 12.706


def write_run(
    root: Path,
    model: str,
    seed: int,
    correct: np.ndarray,
    *,
    labels: np.ndarray | None = None,
    predictions: bool = True,
    accuracy: float | None = None,
    options: dict | None = None,
) -> Path:
    """A finished run folder: metrics.json and (if ``predictions``) test_predictions.npz with
    the true class predicted where ``correct`` (another class elsewhere)."""
    correct = np.asarray(correct, dtype=bool)
    labels = np.arange(correct.size) % 10 if labels is None else labels
    log_prob = np.where(correct, math.log(0.8), math.log(0.1))
    run = root / model / "-".join(f"{k}{v}" for k, v in (options or {}).items()) / f"seed{seed}"
    run.mkdir(parents=True)
    config = {"model": model, "seed": seed, "dataset": "mnist", "epochs": 1}
    config["model_options"] = options or {}
    (run / "config.json").write_text(json.dumps(config))
    metrics = {
        "model": model,
        "seed": seed,
        "dataset": "mnist",
        "test_accuracy": float(correct.mean()) if accuracy is None else accuracy,
        "mean_nll": float(-log_prob.mean()),
        "config": config,
    }
    (run / "metrics.json").write_text(json.dumps(metrics))
    if predictions:
        predicted = np.where(correct, labels, (labels + 1) % 10)
        np.savez(run / PREDICTIONS, labels=labels, predicted=predicted, true_log_prob=log_prob)
    return run


def exactly(n: int, right: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` correctness flags, exactly ``right`` of them true, at random positions."""
    flags = np.zeros(n, dtype=bool)
    flags[rng.choice(n, right, replace=False)] = True
    return flags


def analyse(root: Path) -> tuple[list[dict], dict[tuple[str, str], dict], dict]:
    runs, _ = load_runs(root)
    rows = summarise(runs)
    records = {(r["variant"], r["reference"]): r for r in comparisons(rows, runs)}
    return rows, records, gap_closed_intervals(runs)


# --- the statistics, against hand-computed values -----


def test_t_interval_by_hand():
    mean, low, high = t_interval([1.0, 2.0, 3.0])  # mean 2, sd 1, n 3
    assert mean == 2.0
    assert low == pytest.approx(2 - T_975_2 / math.sqrt(3), abs=1e-12)
    assert high == pytest.approx(2 + T_975_2 / math.sqrt(3), abs=1e-12)
    _, low, high = t_interval([0.5, 0.7])  # sd sqrt(0.02), 1 degree of freedom
    assert (high - low) / 2 == pytest.approx(T_975_1 * math.sqrt(0.02) / math.sqrt(2), abs=1e-12)
    assert t_interval([0.9]) is None and t_interval([]) is None


def test_paired_difference_uses_common_seeds_only():
    a = {1: 0.90, 2: 0.92, 3: 0.91, 7: 0.10}
    b = {0: 0.99, 1: 0.85, 2: 0.86, 3: 0.88}
    result = paired_difference(a, b)
    diffs = [0.05, 0.06, 0.03]  # seeds 1, 2, 3
    sd = statistics.stdev(diffs)
    assert result["seeds"] == [1, 2, 3]
    assert result["mean"] == pytest.approx(statistics.fmean(diffs), abs=1e-12)
    assert result["std"] == pytest.approx(sd, abs=1e-12)
    half = T_975_2 * sd / math.sqrt(3)
    assert result["ci"] == pytest.approx([0.14 / 3 - half, 0.14 / 3 + half], abs=1e-12)
    # shifted seeds: pairing by position instead of by seed would give other numbers
    shifted = paired_difference({1: 0.9, 2: 0.8, 3: 0.7}, {2: 0.6, 3: 0.5, 4: 0.0})
    assert shifted["seeds"] == [2, 3] and shifted["mean"] == pytest.approx(0.2)
    assert shifted["std"] == pytest.approx(0.0, abs=1e-12)
    one = paired_difference({1: 0.9}, {1: 0.8})
    assert one["mean"] == pytest.approx(0.1) and one["std"] is None and one["ci"] is None


def t_2(t: float) -> float:
    """Student t CDF with 2 degrees of freedom in closed form."""
    return 0.5 + t / (2 * math.sqrt(2 + t * t))


def test_paired_t_test_and_equivalence_margin_by_hand():
    diffs = [0.01, 0.02, 0.03]  # mean 0.02, sd 0.01, se 0.01 / sqrt(3), t = 2 sqrt(3)
    t = 0.02 / (0.01 / math.sqrt(3))
    assert paired_t_p(diffs) == pytest.approx(2 * (1 - t_2(t)), abs=1e-12)  # 0.07418
    assert paired_t_p([-d for d in diffs]) == pytest.approx(paired_t_p(diffs), abs=1e-15)
    # TOST at level a: margin |mean| + t_{1-a, 2} se, with t_q^2 = 2 c^2 / (1 - c^2), c = 2q - 1
    for alpha in (0.05, 0.05 / 22):
        c = 1 - 2 * alpha
        quantile = math.sqrt(2 * c * c / (1 - c * c))
        expected = 0.02 + quantile * 0.01 / math.sqrt(3)
        assert equivalence_margin(diffs, alpha) == pytest.approx(expected, abs=1e-12)
    assert equivalence_margin([-d for d in diffs]) == pytest.approx(equivalence_margin(diffs))
    assert paired_t_p([0.01, 0.01]) == 0.0 and paired_t_p([0.0, 0.0]) == 1.0
    assert paired_t_p([0.1]) is None and equivalence_margin([0.1]) is None
    assert paired_difference({1: 0.9, 2: 0.8, 3: 0.9}, {1: 0.89, 2: 0.78, 3: 0.87})[
        "p"
    ] == pytest.approx(paired_t_p(diffs), abs=1e-9)


def binomial_two_sided(b: int, c: int) -> float:
    """McNemar's exact p by hand: 2 P(X >= max(b, c)), X ~ binomial(b + c, 1/2), capped at 1."""
    n = b + c
    tail = sum(math.comb(n, k) for k in range(max(b, c), n + 1)) / 2**n
    return min(1.0, 2 * tail)


def test_mcnemar_exact_p_values_by_hand():
    assert mcnemar_p(8, 2) == pytest.approx(0.109375, abs=1e-15)  # 2 * 56 / 1024
    assert mcnemar_p(2, 8) == pytest.approx(0.109375, abs=1e-15)
    assert mcnemar_p(16, 4) == pytest.approx(binomial_two_sided(16, 4), abs=1e-15)
    assert mcnemar_p(16, 4) == pytest.approx(0.01181793212890625, abs=1e-15)
    assert mcnemar_p(0, 6) == pytest.approx(2 / 64, abs=1e-15)
    assert mcnemar_p(5, 5) == pytest.approx(1.0) and mcnemar_p(0, 0) == 1.0
    assert mcnemar_p(300, 220) == pytest.approx(binomial_two_sided(300, 220), rel=1e-9)


@pytest.mark.parametrize("trial", range(6))
def test_sign_flip_p_matches_brute_force_enumeration(trial):
    rng = np.random.default_rng(trial)
    d = rng.integers(-3, 4, size=rng.integers(4, 12))
    t = abs(d.sum())
    flips = [abs(np.dot(signs, d)) >= t for signs in itertools.product((-1, 1), repeat=d.size)]
    assert sign_flip_p(d) == pytest.approx(np.mean(flips), abs=1e-12)


def test_holm_by_hand():
    assert holm([0.01, 0.04, None, 0.03]) == pytest.approx([0.03, 0.06, None, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert holm([None]) == [None]


def test_paired_bootstrap_by_hand():
    rng = np.random.default_rng(0)
    n = 4000
    a = exactly(n, 3200, rng)[None]  # one seed
    assert percentile_interval(np.diff(bootstrap_means([a, a]), axis=1)[:, 0]) == [0.0, 0.0]
    b = a.copy()
    b[0, np.flatnonzero(a[0])[:200]] = False  # only the first right on 200 images, no others
    replicates = bootstrap_means([a, b])
    assert replicates.shape == (2000, 2)
    assert replicates.mean(axis=0) == pytest.approx([0.8, 0.75], abs=2e-3)
    # the difference is a mean of n i.i.d. 0/1 values with p = 0.05: standard error by hand
    se = math.sqrt(0.05 * 0.95 / n)
    low, high = percentile_interval(replicates[:, 0] - replicates[:, 1])
    assert low == pytest.approx(0.05 - 1.96 * se, abs=0.25 * se)
    assert high == pytest.approx(0.05 + 1.96 * se, abs=0.25 * se)
    same = bootstrap_means([a, b], resample_seeds=True)  # one seed: nothing else to resample
    assert np.array_equal(same, replicates)


# --- comparisons and gap closed on synthetic run folders -----


def test_comparisons_on_run_folders(tmp_path):
    rng = np.random.default_rng(1)
    n = 1000
    soft = exactly(n, 900, rng)
    for seed in (1, 2):  # favor-ape differs on the same 10 images on both seeds
        write_run(tmp_path, "softmax-ape", seed, soft)
    # seed 1: favor-ape right on 2 images softmax misses, wrong on 8 it gets: b = 2, c = 8
    wrong_soft, right_soft = np.flatnonzero(~soft), np.flatnonzero(soft)
    favor = soft.copy()
    favor[wrong_soft[:2]] = True
    favor[right_soft[:8]] = False
    write_run(tmp_path, "favor-ape", 1, favor)
    write_run(tmp_path, "favor-ape", 2, favor)
    write_run(tmp_path, "favor-ape", 3, soft)  # no softmax-ape seed 3: left out of the pairs
    # favor-rope: on seed 1 as favor-ape plus 8 images, on seed 2 other 8 images (disjoint)
    rope1, rope2 = favor.copy(), favor.copy()
    misses = np.flatnonzero(~favor)
    rope1[misses[:8]] = True
    rope2[misses[8:16]] = True
    write_run(tmp_path, "favor-rope", 1, rope1)
    write_run(tmp_path, "favor-rope", 2, rope2)
    rows, records, _ = analyse(tmp_path)

    row = {r["variant"]: r for r in rows}["favor-ape"]
    accs = [0.894, 0.894, 0.9]
    half = T_975_2 * statistics.stdev(accs) / math.sqrt(3)
    assert row["test_accuracy_ci"] == pytest.approx([0.896 - half, 0.896 + half], abs=1e-12)

    kernel = records[("favor-ape", "softmax-ape")]
    assert kernel["seeds"] == [1, 2]
    assert kernel["difference"] == pytest.approx(-0.006) and kernel["difference_std"] == 0
    assert kernel["seed_ci"] == pytest.approx([-0.006, -0.006])
    assert kernel["discordant"] == [4, 16]  # summed over the two seeds
    # the same 10 images split the models on both seeds: they count once (p of b=2, c=8),
    # not as 20 independent pairs (pooled McNemar: 0.0118)
    assert kernel["p_value"] == pytest.approx(0.109375, abs=1e-12)
    assert kernel["image_ci"][0] < -0.006 < kernel["image_ci"][1]
    # NLL per image is -log 0.8 where right, -log 0.1 where wrong: its difference is -log 8
    # times the accuracy difference, in every bootstrap resample too
    log8 = math.log(8)
    assert kernel["nll_difference"] == pytest.approx(0.006 * log8)
    assert kernel["nll_seed_ci"] == pytest.approx([0.006 * log8] * 2)
    low, high = kernel["image_ci"]
    assert kernel["nll_image_ci"] == pytest.approx([-log8 * high, -log8 * low], abs=1e-12)

    position = records[("favor-rope", "favor-ape")]
    assert position["kind"] == "position"
    assert position["difference"] == pytest.approx(0.008)
    assert position["discordant"] == [16, 0]
    # each seed adds 8 other images: D_i = +1 on 16 images, p = 2 / 2^16
    assert position["p_value"] == pytest.approx(2 / 2**16, abs=1e-15)
    rope_soft = records[("favor-rope", "softmax-rope")]
    assert rope_soft["notes"] == ["no softmax-rope runs"] and rope_soft["p_value"] is None
    family = [r["p_value"] for r in records.values()]
    adjusted = holm(family)
    assert [r["p_holm"] for r in records.values()] == adjusted
    assert [r["significant"] for r in records.values()] == [
        None if p is None else p < 0.05 for p in adjusted
    ]
    assert position["significant"] is True and kernel["significant"] is False


def test_comparisons_keep_options_and_feature_counts(tmp_path):
    flags = np.ones(100, bool)
    for model, options in (
        ("favor-ape", {}),
        ("favor-rope", {}),
        ("favor-rope", {"rope_mode": "mixed"}),
        ("softmax-rope", {"rope_mode": "mixed"}),
        ("favor-ape", {"nb_features": 16}),
        ("favor-rpe", {"nb_features": 16}),
    ):
        write_run(tmp_path, model, 1, flags, options=options)
    _, records, _ = analyse(tmp_path)
    assert set(records) == {
        ("favor-ape", "softmax-ape"),
        ("favor-ape m=16", "softmax-ape"),  # the softmax reference has no feature count
        ("favor-rope", "softmax-rope"),
        ("favor-rope rope_mode=mixed", "softmax-rope rope_mode=mixed"),
        ("favor-rpe m=16", "softmax-rpe"),
        ("favor-rope", "favor-ape"),
        ("favor-rope rope_mode=mixed", "favor-ape rope_mode=mixed"),  # not run: n/a
        ("softmax-rope rope_mode=mixed", "softmax-ape rope_mode=mixed"),
        ("favor-rpe m=16", "favor-ape m=16"),
    }
    assert records[("favor-rpe m=16", "favor-ape m=16")]["p_value"] == 1.0  # both always right
    missing = records[("favor-rope rope_mode=mixed", "favor-ape rope_mode=mixed")]
    assert missing["notes"] == ["no favor-ape rope_mode=mixed runs"]


def test_seed_level_holm_over_the_declared_family(tmp_path):
    flags = np.ones(10, bool)
    accuracy = {  # per seed 1, 2, 3
        "softmax-ape": (0.90, 0.91, 0.92),
        "softmax-rpe": (0.91, 0.91, 0.94),
        "favor-ape": (0.88, 0.90, 0.90),
        "favor-rpe": (0.90, 0.93, 0.93),
        "exp-ape": (0.80, 0.81, 0.85),  # not a study kernel: outside the family
    }
    for model, values in accuracy.items():
        for seed, acc in zip((1, 2, 3), values, strict=True):
            write_run(tmp_path, model, seed, flags, accuracy=acc, predictions=False)
    for seed, acc in zip((1, 2, 3), (0.7, 0.8, 0.75), strict=True):  # an option variant
        write_run(tmp_path, "favor-ape", seed, flags, accuracy=acc, predictions=False,
                  options={"nb_features": 16})  # fmt: skip
    _, records, _ = analyse(tmp_path)
    family = [
        ("favor-ape", "softmax-ape"),
        ("favor-rpe", "softmax-rpe"),
        ("softmax-rpe", "softmax-ape"),
        ("favor-rpe", "favor-ape"),
    ]
    assert sorted(k for k, r in records.items() if r["family"]) == sorted(family)
    differences = {
        key: [a - b for a, b in zip(accuracy[key[0]], accuracy[key[1]], strict=True)]
        for key in family
    }
    p = [paired_t_p(differences[key]) for key in family]
    for key, expected in zip(family, holm(p), strict=True):
        record = records[key]
        assert record["seed_p"] == pytest.approx(paired_t_p(differences[key]), abs=1e-12)
        assert record["seed_p_holm"] == pytest.approx(expected, abs=1e-12)
        assert record["seed_significant"] == (expected < 0.05)
        margin = equivalence_margin(differences[key], 0.05 / 4)  # Bonferroni over 4
        assert record["equivalence_margin"] == pytest.approx(margin, abs=1e-12)
    for key in (("exp-ape", "softmax-ape"), ("favor-ape m=16", "softmax-ape")):
        outside = records[key]
        assert outside["seed_p"] is not None and not outside["family"]
        assert outside["seed_p_holm"] is None and outside["equivalence_margin"] is None


def test_gap_closed_interval_contains_the_true_value(tmp_path):
    rng = np.random.default_rng(2)
    n = 4000
    for seed in (1, 2, 3):  # exact accuracies 0.9, 0.8 and 0.85: gap closed 0.5
        write_run(tmp_path, "softmax-ape", seed, exactly(n, 3600, rng))
        write_run(tmp_path, "favor-ape", seed, exactly(n, 3200, rng))
        write_run(tmp_path, "favor-rpe", seed, exactly(n, 3400, rng))
    _, _, intervals = analyse(tmp_path)
    rpe = intervals["favor"]["rpe"]
    assert rpe["estimate"] == pytest.approx(0.5) and rpe["seeds"] == [1, 2, 3]
    low, high = rpe["ci"]
    assert low < 0.5 < high and high - low < 0.5  # images-level noise only: a narrow interval
    assert rpe["note"] is None


def test_gap_closed_interval_resamples_seeds(tmp_path):
    rng = np.random.default_rng(3)
    n = 10000
    for seed, right in ((1, 8000), (2, 9000)):  # gap closed 0 on seed 1, 1 on seed 2
        write_run(tmp_path, "softmax-ape", seed, exactly(n, 9000, rng))
        write_run(tmp_path, "favor-ape", seed, exactly(n, 8000, rng))
        write_run(tmp_path, "favor-rope", seed, exactly(n, right, rng))
    _, _, intervals = analyse(tmp_path)
    rope = intervals["favor"]["rope"]
    assert rope["estimate"] == pytest.approx(0.5)
    # resampling the two seeds gives 0, 0.5 or 1 (plus image noise): the interval spans them;
    # over images alone it would be about 0.5 +- 0.06
    assert rope["ci"][0] < 0.1 and rope["ci"][1] > 0.9


def test_gap_closed_na_cases(tmp_path):
    rng = np.random.default_rng(4)
    n = 2000
    ahead = tmp_path / "ahead"  # relu-ape beats softmax-ape: no gap to close
    write_run(ahead, "softmax-ape", 1, exactly(n, 1800, rng))
    write_run(ahead, "relu-ape", 1, exactly(n, 1850, rng))
    write_run(ahead, "relu-rpe", 1, exactly(n, 1850, rng))
    write_run(ahead, "favor-ape", 2, exactly(n, 1600, rng))  # seed 2 only
    write_run(ahead, "favor-rope", 2, exactly(n, 1700, rng))
    _, records, intervals = analyse(ahead)
    assert intervals["relu"]["rpe"]["note"] == "relu-ape is not behind softmax-ape: no gap to close"
    assert intervals["relu"]["rope"]["note"] == "no relu-rope runs"
    assert intervals["favor"]["rope"]["note"] == (
        "no seed common to favor-rope, favor-ape and softmax-ape"
    )
    assert all(
        intervals[k][p]["ci"] is None and intervals[k][p]["estimate"] is None
        for k, p in (("relu", "rpe"), ("relu", "rope"), ("favor", "rope"))
    )
    unpaired = records[("favor-ape", "softmax-ape")]
    assert unpaired["notes"] == ["no seed in common (favor-ape: [2], softmax-ape: [1])"]
    assert unpaired["difference"] is None and unpaired["p_value"] is None
    single = records[("relu-ape", "softmax-ape")]
    assert single["seed_ci"] is None and single["p_value"] is not None
    assert single["notes"] == ["one common seed: no interval over seeds"]

    small = tmp_path / "small"  # a 0.3 pp gap on 2000 images: not significant
    write_run(small, "softmax-ape", 1, exactly(n, 1806, rng))
    write_run(small, "favor-ape", 1, exactly(n, 1800, rng))
    write_run(small, "favor-rpe", 1, exactly(n, 1803, rng))
    write_run(small, "favor-rope", 1, exactly(n, 1803, rng), predictions=False)  # old run
    write_run(small, "favor-string", 1, exactly(n, 1803, rng), labels=np.zeros(n, int))
    _, records, intervals = analyse(small)
    rpe = intervals["favor"]["rpe"]
    assert rpe["estimate"] == pytest.approx(0.5) and rpe["ci"] is None
    assert rpe["note"].startswith(
        "no interval: the gap to close, acc(softmax-ape) - acc(favor-ape)"
    )
    assert "is not significant" in rpe["note"]
    rope = intervals["favor"]["rope"]
    assert rope["estimate"] == pytest.approx(0.5)  # from metrics.json
    assert rope["note"] == f"no interval: favor-rope seed 1: no {PREDICTIONS}"
    assert intervals["favor"]["string"]["note"].startswith("no interval: test sets differ")
    old = records[("favor-rope", "favor-ape")]
    assert old["difference"] == pytest.approx(0.0015) and old["p_value"] is None
    assert f"no test on images: favor-rope seed 1: no {PREDICTIONS}" in old["notes"]

    twice = tmp_path / "twice"  # softmax-ape seed 1 twice: which run pairs with favor-ape's?
    for where in ("a", "b"):
        write_run(twice / where, "softmax-ape", 1, exactly(n, 1800, rng))
    write_run(twice, "favor-ape", 1, exactly(n, 1700, rng))
    _, records, _ = analyse(twice)
    assert records[("favor-ape", "softmax-ape")]["notes"] == [
        "softmax-ape ran seed(s) [1] more than once: cannot pair them"
    ]

    stale = tmp_path / "stale"  # predictions of another checkpoint than metrics.json's
    flags = exactly(n, 1800, rng)
    write_run(stale, "softmax-ape", 1, flags, accuracy=0.95)
    (run,) = load_runs(stale)[0]
    predictions, reason = read_predictions(run)
    assert predictions is None
    assert reason == f"{PREDICTIONS} disagrees with metrics.json (accuracy 0.9000 vs 0.9500)"
    (run.path / PREDICTIONS).write_bytes(b"not a zip")
    assert read_predictions(run)[1].startswith(f"{PREDICTIONS} is unreadable")


def test_report_statistics_section(tmp_path):
    rng = np.random.default_rng(5)
    for seed in (1, 2, 3):
        write_run(tmp_path, "softmax-ape", seed, exactly(1000, 900 + seed, rng))
        write_run(tmp_path, "favor-ape", seed, exactly(1000, 800, rng))
        write_run(tmp_path, "favor-rpe", seed, exactly(1000, 851, rng))
    write_run(tmp_path, "favor-rpe", 1, exactly(1000, 700, rng), options={"nb_features": 16})
    summary = build_report(tmp_path, tmp_path / "report")
    text = (tmp_path / "report" / "results.md").read_text()
    assert "## Statistics" in text and "McNemar's exact test" in text
    half = 100 * T_975_2 * 0.001 / math.sqrt(3)  # sd of 0.901, 0.902, 0.903
    assert (
        f"| softmax-ape | 1 2 3 | 90.20 ± 0.10 | [{90.2 - half:.2f}, {90.2 + half:.2f}] |" in text
    )
    assert "| favor-ape − softmax-ape | 1 2 3 | -10.20 ± 0.10 |" in text
    assert summary["comparisons"][0]["reference"] == "softmax-ape"
    gap = summary["gap_closed_intervals"]["favor"]["rpe"]
    assert gap["estimate"] == pytest.approx(0.5) and gap["ci"][0] < 0.5 < gap["ci"][1]
    assert summary["gap_closed_intervals"]["favor"]["rope"]["note"] == "no favor-rope runs"
    assert f"| favor-rpe | 1 2 3 | 0.50 | [{gap['ci'][0]:.2f}, {gap['ci'][1]:.2f}] |  |" in text
    saved = json.loads((tmp_path / "report" / "report.json").read_text())
    assert saved["comparisons"] == json.loads(json.dumps(summary["comparisons"]))
    with (tmp_path / "report" / "results.csv").open() as f:
        rows = {row["variant"]: row for row in csv.DictReader(f)}
    assert float(rows["favor-rpe"]["gap_closed_ci_low"]) == pytest.approx(gap["ci"][0])
    assert (
        rows["favor-rpe"]["gap_closed_note"] == "" and rows["favor-ape"]["gap_closed_ci_low"] == ""
    )
    assert rows["favor-rpe m=16"]["gap_closed_ci_low"] == ""  # only the plain model's row
    low = float(rows["softmax-ape"]["test_accuracy_ci_low"])
    assert low == pytest.approx(0.902 - T_975_2 * 0.001 / math.sqrt(3), abs=1e-12)
    with (tmp_path / "report" / "comparisons.csv").open() as f:
        pairs = {(r["variant"], r["reference"]): r for r in csv.DictReader(f)}
    pair = pairs[("favor-rpe", "favor-ape")]
    record = next(r for r in summary["comparisons"] if r["reference"] == "favor-ape")
    assert float(pair["difference"]) == pytest.approx(0.051) and pair["seeds"] == "1 2 3"
    assert float(pair["p_value"]) == pytest.approx(record["p_value"])
    assert [int(pair["only_first_right"]), int(pair["only_second_right"])] == record["discordant"]
    assert float(pair["seed_ci_low"]) == pytest.approx(0.051)  # no spread over seeds
    assert pair["significant"] == "True"


def test_report_without_seeds_or_predictions_has_no_statistics_section(tmp_path):
    write_run(tmp_path, "softmax-ape", 1, np.ones(10, bool), predictions=False)
    summary = build_report(tmp_path, tmp_path / "report")
    assert "## Statistics" not in (tmp_path / "report" / "results.md").read_text()
    assert any("no statistics section" in note for note in summary["notes"])
    assert summary["comparisons"] == []


# --- the predictions a run records -----


def test_write_predictions_format(tmp_path):
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 3.0, 1.0], [0.5, 0.25, -0.75]])
    labels = torch.tensor([0, 2, 2])
    write_predictions(tmp_path / PREDICTIONS, logits, labels)
    with np.load(tmp_path / PREDICTIONS) as data:
        assert data["labels"].tolist() == [0, 2, 2] and data["predicted"].tolist() == [0, 1, 0]
        reference = [
            2 - math.log(math.exp(2) + 1 + math.exp(-1)),
            1 - math.log(1 + math.exp(3) + math.exp(1)),
            -0.75 - math.log(math.exp(0.5) + math.exp(0.25) + math.exp(-0.75)),
        ]
        assert data["true_log_prob"] == pytest.approx(reference, abs=1e-12)
        assert data["true_log_prob"].dtype == np.float64


def test_training_and_evaluate_record_predictions(tmp_path):
    root = shared_data_dir()
    if root is None:
        pytest.skip("shared MNIST data not found")
    config = dict(
        model="relu-ape", dataset="mnist", preset="quick", data_dir=str(root), out=str(tmp_path),
        run_name="r", max_train_samples=256, max_val_samples=128, max_test_samples=300,
        batch_size=64, epochs=1, progress_bar=False, inference_batch_size=32, patch_size=7,
        dim=32, depth=1, heads=2, mlp_dim=64,
    )  # fmt: skip
    metrics = train(config)
    run = tmp_path / "r"
    with np.load(run / PREDICTIONS) as data:
        labels, predicted, log_prob = data["labels"], data["predicted"], data["true_log_prob"]
    assert labels.shape == predicted.shape == log_prob.shape == (300,)
    assert (predicted == labels).mean() == pytest.approx(metrics["test_accuracy"], abs=1e-6)
    assert -log_prob.mean() == pytest.approx(metrics["mean_nll"], rel=1e-5)
    (run / PREDICTIONS).unlink()
    evaluate(run, max_test_samples=100)  # another test set: the run's file is not written
    assert not (run / PREDICTIONS).exists()
    evaluate(run)
    with np.load(run / PREDICTIONS) as data:
        assert np.array_equal(data["labels"], labels) and np.array_equal(
            data["predicted"], predicted
        )
