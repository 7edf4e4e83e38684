import numpy as np
import pytest

from ens_assets.subsets.strata import random_subset, stratified_difficulty_subsets, subset_size


def test_random_subset_is_seeded_sized_and_unique():
    a = random_subset(100, 0.3, seed=4)
    assert len(a) == 30 and len(np.unique(a)) == 30 and a.min() >= 0 and a.max() < 100
    np.testing.assert_array_equal(a, random_subset(100, 0.3, seed=4))
    assert not np.array_equal(a, random_subset(100, 0.3, seed=5))
    assert len(random_subset(3, 0.01, seed=0)) == 1  # never an empty training set


def test_random_subset_keeps_class_proportions_and_rare_classes():
    labels = np.array([0] * 60 + [1] * 37 + [2] * 3)
    subset = random_subset(100, 0.2, seed=0, labels=labels)
    assert len(subset) == 20
    counts = np.bincount(labels[subset], minlength=3)
    assert counts[2] >= 1 and abs(counts[0] - 12) <= 1 and abs(counts[1] - 7) <= 1


@pytest.mark.parametrize("fraction", [0, 1.5, -0.1])
def test_fraction_out_of_range(fraction):
    with pytest.raises(ValueError, match="outside \\(0, 1\\]"):
        subset_size(10, fraction)


def test_strata_are_disjoint_and_ordered_easy_to_hard():
    scores = np.random.default_rng(0).random(90)
    subsets = stratified_difficulty_subsets(scores, n_copies=3, fraction=0.3, seed=0)
    assert [len(s) for s in subsets] == [27, 27, 27]
    assert len(np.unique(np.concatenate(subsets))) == 81  # disjoint when fraction <= 1 / n_copies
    means = [scores[s].mean() for s in subsets]
    assert means == sorted(means)
    # Copy 0 only holds examples from the easiest third, copy 2 only from the hardest.
    assert scores[subsets[0]].max() <= np.quantile(scores, 1 / 3) + 1e-9
    assert scores[subsets[2]].min() >= np.quantile(scores, 2 / 3) - 1e-9


def test_small_strata_top_up_from_nearest_difficulty():
    scores = np.arange(100, dtype=float)  # rank == score
    subsets = stratified_difficulty_subsets(scores, n_copies=4, fraction=0.4, seed=0)  # strata of 25, quota 40
    assert all(len(s) == 40 for s in subsets)
    # The easiest copy takes its stratum 0-24 then the nearest ranks 25-39: a contiguous block.
    np.testing.assert_array_equal(subsets[0], np.arange(40))
    np.testing.assert_array_equal(subsets[3], np.arange(60, 100))
    # A middle copy grows around its stratum (25-49) on both sides.
    assert set(range(25, 50)) <= set(subsets[1].tolist())
    assert subsets[1].min() >= 10 and subsets[1].max() <= 64


def test_strata_with_labels_are_cut_per_class():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], [40, 40, 10])
    # Class 2 is uniformly hard: global strata would give all of it to the hardest copy.
    scores = rng.random(90) + np.where(labels == 2, 10.0, 0.0)
    subsets = stratified_difficulty_subsets(scores, n_copies=3, fraction=0.3, seed=0, labels=labels)
    for subset in subsets:
        np.testing.assert_array_equal(np.bincount(labels[subset], minlength=3), [12, 12, 3])
    for cls in range(3):
        means = [scores[s][labels[s] == cls].mean() for s in subsets]
        assert means == sorted(means)
    without_labels = stratified_difficulty_subsets(scores, n_copies=3, fraction=0.3, seed=0)
    assert np.bincount(labels[without_labels[0]], minlength=3)[2] == 0


def test_strata_reject_bad_scores():
    with pytest.raises(ValueError, match=r"scores\[2\] = nan is not finite"):
        stratified_difficulty_subsets(np.array([0.1, 0.2, np.nan, 0.4]), 2, 0.5, 0)
    with pytest.raises(ValueError, match="labels: expected 4 integer"):
        stratified_difficulty_subsets(np.arange(4.0), 2, 0.5, 0, labels=np.array([0, 1, 1]))
