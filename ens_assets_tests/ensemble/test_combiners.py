import json

import numpy as np
import pytest
from sklearn.metrics import log_loss

from ens_assets.ensemble.combiners import (
    METHODS,
    CombinerError,
    GeometricMeanEnsemble,
    GreedyEnsemble,
    MeanEnsemble,
    PerClassWeightedEnsemble,
    StackingEnsemble,
    WeightedEnsemble,
    combiner_from_spec,
    make_combiner,
)
from ens_assets_tests.ensemble.synthetic import labels_and_folds, member_probs


def _ll(q, y):
    return log_loss(y, q, labels=list(range(q.shape[1])))


def test_geometric_and_arithmetic_on_a_hand_made_case():
    P = np.array([[[0.8, 0.2]], [[0.4, 0.6]]])
    y = np.array([0])
    np.testing.assert_allclose(MeanEnsemble().fit(P, y).predict_proba(P), [[0.6, 0.4]])
    a, b = np.sqrt(0.8 * 0.4), np.sqrt(0.2 * 0.6)
    np.testing.assert_allclose(GeometricMeanEnsemble().fit(P, y).predict_proba(P), [[a / (a + b), b / (a + b)]])


def test_geometric_clipping_keeps_a_zero_from_vetoing_a_class():
    P = np.array([[[0.0, 1.0]], [[0.9, 0.1]], [[0.9, 0.1]]])
    q = GeometricMeanEnsemble(eps=1e-6).fit(P, np.array([0])).predict_proba(P)
    assert q[0, 0] > 0 and np.isclose(q.sum(), 1.0)


def _complementary(n=600):
    y, _ = labels_and_folds(n)
    best = member_probs(y, [4.0, 4.0, 0.0, 0.0], seed=1)  # good on classes 0, 1
    other = member_probs(y, [0.0, 0.0, 3.5, 3.5], seed=2)  # good on classes 2, 3, a little weaker overall
    return y, best, other


def test_caruana_picks_the_complementary_member_over_a_duplicate_of_the_best():
    y, best, other = _complementary()
    assert _ll(best, y) < _ll(other, y)
    greedy = GreedyEnsemble(rounds=2).fit(np.stack([best, best.copy(), other]), y, members=["best", "dup", "other"])
    assert greedy.picks_ == [0, 2]
    assert greedy.spec()["weights"] == {"best": 0.5, "dup": 0.0, "other": 0.5}


def test_greedy_keeps_the_best_prefix():
    y, best, other = _complementary()
    # Mirror images: the 50/50 mix is optimal, so a third round (2:1 either way) only makes it worse.
    mirror = member_probs(y, [0.0, 0.0, 4.0, 4.0], seed=1)
    greedy = GreedyEnsemble(rounds=3).fit(np.stack([best, mirror]), y)
    assert greedy.round_losses_[2] > greedy.round_losses_[1]
    assert greedy.best_prefix_ == 2
    np.testing.assert_allclose(greedy.weights_, [0.5, 0.5])
    np.testing.assert_allclose(greedy.predict_proba(np.stack([best, mirror])), (best + mirror) / 2)


def test_greedy_ties_go_to_the_lowest_member_index():
    y, best, other = _complementary()
    weak = member_probs(y, 0.5, seed=9)
    greedy = GreedyEnsemble(rounds=4).fit(np.stack([weak, best, other, best.copy()]), y)
    assert 3 not in greedy.picks_ and greedy.picks_[0] == 1
    again = GreedyEnsemble(rounds=4).fit(np.stack([weak, best, other, best.copy()]), y)
    assert again.picks_ == greedy.picks_


def test_weighted_weights_lie_on_the_simplex_and_drop_a_harmful_member():
    y, best, other = _complementary()
    anti = member_probs(y, -4.0, seed=3)  # confidently wrong
    P = np.stack([best, other, anti])
    weighted = WeightedEnsemble().fit(P, y)
    assert (weighted.weights_ >= 0).all() and np.isclose(weighted.weights_.sum(), 1.0)
    assert weighted.weights_[2] == 0.0
    mean = MeanEnsemble().fit(P, y)
    assert _ll(weighted.predict_proba(P), y) < _ll(mean.predict_proba(P), y)


def test_stacking_beats_the_mean_when_one_member_is_anti_correlated():
    y, _ = labels_and_folds(900)
    y_new, _ = labels_and_folds(900, seed=5)
    make = lambda labels, s: np.stack([member_probs(labels, 1.5, s), member_probs(labels, -3.0, s + 1)])
    P, P_new = make(y, 0), make(y_new, 10)
    stacking = StackingEnsemble(C=1.0).fit(P, y)
    mean = MeanEnsemble().fit(P, y)
    # Scored on a fresh draw, so the gain is not just the meta-learner fitting its own rows.
    assert _ll(stacking.predict_proba(P_new), y_new) < _ll(mean.predict_proba(P_new), y_new) - 0.1
    assert stacking.weights_[1] > 0.2  # it uses the anti member (inverted), not ignores it


def test_per_class_weights_favour_the_member_good_at_that_class():
    y, best, other = _complementary()
    pc = PerClassWeightedEnsemble().fit(np.stack([best, other]), y)
    assert pc.class_weights_[0, 0] > pc.class_weights_[1, 0]  # classes 0, 1: 'best'
    assert pc.class_weights_[1, 3] > pc.class_weights_[0, 3]  # classes 2, 3: 'other'
    np.testing.assert_allclose(pc.class_weights_.sum(axis=0), 1.0)
    assert _ll(pc.predict_proba(np.stack([best, other])), y) < _ll((best + other) / 2, y)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_predicts_rows_summing_to_one_and_round_trips_its_spec(method):
    y, folds = labels_and_folds(240)
    P = np.stack([member_probs(y, s, i) for i, s in enumerate([1.0, 2.0, 0.5])])
    combiner = make_combiner(method, rounds=5, C=0.5).fit(P, y, members=["x", "y", "z"], classes=list("abcd"))
    q = combiner.predict_proba(P)
    assert q.shape == (240, 4) and np.allclose(q.sum(axis=1), 1.0) and (q >= 0).all()
    spec = json.loads(json.dumps(combiner.spec()))
    assert spec["method"] == method and set(spec["weights"]) == {"x", "y", "z"}
    assert np.isclose(sum(spec["weights"].values()), 1.0)
    np.testing.assert_allclose(combiner_from_spec(spec).predict_proba(P), q, rtol=1e-9, atol=1e-12)


def test_stacking_handles_a_class_missing_from_the_training_rows():
    y, _ = labels_and_folds(200)
    P = np.stack([member_probs(y, 2.0, 0), member_probs(y, 1.0, 1)])
    keep = y != 3
    q = StackingEnsemble().fit(P[:, keep], y[keep]).predict_proba(P)
    assert np.allclose(q.sum(axis=1), 1.0) and (q[:, 3] > 0).all()


def test_make_combiner_rejects_unknown_names_and_options():
    with pytest.raises(CombinerError, match="unknown ensemble method 'median'"):
        make_combiner("median")
    with pytest.raises(CombinerError, match="unknown combiner options \\['round'\\]"):
        make_combiner("greedy", round=3)
    assert make_combiner("mean", rounds=3).get_params() == {}
    with pytest.raises(CombinerError, match="shape"):
        MeanEnsemble().fit(np.ones((3, 4)), np.zeros(3, dtype=int))
