"""Intervals over seeds and test images together (helpers.intervals.two_level_ci, seed_gaps)."""

import time

import numpy as np
import pytest

from helpers import intervals


def _seeds(rng, n_images, accuracies):
    """images x seeds of 0/1 correctness, one column per seed with its own accuracy."""
    return np.stack([(rng.random(n_images) < acc).astype(float) for acc in accuracies], axis=1)


def test_per_seed_gaps_on_a_hand_made_example():
    # 4 images, 2 seeds: arm a gets 3/4 then 4/4 right, arm b 1/4 then 3/4
    a = np.array([[1, 1], [1, 1], [1, 1], [0, 1]], dtype=float)
    b = np.array([[1, 1], [0, 1], [0, 1], [0, 0]], dtype=float)
    assert intervals.seed_gaps(a, b) == pytest.approx([0.5, 0.25])
    t = intervals.mean_ci(intervals.seed_gaps(a, b))
    assert t.mean == pytest.approx(0.375) and t.low < 0.375 < t.high
    with pytest.raises(ValueError, match="same images and seeds"):
        intervals.seed_gaps(a, b[:, :1])


def test_identical_seeds_give_the_image_only_interval():
    rng = np.random.default_rng(1)
    one = (rng.random(300) < 0.8).astype(float)
    other = (rng.random(300) < 0.7).astype(float)
    three_a, three_b = np.repeat(one[:, None], 3, axis=1), np.repeat(other[:, None], 3, axis=1)
    image_only = intervals.two_level_ci(one, other)
    for paired in (True, False):
        both = intervals.two_level_ci(three_a, three_b, paired_seeds=paired)
        assert (both.low, both.high) == pytest.approx((image_only.low, image_only.high))
    # and the image resampling is cluster_bootstrap_ci's, draw for draw
    groups = np.arange(300) // 10
    by_block = intervals.cluster_bootstrap_ci(one, groups, n_resamples=3000, seed=4)
    two = intervals.two_level_ci(three_a, groups=groups, n_resamples=3000, seed=4)
    assert (two.low, two.high) == pytest.approx((by_block.low, by_block.high))


def test_seeds_that_disagree_widen_the_interval():
    rng = np.random.default_rng(2)
    # three seeds of arm a at 70%, 80% and 90%: seed-to-seed variation the image bootstrap cannot see
    a, b = _seeds(rng, 600, [0.70, 0.80, 0.90]), _seeds(rng, 600, [0.75, 0.75, 0.75])
    image_only = intervals.two_level_ci(a.mean(axis=1), b.mean(axis=1))
    two = intervals.two_level_ci(a, b, paired_seeds=True)
    assert two.mean == pytest.approx(image_only.mean) == pytest.approx(a.mean() - b.mean())
    assert two.low <= two.mean <= two.high
    assert (two.high - two.low) > 1.5 * (image_only.high - image_only.low)
    # one arm alone: the same
    assert np.ptp(intervals.two_level_ci(a)[1:3]) > 1.5 * np.ptp(intervals.two_level_ci(a.mean(axis=1))[1:3])


def test_pairing_by_seed_follows_the_per_seed_gaps():
    rng = np.random.default_rng(3)
    # seed k shifts both arms alike (a shared batch order, say): the gap per seed is steady,
    # the arms' accuracies are not. Paired by seed, the interval sees the steady gap.
    base = rng.random((600, 1))
    a = (base < np.array([0.70, 0.80, 0.90])).astype(float)
    b = (base < np.array([0.65, 0.75, 0.85])).astype(float)
    paired = intervals.two_level_ci(a, b, paired_seeds=True)
    unpaired = intervals.two_level_ci(a, b)
    assert intervals.seed_gaps(a, b) == pytest.approx([0.05, 0.05, 0.05], abs=0.03)
    assert (paired.high - paired.low) < 0.5 * (unpaired.high - unpaired.low)
    with pytest.raises(ValueError, match="same number of seeds"):
        intervals.two_level_ci(a, b[:, :2], paired_seeds=True)


def test_the_two_level_bootstrap_is_fixed_and_fast():
    rng = np.random.default_rng(4)
    a, b = _seeds(rng, 600, [0.97, 0.98, 0.98]), _seeds(rng, 600, [0.90, 0.93, 0.92])
    start = time.perf_counter()
    first = intervals.two_level_ci(a, b, paired_seeds=True)
    assert time.perf_counter() - start < 1.0
    assert intervals.two_level_ci(a, b, paired_seeds=True) == first   # a fixed seed: the same interval
    assert intervals.two_level_ci(a, b, paired_seeds=True, seed=1) != first


def test_a_stratified_block_bootstrap_keeps_every_class_in_every_resample():
    """Two classes, one block each of very different accuracy: unstratified, some resamples hold
    one class only and the interval spans the class mix; stratified, each resample holds both."""
    labels = np.repeat([0, 1, 1, 1], 10)
    groups = np.repeat([0, 1, 2, 3], 10)
    w = intervals.unit_weights(len(labels), groups, 500, np.random.default_rng(0), strata=labels)
    assert (w[:, labels == 0].sum(axis=1) == 10).all(), "the one class-0 block is drawn once in every resample"
    assert (w[:, labels == 1].sum(axis=1) == 30).all()
    loose = intervals.unit_weights(len(labels), groups, 500, np.random.default_rng(0))
    assert (loose[:, labels == 0].sum(axis=1) == 0).any(), "unstratified, some resamples lose class 0"
    correct = np.where(labels == 0, 0.0, 1.0)
    assert intervals.two_level_ci(correct, groups=groups, strata=labels).low == pytest.approx(0.75)
    with pytest.raises(ValueError, match="a group spans more than one stratum"):
        intervals.unit_weights(len(labels), np.zeros(len(labels)), 10, strata=labels)
