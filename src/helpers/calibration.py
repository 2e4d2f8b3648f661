"""Calibration of test predictions: does a network's confidence match how often it is right?

Per run (labels and the softmax probabilities of predictions.csv): the expected calibration
error (:func:`ece`, top-label, equal-width confidence bins), the negative log-likelihood
(:func:`nll`) and the Brier score (:func:`brier`), and the bins of a reliability diagram
(:func:`reliability`). Per arm (several seeds on the same test images): each score averaged over
seeds, with a two-level bootstrap interval over seeds and test images (:func:`arm_scores`,
:func:`ece_ci`, the resampling of :mod:`helpers.intervals`), and differences between arms
paired by image and by seed (:func:`compare`). :func:`reliability_figure` overlays arms.
Numpy only (matplotlib for the figure); nothing here knows about run folders.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd

from . import intervals
from .intervals import CONFIDENCE, Interval

N_BINS = 15
EPS = 1e-12     # a probability of the true class below this counts as this in the NLL


def _check(labels, probs) -> tuple[np.ndarray, np.ndarray]:
    labels, probs = np.asarray(labels, dtype=int), np.asarray(probs, dtype=float)
    if probs.ndim != 2 or len(probs) != len(labels):
        raise ValueError(f"probabilities must be images x classes for {len(labels)} labels, got {probs.shape}")
    return labels, probs


def top_label(labels, probs) -> tuple[np.ndarray, np.ndarray]:
    """Each image's confidence (its highest probability) and whether that class is the true one."""
    labels, probs = _check(labels, probs)
    return probs.max(axis=1), (probs.argmax(axis=1) == labels).astype(float)


def bin_index(confidence, n_bins: int = N_BINS) -> np.ndarray:
    """Equal-width bins on [0, 1], right-closed: bin b holds confidences in (b/n, (b+1)/n]
    (a confidence of exactly 0 falls in the first)."""
    c = np.asarray(confidence, dtype=float)
    return np.clip(np.ceil(c * n_bins).astype(int) - 1, 0, n_bins - 1)


def ece(labels, probs, n_bins: int = N_BINS) -> float:
    """Expected calibration error (Guo et al. 2017), top-label: over equal-width confidence bins,
    the share of images in a bin times |accuracy − mean confidence| in it. 0 is perfect; a
    network that is always 100 % sure and right 90 % of the time scores 0.1."""
    conf, right = top_label(labels, probs)
    b = bin_index(conf, n_bins)
    count = np.bincount(b, minlength=n_bins)
    gap = np.bincount(b, weights=right, minlength=n_bins) - np.bincount(b, weights=conf, minlength=n_bins)
    return float(np.abs(gap).sum() / count.sum()) if count.sum() else math.nan


def per_image_nll(labels, probs, eps: float = EPS) -> np.ndarray:
    labels, probs = _check(labels, probs)
    return -np.log(np.clip(probs[np.arange(len(labels)), labels], eps, 1.0))


def per_image_brier(labels, probs) -> np.ndarray:
    """Σ_k (p_k − 1[k = y])² per image: 0 is perfect, 2 the worst (all mass on a wrong class)."""
    labels, probs = _check(labels, probs)
    onehot = np.eye(probs.shape[1])[labels]
    return ((probs - onehot) ** 2).sum(axis=1)


def nll(labels, probs) -> float:
    """Mean negative log-likelihood of the true class (natural log)."""
    return float(per_image_nll(labels, probs).mean())


def brier(labels, probs) -> float:
    """Multi-class Brier score: mean over images of Σ_k (p_k − 1[k = y])²."""
    return float(per_image_brier(labels, probs).mean())


def reliability(labels, probs, n_bins: int = N_BINS) -> pd.DataFrame:
    """The bins of a reliability diagram: range, images, mean confidence and accuracy (NaN in an
    empty bin). ``probs`` may stack several seeds' predictions (their images pooled)."""
    conf, right = top_label(labels, probs)
    b = bin_index(conf, n_bins)
    count = np.bincount(b, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(b, weights=conf, minlength=n_bins) / count
        acc = np.bincount(b, weights=right, minlength=n_bins) / count
    edges = np.linspace(0, 1, n_bins + 1)
    return pd.DataFrame({"bin": np.arange(n_bins), "low": edges[:-1], "high": edges[1:], "count": count,
                         "confidence": mean_conf, "accuracy": acc})


def _ece_replicates(labels, seeds_probs: Sequence[np.ndarray], images: np.ndarray, seed_w: np.ndarray,
                    n_bins: int) -> np.ndarray:
    """ECE of each bootstrap resample: per seed, the ECE of the images drawn (``images``:
    resamples x images, how often each is drawn), then weighted by the seeds drawn
    (``seed_w``: resamples x seeds)."""
    total = images.sum(axis=1)
    per_seed = []
    for probs in seeds_probs:
        conf, right = top_label(labels, probs)
        onehot = np.eye(n_bins)[bin_index(conf, n_bins)]                 # images x bins
        gap = images @ (onehot * (right - conf)[:, None])                 # resamples x bins
        per_seed.append(np.abs(gap).sum(axis=1) / total)
    return (np.stack(per_seed, axis=1) * seed_w).sum(axis=1)


def ece_ci(labels, probs_a: Sequence[np.ndarray], probs_b: Sequence[np.ndarray] | None = None, groups=None,
           paired_seeds: bool = False, n_bins: int = N_BINS, confidence: float = CONFIDENCE,
           n_resamples: int = intervals.TWO_LEVEL_RESAMPLES, seed: int = 0) -> Interval:
    """The seed-mean ECE of one arm (``probs_a``: one images x classes array per seed, the same
    images in the same order as ``labels``), or the difference ECE(a) − ECE(b) on the same
    images, with a two-level percentile bootstrap over seeds and test images (or ``groups``), as
    :func:`intervals.two_level_ci` draws them; ``paired_seeds`` draws the same seed indices for
    both arms. ECE is biased upwards on few images (empty and thin bins), so the interval is of
    the estimator as computed, not of a true calibration error."""
    labels = np.asarray(labels, dtype=int)
    est_a = float(np.mean([ece(labels, p, n_bins) for p in probs_a]))
    est = est_a - (float(np.mean([ece(labels, p, n_bins) for p in probs_b])) if probs_b is not None else 0.0)
    if paired_seeds and (probs_b is None or len(probs_b) != len(probs_a)):
        raise ValueError("paired seeds need the same number of seeds on both sides")
    rng = np.random.default_rng(seed)
    images = intervals.unit_weights(len(labels), groups, n_resamples, rng)
    wa = intervals.seed_weights(len(probs_a), n_resamples, rng)
    reps = _ece_replicates(labels, probs_a, images, wa, n_bins)
    if probs_b is not None:
        wb = wa if paired_seeds else intervals.seed_weights(len(probs_b), n_resamples, rng)
        reps = reps - _ece_replicates(labels, probs_b, images, wb, n_bins)
    return intervals.percentile_interval(est, reps, len(labels), confidence)


def arm_scores(labels, seeds_probs: Sequence[np.ndarray], groups=None, n_bins: int = N_BINS) -> dict:
    """One arm's calibration on the test images, each score the mean over its seeds with an
    interval over seeds and images: ECE (``ece``, ``ece_low``, ``ece_high``), NLL and Brier, and
    the accuracy and mean confidence beside them."""
    labels = np.asarray(labels, dtype=int)
    e = ece_ci(labels, seeds_probs, groups=groups, n_bins=n_bins)
    out = {"seeds": len(seeds_probs), "n_test": len(labels),
           "accuracy": float(np.mean([top_label(labels, p)[1].mean() for p in seeds_probs])),
           "confidence": float(np.mean([p.max(axis=1).mean() for p in seeds_probs])),
           "ece": e.mean, "ece_low": e.low, "ece_high": e.high}
    for name, per_image in (("nll", per_image_nll), ("brier", per_image_brier)):
        ci = intervals.two_level_ci(np.stack([per_image(labels, p) for p in seeds_probs], axis=1), groups=groups)
        out.update({name: ci.mean, f"{name}_low": ci.low, f"{name}_high": ci.high})
    return out


def compare(labels, probs_a: Sequence[np.ndarray], probs_b: Sequence[np.ndarray], groups=None,
            paired_seeds: bool = False, n_bins: int = N_BINS) -> dict:
    """Arm a minus arm b on the same test images: ECE, NLL and Brier differences, each with its
    two-level interval (paired by image, and by seed where ``paired_seeds``)."""
    labels = np.asarray(labels, dtype=int)
    e = ece_ci(labels, probs_a, probs_b, groups, paired_seeds, n_bins)
    out = {"ece": e.mean, "ece_low": e.low, "ece_high": e.high}
    for name, per_image in (("nll", per_image_nll), ("brier", per_image_brier)):
        a = np.stack([per_image(labels, p) for p in probs_a], axis=1)
        b = np.stack([per_image(labels, p) for p in probs_b], axis=1)
        ci = intervals.two_level_ci(a, b, groups, paired_seeds=paired_seeds)
        out.update({name: ci.mean, f"{name}_low": ci.low, f"{name}_high": ci.high})
    return out


MIN_BIN_SHOWN = 5   # a bin with fewer predictions is too noisy to draw (it still counts in the ECE)


def reliability_figure(curves: dict[str, tuple[pd.DataFrame, str, str]], title: str = "",
                       min_count: int = MIN_BIN_SHOWN):
    """Reliability diagram with arms overlaid: ``curves`` maps a label to (its :func:`reliability`
    bins, colour, line style). Top: accuracy against mean confidence per bin of at least
    ``min_count`` predictions, marker area by the bin's predictions (the diagonal is perfect
    calibration; below it, overconfident). Bottom: the share of predictions in each bin, on a log
    scale (most sit in the last bin)."""
    import matplotlib.pyplot as plt

    fig, (ax, hist) = plt.subplots(2, 1, figsize=(6.0, 6.2), height_ratios=(3, 1.3), sharex=True,
                                   layout="constrained")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":", label="perfect calibration")
    left = 1.0
    for label, (bins, color, style) in curves.items():
        seen = bins[bins["count"] >= min_count]
        ax.plot(seen["confidence"], seen["accuracy"], color=color, ls=style, lw=1.4, label=label)
        ax.scatter(seen["confidence"], seen["accuracy"], s=8 + 60 * np.sqrt(seen["count"] / bins["count"].sum()),
                   color=color, zorder=3)
        share = (bins["count"] / bins["count"].sum()).where(bins["count"] > 0)
        hist.plot((bins["low"] + bins["high"]) / 2, share, drawstyle="steps-mid", color=color, ls=style)
        left = min(left, float(bins[bins["count"] > 0]["low"].min()) if (bins["count"] > 0).any() else left)
    ax.set(xlim=(np.floor(left * 10) / 10, 1.0), ylim=(0.0, 1.02), ylabel="accuracy in the bin", title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize="small")
    hist.set(yscale="log", xlabel="confidence (highest softmax probability)", ylabel="share of\npredictions")
    hist.grid(alpha=0.3)
    return fig
