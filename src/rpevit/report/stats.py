"""Statistics of the report: intervals over seeds, an exact test and a bootstrap over test images.

Two sources of variability are kept apart:

- *training* (seeds): a variant's mean over seeds and the paired difference of two variants
  over their common seeds get Student t intervals with n - 1 degrees of freedom
  (:func:`t_interval`, :func:`paired_difference`); they hold the test set fixed.
- *test-set sampling* (images): for fixed trained models, two variants are compared on the same
  test images by an exact sign-flip test of the per-image difference in correct predictions
  summed over seeds (:func:`sign_flip_p`; with one seed it is McNemar's exact test) and by a
  paired percentile bootstrap over images (:func:`bootstrap_means`).

The image, not the (image, seed) pair, is the unit of the test: pooling the discordant pairs of
several seeds into one McNemar test would count an image that is hard for one model and easy for
the other once per seed, as if the seeds were independent evidence on new images.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence

import numpy as np
from scipy import stats

#: Coverage of every interval and level of every test.
CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE
#: Bootstrap resamples and the seed of their generator (reports are reproducible).
BOOTSTRAP_SAMPLES = 2000
BOOTSTRAP_SEED = 0
_CHUNK = 100  # resamples drawn at once (bounds memory: CHUNK x images)


def mean_std(values: Iterable[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof 1) of the non-missing values; std is None
    with fewer than two values, both are None with none."""
    present = [float(v) for v in values if v is not None]
    if not present:
        return None, None
    return statistics.fmean(present), statistics.stdev(present) if len(present) > 1 else None


def t_interval(
    values: Sequence[float], confidence: float = CONFIDENCE
) -> tuple[float, float, float] | None:
    """``(mean, low, high)``: the Student t interval ``mean +- t_{n-1} s / sqrt(n)`` with the
    sample standard deviation ``s`` (ddof 1); None with fewer than two values."""
    x = np.asarray(values, dtype=np.float64)
    if x.size < 2:
        return None
    mean = float(x.mean())
    half = stats.t.ppf(0.5 + confidence / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
    return mean, float(mean - half), float(mean + half)


def paired_difference(
    a: dict[int, float], b: dict[int, float], confidence: float = CONFIDENCE
) -> dict[str, object]:
    """Paired difference ``a[s] - b[s]`` over the seeds ``s`` both hold: the seeds, the
    per-seed differences, the mean, the sample std, the t interval and the paired t-test's
    p-value (None where fewer than two seeds are common)."""
    seeds = sorted(set(a) & set(b))
    diffs = [a[s] - b[s] for s in seeds]
    interval = t_interval(diffs, confidence)
    mean, std = mean_std(diffs)
    return {
        "seeds": seeds,
        "differences": diffs,
        "mean": mean,
        "std": std,
        "ci": None if interval is None else [interval[1], interval[2]],
        "p": paired_t_p(diffs),
    }


def paired_t_p(differences: Sequence[float]) -> float | None:
    """Two-sided p-value of the paired t-test over seeds (the per-seed differences against 0,
    n - 1 degrees of freedom); None with fewer than two differences. Equal differences give
    p = 0 (or 1 if they are all 0): no training variability was seen."""
    d = np.asarray(differences, dtype=np.float64)
    if d.size < 2:
        return None
    std = d.std(ddof=1)
    if std == 0:
        return 0.0 if d.mean() != 0 else 1.0
    t = d.mean() / (std / math.sqrt(d.size))
    return float(2 * stats.t.sf(abs(t), d.size - 1))


def equivalence_margin(differences: Sequence[float], alpha: float = ALPHA) -> float | None:
    """The smallest margin ``delta`` for which two one-sided t-tests (TOST) at level ``alpha``
    reject both ``mean <= -delta`` and ``mean >= delta``: ``|mean| + t_{1-alpha, n-1} s/sqrt(n)``.
    The seeds then exclude differences of ``delta`` or more; None with fewer than two."""
    d = np.asarray(differences, dtype=np.float64)
    if d.size < 2:
        return None
    half = stats.t.ppf(1 - alpha, d.size - 1) * d.std(ddof=1) / math.sqrt(d.size)
    return float(abs(d.mean()) + half)


def sign_flip_p(differences: Sequence[int] | np.ndarray) -> float:
    """Exact two-sided p-value of the sign-flip test of integer per-image differences ``D_i``.

    Null hypothesis: every ``D_i`` is symmetric about 0 (the two models are exchangeable on
    each image). The statistic ``T = sum D_i`` is compared with its exact distribution over all
    ``2^n`` sign flips, ``p = P(|T*| >= |T|)``. For ``D_i`` in {-1, 0, 1} (one seed: +1 where
    only the first model is right) this is McNemar's exact test, binomial(b + c, 1/2).
    """
    d = np.asarray(differences, dtype=np.int64)
    observed = abs(int(d.sum()))
    magnitudes = np.abs(d[d != 0])
    if magnitudes.size == 0:
        return 1.0
    # T* = 2 U - K with U = sum_v v X_v, X_v ~ binomial(count of |D_i| = v, 1/2)
    pmf = np.ones(1)
    for v, count in zip(*np.unique(magnitudes, return_counts=True), strict=True):
        scaled = np.zeros(int(v) * int(count) + 1)
        scaled[:: int(v)] = stats.binom.pmf(np.arange(count + 1), count, 0.5)
        pmf = np.convolve(pmf, scaled)
    total = int(magnitudes.sum())
    t_values = 2 * np.arange(pmf.size) - total
    return float(min(1.0, pmf[np.abs(t_values) >= observed].sum()))


def mcnemar_p(b: int, c: int) -> float:
    """McNemar's exact two-sided p-value for ``b`` and ``c`` discordant pairs."""
    return sign_flip_p(np.r_[np.ones(b, np.int64), -np.ones(c, np.int64)])


def bootstrap_means(
    values: Sequence[np.ndarray],
    *,
    resample_seeds: bool = False,
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> np.ndarray:
    """``[samples, M]`` bootstrap replicates of the mean over seeds and images of each of the
    ``M`` arrays ``values[m]`` (``[seeds, images]``, seed ``s`` and image ``i`` the same
    training seed and test image in every array).

    Each replicate resamples the images with replacement, the same images for every array and
    seed (paired); with ``resample_seeds`` it also resamples the seeds (the same for every array).
    """
    stacked = np.stack([np.asarray(v, dtype=np.float64) for v in values])  # [M, S, N]
    if stacked.ndim != 3:
        raise ValueError(f"expected [seeds, images] arrays of one shape, got {stacked.shape[1:]}")
    _, num_seeds, num_images = stacked.shape
    rng = np.random.default_rng(seed)
    out = np.empty((samples, stacked.shape[0]))
    for start in range(0, samples, _CHUNK):
        b = min(_CHUNK, samples - start)
        draws = rng.integers(0, num_images, size=(b, num_images))
        image_weights = (
            np.bincount(
                (draws + num_images * np.arange(b)[:, None]).ravel(), minlength=b * num_images
            )
            .reshape(b, num_images)
            .astype(np.float64)
        )
        if resample_seeds:
            picks = rng.integers(0, num_seeds, size=(b, num_seeds))
            seed_weights = (picks[:, :, None] == np.arange(num_seeds)).sum(axis=1)
        else:
            seed_weights = np.ones((b, num_seeds), dtype=np.int64)
        per_seed = (image_weights @ stacked.reshape(-1, num_images).T).reshape(b, -1, num_seeds)
        out[start : start + b] = np.einsum("bs,bms->bm", seed_weights, per_seed)
    return out / (num_seeds * num_images)


def percentile_interval(replicates: np.ndarray, confidence: float = CONFIDENCE) -> list[float]:
    """``[low, high]``: the central ``confidence`` percentile interval of bootstrap replicates."""
    low, high = np.quantile(replicates, [0.5 - confidence / 2, 0.5 + confidence / 2])
    return [float(low), float(high)]


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm-Bonferroni adjusted p-values (family: the values that are not None)."""
    present = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(present):
        running = max(running, min(1.0, (len(present) - rank) * p))
        adjusted[i] = running
    return adjusted
