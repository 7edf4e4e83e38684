import numpy as np
import polars as pl
import pytest

from ens_assets.ensemble.tables import PredictionTableError, stack_members, stack_test
from ens_assets_tests.ensemble.synthetic import CLASSES, labels_and_folds, member_probs, oof_table, unlabelled_table


def _two_members(n=30):
    y, folds = labels_and_folds(n)
    return y, folds, {"m0": oof_table(member_probs(y, 2.0, 0), y, folds),
                      "m1": oof_table(member_probs(y, 1.0, 1), y, folds)}


def test_rows_are_aligned_by_image_id_not_by_position():
    y, folds, tables = _two_members()
    shuffled = tables["m1"].sample(fraction=1.0, shuffle=True, seed=3)
    stack = stack_members({"m0": tables["m0"], "m1": shuffled}, CLASSES)
    assert stack.probs.shape == (2, 30, 4)
    order = [int(i.removeprefix("img")) for i in stack.image_ids]
    np.testing.assert_array_equal(stack.y, y[order])
    np.testing.assert_array_equal(stack.folds, folds[order])
    np.testing.assert_allclose(stack.probs[1], tables["m1"].select(CLASSES).to_numpy()[order])
    assert stack.dropped == {"m0": 0, "m1": 0}


def test_smoke_member_on_one_fold_gives_the_intersection_and_reports_drops():
    _, _, tables = _two_members()
    tables["smoke"] = tables["m0"].filter(pl.col("fold") == 0)
    stack = stack_members(tables, CLASSES)
    assert set(np.unique(stack.folds)) == {0}
    assert len(stack.image_ids) == 10
    assert stack.dropped == {"m0": 20, "m1": 20, "smoke": 0}


def test_disjoint_members_raise_a_clear_error():
    _, _, tables = _two_members()
    with pytest.raises(PredictionTableError, match="share no image_id"):
        stack_members({"a": tables["m0"].filter(pl.col("fold") == 0),
                       "b": tables["m1"].filter(pl.col("fold") == 1)}, CLASSES)


def test_bad_rows_are_named():
    _, _, tables = _two_members()
    logits = tables["m0"].with_columns(pl.when(pl.col("image_id") == "img00007").then(3.0)
                                       .otherwise(pl.col("bird")).alias("bird"))
    with pytest.raises(PredictionTableError, match="img00007.*sum to"):
        stack_members({"m0": logits}, CLASSES)
    with pytest.raises(PredictionTableError, match="lacks columns \\['rodent'\\]"):
        stack_members({"m0": tables["m0"].drop("rodent")}, CLASSES)
    relabelled = tables["m1"].with_columns(pl.when(pl.col("image_id") == "img00004").then(pl.lit("zebra"))
                                           .otherwise(pl.col("label")).alias("label"))
    with pytest.raises(PredictionTableError, match="img00004.*'zebra'"):
        stack_members({"m1": relabelled}, CLASSES)
    with pytest.raises(PredictionTableError, match="disagree on the fold"):
        stack_members({"m0": tables["m0"], "m1": tables["m1"].with_columns((pl.col("fold") + 1) % 3)}, CLASSES)
    with pytest.raises(PredictionTableError, match="more than once"):
        stack_members({"m0": pl.concat([tables["m0"], tables["m0"].head(2)])}, CLASSES)


def test_integer_labels_are_accepted():
    y, folds, tables = _two_members()
    as_index = tables["m0"].with_columns(pl.Series("label", y))
    assert np.array_equal(stack_members({"m0": as_index}, CLASSES).y, stack_members({"m0": tables["m0"]}, CLASSES).y)


def test_stack_test_aligns_members():
    y, _ = labels_and_folds(12)
    a, b = unlabelled_table(member_probs(y, 1.0, 0)), unlabelled_table(member_probs(y, 1.0, 1))
    stack = stack_test({"a": a, "b": b.reverse()}, CLASSES)
    assert stack.probs.shape == (2, 12, 4)
    np.testing.assert_allclose(stack.probs[1], b.select(CLASSES).to_numpy())
