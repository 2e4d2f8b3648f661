"""Calibration scores (helpers.calibration): ECE, NLL, Brier, reliability bins and their intervals."""

import math

import numpy as np
import pytest

from helpers import calibration


def _calibrated(rng, n=4000, k=3):
    """Predictions whose confidence is, by construction, the chance of being right: each image's
    top probability c is drawn, and the top class is the true one with probability c."""
    conf = rng.uniform(1 / k + 0.01, 1.0, n)
    right = rng.random(n) < conf
    labels = rng.integers(0, k, n)
    top = np.where(right, labels, (labels + 1 + rng.integers(0, k - 1, n)) % k)
    probs = np.tile(((1 - conf) / (k - 1))[:, None], (1, k))
    probs[np.arange(n), top] = conf
    return labels, probs


def _overconfident(rng, n=4000, k=3, accuracy=0.7):
    """Always 99 % sure, right 70 % of the time."""
    labels = rng.integers(0, k, n)
    right = rng.random(n) < accuracy
    top = np.where(right, labels, (labels + 1) % k)
    probs = np.full((n, k), 0.005)
    probs[np.arange(n), top] = 0.99
    return labels, probs


def test_a_calibrated_network_has_an_ece_near_zero_and_an_overconfident_one_a_large_ece():
    rng = np.random.default_rng(0)
    labels, probs = _calibrated(rng)
    assert calibration.ece(labels, probs) < 0.03
    labels, probs = _overconfident(rng)
    # every prediction in the last bin: ECE is |accuracy − 0.99|
    assert calibration.ece(labels, probs) == pytest.approx(0.99 - (probs.argmax(1) == labels).mean())
    assert calibration.ece(labels, probs) > 0.25


def test_ece_on_a_hand_made_example():
    # 4 images, 2 classes, 15 bins: two at 0.95 (one right), two at 0.6 (both right)
    labels = np.array([0, 1, 0, 0])
    probs = np.array([[0.95, 0.05], [0.95, 0.05], [0.6, 0.4], [0.6, 0.4]])
    # bin of 0.95: accuracy 0.5, confidence 0.95; bin of 0.6: accuracy 1, confidence 0.6
    assert calibration.ece(labels, probs) == pytest.approx(0.5 * 0.45 + 0.5 * 0.4)
    bins = calibration.reliability(labels, probs).set_index("bin")
    assert bins["count"].sum() == 4 and bins.loc[14, "count"] == 2 and bins.loc[8, "count"] == 2
    assert bins.loc[14, "accuracy"] == 0.5 and math.isnan(bins.loc[0, "accuracy"])
    assert calibration.bin_index([1 / 15, 1 / 15 + 1e-9, 1.0, 0.0]).tolist() == [0, 1, 14, 0]


def test_nll_and_brier_on_a_hand_made_example():
    labels = np.array([0, 1])
    probs = np.array([[0.8, 0.2], [0.5, 0.5]])
    assert calibration.nll(labels, probs) == pytest.approx(-(np.log(0.8) + np.log(0.5)) / 2)
    assert calibration.brier(labels, probs) == pytest.approx(((0.2 ** 2 + 0.2 ** 2) + (0.5 ** 2 + 0.5 ** 2)) / 2)
    # a zero probability of the true class is a large but finite loss
    assert np.isfinite(calibration.nll([0], [[0.0, 1.0]])) and calibration.brier([0], [[0.0, 1.0]]) == 2.0


def test_the_ece_interval_covers_the_seeds_and_separates_the_two_networks():
    rng = np.random.default_rng(1)
    labels, good = _calibrated(rng, n=600)
    over = []
    for seed_acc in (0.65, 0.70, 0.75):     # three seeds that disagree
        right = rng.random(600) < seed_acc
        p = np.full((600, 3), 0.005)
        p[np.arange(600), np.where(right, labels, (labels + 1) % 3)] = 0.99
        over.append(p)
    one = calibration.ece_ci(labels, over[:1])
    three = calibration.ece_ci(labels, over)
    assert three.low <= three.mean <= three.high
    assert three.mean == pytest.approx(np.mean([calibration.ece(labels, p) for p in over]))
    assert three.high - three.low > one.high - one.low        # the seeds' spread widens it
    diff = calibration.compare(labels, [good] * 3, over, paired_seeds=True)
    assert diff["ece_high"] < 0 and diff["nll_high"] < 0 and diff["brier_high"] < 0
    scores = calibration.arm_scores(labels, over)
    assert scores["seeds"] == 3 and scores["confidence"] == pytest.approx(0.99)
    assert scores["ece_low"] <= scores["ece"] <= scores["ece_high"] and scores["nll_low"] < scores["nll"] < scores["nll_high"]


def test_the_reliability_figure_draws_every_arm():
    rng = np.random.default_rng(2)
    curves = {name: (calibration.reliability(*make(rng)), color, "-")
              for name, make, color in (("calibrated", _calibrated, "C0"), ("overconfident", _overconfident, "C1"))}
    fig = calibration.reliability_figure(curves, "test")
    top = fig.axes[0]
    assert [t.get_text() for t in top.get_legend().get_texts()] == ["perfect calibration", "calibrated", "overconfident"]
