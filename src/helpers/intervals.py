"""Confidence intervals and paired tests: the one CONFIDENCE and the one Interval type.

Seeds: Student t-intervals of a mean (:func:`mean_ci`) and paired tests over seeds
(:func:`paired_test`). Test images: the bootstrap (:func:`bootstrap_ci`,
:func:`paired_difference`), McNemar's exact test and binomial intervals of one accuracy. All
from scipy.stats; nothing here knows about runs.
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
