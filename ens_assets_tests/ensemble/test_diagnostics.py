import polars as pl

from ens_assets.ensemble.combiners import GreedyEnsemble
from ens_assets.ensemble.diagnostics import (
    all_fail_classes,
    never_selected,
    per_class_recall,
    roadmap_markdown,
    single_win_classes,
    top_confusions,
)
from ens_assets.ensemble.tables import stack_members
from ens_assets_tests.ensemble.synthetic import CLASSES, planted_members


def _planted():
    oof, _ = planted_members()
    return stack_members(oof, CLASSES)


def test_recall_matrix_has_members_and_an_ensemble_row():
    stack = _planted()
    recall = per_class_recall(stack, stack.probs.mean(axis=0))
    assert recall["member"].to_list() == ["a", "b", "c", "ensemble"]
    assert recall.columns == ["member", *CLASSES]
    assert recall.filter(pl.col("member") == "a")["bird"][0] > 0.9


def test_finds_the_planted_all_fail_and_single_win_classes():
    recall = per_class_recall(_planted())
    assert all_fail_classes(recall, 0.3) == ["rodent"]
    wins = single_win_classes(recall, 0.2)
    assert [(c, m) for c, m, _, _ in wins] == [("bird", "a")]
    _, _, best, runner_up = wins[0]
    assert best - runner_up >= 0.2
    assert single_win_classes(recall, 0.999) == []


def test_top_confusions_count_how_many_members_share_a_pair():
    confusions = top_confusions(_planted(), 2)
    shared = confusions.filter((pl.col("true") == "rodent") & (pl.col("predicted") == "hog"))
    assert shared.height == 3 and (shared["shared_by"] == 3).all()
    assert (confusions.group_by("member").len()["len"] <= 2).all()
    assert (confusions["rate"] <= 1).all() and (confusions["count"] > 0).all()


def test_roadmap_speaks_in_next_steps_and_lists_never_selected_members():
    stack = _planted()
    spec = GreedyEnsemble(rounds=1).fit(stack.probs, stack.y, members=stack.members).spec()
    unused = never_selected(spec, stack.members)
    assert unused == ["b", "c"]
    recall = per_class_recall(stack)
    text = roadmap_markdown(recall, all_fail_classes(recall, 0.3), single_win_classes(recall, 0.2),
                            top_confusions(stack, 3), unused, fail_recall=0.3, win_margin=0.2)
    assert "**rodent**" in text and "data/representation problem" in text and "lower threshold" in text
    assert "`a` recall" in text and "per_class combiner" in text
    assert "rodent -> hog" in text and "hard-negative mining" in text
    assert "`b`: zero weight" in text
