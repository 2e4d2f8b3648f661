"""Confidence intervals and paired tests: the one CONFIDENCE and the one Interval type.

Seeds: Student t-intervals of a mean (:func:`mean_ci`) and paired tests over seeds
(:func:`paired_test`). Test images: the bootstrap (:func:`bootstrap_ci`,
:func:`paired_difference`, :func:`cluster_bootstrap_ci`), McNemar's exact test and binomial
intervals of one accuracy. Seeds and test images together: the two-level bootstrap
(:func:`two_level_ci`, vectorised numpy with a fixed seed) and the per-seed gaps
(:func:`seed_gaps`). Nothing here knows about runs.
"""

from __future__ import annotations

import math
import warnings
from typing import Iterable, NamedTuple, Sequence

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
N_RESAMPLES = 2000
WILCOXON_MIN_PAIRS = 6  # below 6 pairs the exact two-sided p can never reach 0.05


class Interval(NamedTuple):
    """A mean and its interval; ``low``/``high`` are nan where no interval exists (one value)."""

    mean: float
    low: float
    high: float
    n: int
    sd: float = math.nan


def mean_ci(values: Iterable[float], confidence: float = CONFIDENCE,
            bounds: tuple[float, float] = (-math.inf, math.inf)) -> Interval:
    """Mean with its Student t-interval; for one value the interval is undefined (nan). With
    ``bounds`` (an accuracy's 0 and 1) the interval stops at them: with two seeds t's factor is
    12.7, and an accuracy of 87.5% [53.6, 121.4] would claim values that cannot be."""
    x = np.asarray([v for v in values], dtype=float)
    x = x[np.isfinite(x)]
    n = len(x)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, math.nan)
    mean = float(x.mean())
    if n == 1:
        return Interval(mean, math.nan, math.nan, 1, math.nan)
    sd = float(x.std(ddof=1))
    if sd == 0:
        return Interval(mean, mean, mean, n, 0.0)
    low, high = stats.t.interval(confidence, n - 1, loc=mean, scale=sd / math.sqrt(n))
    return Interval(mean, max(float(low), bounds[0]), min(float(high), bounds[1]), n, sd)


def paired_test(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> dict:
    """Paired comparison of a and b (a - b): t-test, Wilcoxon (n >= 6), mean difference with CI, Cohen's d_z."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired values need equal lengths, got {len(a)} and {len(b)}")
    d = a - b
    n = len(d)
    ci = mean_ci(d, confidence)
    out = {"n_pairs": n, "mean_a": float(a.mean()) if n else math.nan,
           "mean_b": float(b.mean()) if n else math.nan, "mean_diff": ci.mean,
           "diff_ci_low": ci.low, "diff_ci_high": ci.high, "t": math.nan, "p_ttest": math.nan,
           "cohens_dz": math.nan, "wilcoxon_stat": math.nan, "p_wilcoxon": math.nan, "note": ""}
    notes = []
    if n < 2:
        notes.append("fewer than 2 pairs: no paired t-test (see McNemar for single runs)")
    elif ci.sd == 0:
        notes.append("all paired differences are equal: t-test and d_z undefined")
    else:
        res = stats.ttest_rel(a, b)
        out.update(t=float(res.statistic), p_ttest=float(res.pvalue), cohens_dz=ci.mean / ci.sd)
    if n >= WILCOXON_MIN_PAIRS and np.any(d != 0):
        res = stats.wilcoxon(a, b)
        out.update(wilcoxon_stat=float(res.statistic), p_wilcoxon=float(res.pvalue))
    elif n >= 2:
        notes.append(f"Wilcoxon not run: {n} pairs (< {WILCOXON_MIN_PAIRS}) cannot reach p < 0.05"
                     if n < WILCOXON_MIN_PAIRS else "Wilcoxon not run: all differences are zero")
    out["note"] = "; ".join(notes)
    return out


def mcnemar_exact(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> dict:
    """McNemar's exact test for two classifiers on the same items.

    b = items only a gets right, c = items only b gets right; under H0 b ~ Binomial(b + c, 1/2).
    """
    ca, cb = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if ca.shape != cb.shape:
        raise ValueError(f"McNemar needs the same items for both models, got {len(ca)} and {len(cb)}")
    b = int((ca & ~cb).sum())
    c = int((~ca & cb).sum())
    n = len(ca)
    p = float(stats.binomtest(b, b + c, 0.5).pvalue) if b + c else 1.0
    return {"n_test": n, "acc_a": float(ca.mean()), "acc_b": float(cb.mean()),
            "acc_diff": (b - c) / n if n else math.nan, "b": b, "c": c, "p_mcnemar": p}


def binomial_ci(n_correct: int, n: int, confidence: float = CONFIDENCE,
                method: str = "wilson") -> tuple[float, float]:
    """Interval for a proportion n_correct / n: ``"wilson"`` (score) or ``"exact"``
    (Clopper-Pearson), from ``scipy.stats.binomtest``; (nan, nan) when n is 0."""
    if n == 0:
        return math.nan, math.nan
    ci = stats.binomtest(int(n_correct), int(n)).proportion_ci(confidence, method=method)
    return float(ci.low), float(ci.high)


def accuracy_ci(n_correct: int, n: int, confidence: float = CONFIDENCE) -> dict:
    """Wilson and Clopper-Pearson ('exact') intervals for one accuracy."""
    (wl, wh), (el, eh) = (binomial_ci(n_correct, n, confidence, m) for m in ("wilson", "exact"))
    return {"wilson_low": wl, "wilson_high": wh, "exact_low": el, "exact_high": eh}


def bootstrap_ci(values, confidence: float = CONFIDENCE, n_resamples: int = N_RESAMPLES,
                 seed: int | np.random.Generator = 0, method: str = "BCa") -> Interval:
    """Mean over images with a bootstrap interval (``scipy.stats.bootstrap``): BCa, with the
    percentile interval where BCa is undefined (very skewed or near-constant scores), or the
    percentile interval alone (``method="percentile"``). nan values are dropped; one value has no
    interval (nan), identical values a zero-width one. ``seed`` is scipy's ``random_state``."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if len(x) == 1:
        return Interval(mean, math.nan, math.nan, 1)
    if np.ptp(x) == 0:
        return Interval(mean, mean, mean, len(x))
    for method in dict.fromkeys((method, "percentile")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # BCa's degenerate-distribution warning: we fall back instead
            ci = stats.bootstrap((x,), np.mean, confidence_level=confidence, n_resamples=n_resamples,
                                 method=method, random_state=seed).confidence_interval
        if np.isfinite(ci.low) and np.isfinite(ci.high):
            break
    return Interval(mean, float(min(ci.low, mean)), float(max(ci.high, mean)), len(x))


def cluster_bootstrap_ci(values, groups, confidence: float = CONFIDENCE, n_resamples: int = N_RESAMPLES,
                         seed: int = 0) -> Interval:
    """Mean over images with a percentile interval that resamples whole groups (slices of one
    scan are not independent): each resample draws as many groups as there are, with
    replacement, and averages every image of the groups drawn. One group: no interval."""
    x, g = np.asarray(values, dtype=float), np.asarray(groups)
    ok = np.isfinite(x)
    x, g = x[ok], g[ok]
    if len(x) == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    ids, inverse = np.unique(g, return_inverse=True)
    sums, sizes = np.bincount(inverse, weights=x), np.bincount(inverse)
    mean = float(x.mean())
    if len(ids) == 1:
        return Interval(mean, math.nan, math.nan, len(x))
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(ids), size=(n_resamples, len(ids)))
    means = sums[draws].sum(axis=1) / sizes[draws].sum(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return Interval(mean, float(min(low, mean)), float(max(high, mean)), len(x))


def paired_difference(a, b, confidence: float = CONFIDENCE, seed: int = 0) -> dict:
    """a - b on the same images: bootstrap interval of the mean difference and the Wilcoxon
    signed-rank p-value (nan when every difference is zero or fewer than two pairs)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    ok = np.isfinite(a) & np.isfinite(b)
    d = a[ok] - b[ok]
    ci = bootstrap_ci(d, confidence, seed=seed)
    p = math.nan
    if len(d) >= 2 and np.any(d != 0):
        p = float(stats.wilcoxon(d, zero_method="zsplit").pvalue)
    return {"n": ci.n, "a": float(a[ok].mean()) if ci.n else math.nan, "b": float(b[ok].mean()) if ci.n else math.nan,
            "difference": ci.mean, "ci_low": ci.low, "ci_high": ci.high, "wilcoxon_p": p}


# ------------------------------------------------------- seeds and test images together

TWO_LEVEL_RESAMPLES = 4000


def unit_weights(n_images: int, groups=None, n_resamples: int = TWO_LEVEL_RESAMPLES,
                 rng: np.random.Generator | None = None, strata=None) -> np.ndarray:
    """(n_resamples, n_images): how many times each image enters each bootstrap resample. Without
    ``groups`` the images are drawn with replacement; with ``groups`` (one id per image, e.g. a
    block of consecutive CT slices) whole groups are drawn, as many as there are, and an image
    counts as often as its group was drawn. The draws are those of :func:`cluster_bootstrap_ci`
    for the same generator, so the two agree where there is nothing else to resample. With
    ``strata`` (one per image, constant within a group: its class), units are drawn within each
    stratum, as many as it has, so every resample holds every class in its own proportion."""
    rng = np.random.default_rng(0) if rng is None else rng
    if groups is None:
        inverse, n_units = np.arange(n_images), n_images
    else:
        ids, inverse = np.unique(np.asarray(groups), return_inverse=True)
        inverse, n_units = inverse.reshape(-1), len(ids)
    if strata is not None:
        strata = np.asarray(strata)
        of_unit = np.empty(n_units, dtype=strata.dtype)
        of_unit[inverse] = strata
        if (of_unit[inverse] != strata).any():
            raise ValueError("strata: a group spans more than one stratum")
        counts = np.zeros((n_resamples, n_units))
        for s in np.unique(of_unit):
            members = np.flatnonzero(of_unit == s)
            draws = rng.integers(0, len(members), size=(n_resamples, len(members)))
            offsets = (draws + len(members) * np.arange(n_resamples)[:, None]).ravel()
            counts[:, members] = np.bincount(offsets, minlength=n_resamples * len(members)).reshape(n_resamples, -1)
        return counts[:, inverse]
    draws = rng.integers(0, n_units, size=(n_resamples, n_units))
    offsets = (draws + n_units * np.arange(n_resamples)[:, None]).ravel()
    counts = np.bincount(offsets, minlength=n_resamples * n_units).reshape(n_resamples, n_units)
    return counts[:, inverse].astype(float)


def seed_weights(n_seeds: int, n_resamples: int = TWO_LEVEL_RESAMPLES,
                 rng: np.random.Generator | None = None) -> np.ndarray:
    """(n_resamples, n_seeds): each resample draws ``n_seeds`` seeds with replacement; the weights
    are the shares (rows sum to 1). One seed: weight 1, nothing to resample."""
    rng = np.random.default_rng(0) if rng is None else rng
    if n_seeds == 1:
        return np.ones((n_resamples, 1))
    draws = rng.integers(0, n_seeds, size=(n_resamples, n_seeds))
    offsets = (draws + n_seeds * np.arange(n_resamples)[:, None]).ravel()
    return np.bincount(offsets, minlength=n_resamples * n_seeds).reshape(n_resamples, n_seeds) / n_seeds


def percentile_interval(estimate: float, resampled: np.ndarray, n: int, confidence: float = CONFIDENCE) -> Interval:
    """The percentile interval of bootstrap replicates, widened to hold ``estimate``."""
    alpha = (1 - confidence) / 2
    low, high = np.quantile(resampled, [alpha, 1 - alpha])
    return Interval(float(estimate), float(min(low, estimate)), float(max(high, estimate)), n)


def two_level_ci(a, b=None, groups=None, paired_seeds: bool = False, confidence: float = CONFIDENCE,
                 n_resamples: int = TWO_LEVEL_RESAMPLES, seed: int = 0, strata=None) -> Interval:
    """Mean of ``a`` (images x seeds: one column per seed, e.g. 1 where that seed's run got the
    image right), or the paired difference mean(a) - mean(b) on the same images, with a
    two-level percentile bootstrap: each resample draws the test images (or whole ``groups``)
    with replacement, the same images for both sides, and the seeds with replacement. The
    estimate is the mean over images of each image's mean over seeds.

    Seeds: with ``paired_seeds`` (a and b have the same seeds, column k of each is seed k) the
    two sides draw the same seed indices, so a resample averages the per-seed gaps of the seeds
    drawn; otherwise each side draws its own seeds. A side with one seed has no seed variance to
    resample: its interval covers the test images only. One column on each side and no groups is
    the ordinary image bootstrap. ``strata``: draw within each (:func:`unit_weights`). ``Interval.n`` is the number of images; ``sd`` the bootstrap
    standard error."""
    a = np.asarray(a, dtype=float)
    a = a[:, None] if a.ndim == 1 else a
    b = None if b is None else np.asarray(b, dtype=float)
    b = b[:, None] if b is not None and b.ndim == 1 else b
    if b is not None and len(b) != len(a):
        raise ValueError(f"paired sides need the same images, got {len(a)} and {len(b)}")
    if paired_seeds and (b is None or b.shape[1] != a.shape[1]):
        raise ValueError("paired seeds need the same number of seeds on both sides")
    if np.isnan(a).any() or (b is not None and np.isnan(b).any()):
        raise ValueError("two_level_ci needs a value for every image and seed")
    n = len(a)
    estimate = float(a.mean() - (b.mean() if b is not None else 0.0))
    if n < 2 or (groups is not None and len(np.unique(groups)) < 2):
        return Interval(estimate, math.nan, math.nan, n)
    rng = np.random.default_rng(seed)
    images = unit_weights(n, groups, n_resamples, rng, strata)          # (R, n)
    wa = seed_weights(a.shape[1], n_resamples, rng)                     # (R, ka)
    per_image = (a @ wa.T).T                                            # (R, n): each image's mean over the seeds drawn
    if b is not None:
        wb = wa if paired_seeds else seed_weights(b.shape[1], n_resamples, rng)
        per_image = per_image - (b @ wb.T).T
    resampled = (images * per_image).sum(axis=1) / images.sum(axis=1)
    ci = percentile_interval(estimate, resampled, n, confidence)
    return ci._replace(sd=float(resampled.std(ddof=1)))


def seed_gaps(a, b) -> np.ndarray:
    """Per-seed paired gaps: mean of column k of ``a`` minus mean of column k of ``b`` (images x
    seeds, the same images and seeds in the same order), e.g. seed k's accuracy difference."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    a = a[:, None] if a.ndim == 1 else a
    b = b[:, None] if b.ndim == 1 else b
    if a.shape != b.shape:
        raise ValueError(f"per-seed gaps need the same images and seeds, got {a.shape} and {b.shape}")
    return a.mean(axis=0) - b.mean(axis=0)
