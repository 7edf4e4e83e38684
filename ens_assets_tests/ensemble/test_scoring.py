import numpy as np
import polars as pl
import pytest

from ens_assets.ensemble.scoring import BEST_SINGLE, SCORE_COLUMNS, honest_scores
from ens_assets.ensemble.tables import stack_members
from ens_assets_tests.ensemble.synthetic import CLASSES, labels_and_folds, oof_table, planted_members


def _noise_stack(seed, n=300, members=6):
    """Members that are pure noise: any gain an ensemble shows on them is fitted to the rows themselves."""
    rng = np.random.default_rng(seed)
    y, folds = labels_and_folds(n, seed=seed)
    tables = {f"m{i}": oof_table(rng.dirichlet(np.full(4, 0.7), size=n), y, folds) for i in range(members)}
    return stack_members(tables, CLASSES)


@pytest.mark.parametrize("method", ["greedy", "weighted", "stacking"])
def test_nested_scores_are_never_better_than_in_sample_on_random_data(method):
    for seed in range(4):
        row = honest_scores(_noise_stack(seed), [method], rounds=10).row(0, named=True)
        assert row["nested"] is True
        assert row["log_loss"] > row["in_sample_log_loss"], (seed, row)


def test_table_lists_methods_best_single_member_and_every_member():
    oof, _ = planted_members(n=300)
    table = honest_scores(stack_members(oof, CLASSES), ["mean", "greedy"], rounds=5)
    assert table.columns == SCORE_COLUMNS
    assert table["name"].to_list() == ["mean", "greedy", BEST_SINGLE, "a", "b", "c"]
    assert table["kind"].to_list() == ["ensemble"] * 2 + ["member"] * 4
    members = table.filter(pl.col("name").is_in(["a", "b", "c"]))
    best = table.filter(pl.col("name") == BEST_SINGLE).row(0, named=True)
    assert best["log_loss"] == members["log_loss"].min()
    assert best["members_used"] == members.sort("log_loss")["name"][0]


def test_one_fold_falls_back_to_in_sample_with_a_flag_and_a_note():
    oof, _ = planted_members(n=300)
    one_fold = {name: t.filter(pl.col("fold") == 0) for name, t in oof.items()}
    table = honest_scores(stack_members(one_fold, CLASSES), ["weighted"])
    row = table.row(0, named=True)
    assert row["nested"] is False and "in-sample" in row["note"]
    assert row["log_loss"] == row["in_sample_log_loss"]
