"""Held-out labelled test scores: every member and combiner scored on test rows only; site shift flagged."""

import json

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import log_loss

from ens_assets.ensemble.build import build_diagnostics, build_ensemble
from ens_assets.ensemble.combiners import combiner_from_spec
from ens_assets.plan import EnsembleConfig
from ens_assets_tests.ensemble.synthetic import CLASSES, labels_and_folds, member_probs, planted_members

INFO = {m: {"flops_per_image": f, "param_count": 1} for m, f in (("a", 300), ("b", 20), ("c", 10))}
CFG = EnsembleConfig(method="greedy", greedy_rounds=10, bootstrap_replicates=20)
METHODS = ["mean", "weighted"]


def _test_labels(n_labelled: int) -> dict[str, str]:
    y_test, _ = labels_and_folds(80, seed=1)  # what planted_members(seed=0) draws its test rows from
    return {f"test{i:05d}": CLASSES[y] for i, y in enumerate(y_test[:n_labelled])}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("held_out")
    oof, test = planted_members(n=300)
    labels = _test_labels(60)  # 20 test images stay unlabelled (as in a layout's own test file)
    result = build_ensemble(oof, test, CLASSES, INFO, CFG, out, compare_methods=METHODS, test_labels=labels)
    return out, oof, test, labels, result


def test_every_member_and_combiner_has_test_scores_in_the_table_and_metrics(built):
    out, _, _, _, result = built
    table = pl.read_parquet(out / "scores.parquet")
    assert table["test_log_loss"].null_count() == 0 and table["test_accuracy"].null_count() == 0
    assert set(table["test_images"].to_list()) == {60}
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["test"]) == set(table["name"].to_list())
    assert metrics["test_split"] == {"images": 80, "labelled": 60, "site_shift": metrics["test_split"]["site_shift"]}
    for name, scores in metrics["test"].items():
        assert set(scores["recall"]) == set(CLASSES), name
    recall = pl.read_csv(out / "test_recall.csv")
    assert recall["name"].to_list() == table["name"].to_list()
    assert result.test_recall.equals(recall)  # what the ensemble asset shows, without reading the file back
    # Nested OOF and test scores are different numbers, side by side.
    greedy = table.filter(pl.col("name") == "greedy").row(0, named=True)
    assert greedy["log_loss"] != greedy["test_log_loss"]


def test_combiner_test_score_is_computed_on_labelled_test_rows_only(built, tmp_path):
    _, oof, test, labels, result = built
    ids = test["a"]["image_id"].to_list()
    labelled = [i for i, image_id in enumerate(ids) if image_id in labels]
    stacked = np.stack([test[m].select(CLASSES).to_numpy() for m in result.spec["members"]])
    combiner = combiner_from_spec(result.spec)  # greedy as fitted on all OOF rows
    probs = combiner.predict_proba(stacked[:, labelled])
    y = [CLASSES.index(labels[ids[i]]) for i in labelled]
    expected = log_loss(y, probs, labels=list(range(len(CLASSES))))
    row = result.scores.filter(pl.col("name") == "greedy").row(0, named=True)
    assert row["test_log_loss"] == pytest.approx(expected, rel=1e-9)

    # Replacing the unlabelled test rows by uniform guesses changes no score: only labelled test rows enter
    # a test score, and the OOF fit never sees test rows.
    scrambled = {m: t.with_columns([pl.when(~pl.col("image_id").is_in(list(labels))).then(1.0 / len(CLASSES))
                                    .otherwise(pl.col(c)).alias(c) for c in CLASSES]) for m, t in test.items()}
    again = build_ensemble(oof, scrambled, CLASSES, INFO, CFG, tmp_path, compare_methods=METHODS, test_labels=labels)
    assert again.scores["test_log_loss"].to_list() == pytest.approx(result.scores["test_log_loss"].to_list())
    assert again.scores["log_loss"].to_list() == result.scores["log_loss"].to_list()


def test_a_member_much_worse_on_held_out_sites_is_flagged_as_site_shift(tmp_path):
    oof, test = planted_members(n=300)
    y_test, _ = labels_and_folds(80, seed=1)
    # Member 'c' is confidently wrong on the held-out sites: it learned its training sites, not the animals.
    wrong = (y_test + 1) % len(CLASSES)
    test["c"] = test["c"].with_columns([pl.Series(c, member_probs(wrong, 6.0, seed=9)[:, j]) for j, c in enumerate(CLASSES)])
    result = build_ensemble(oof, test, CLASSES, INFO, CFG, tmp_path, compare_methods=METHODS,
                            test_labels=_test_labels(80))
    assert result.metrics["test_split"]["site_shift"] == ["c"]
    diagnostics = build_diagnostics(oof, CLASSES, result.spec, CFG, tmp_path / "diagnostics", scores=result.scores)
    assert [m for m, _, _ in diagnostics.site_shift] == ["c"]
    assert "site shift" in diagnostics.roadmap and "`c`" in diagnostics.roadmap.split("site shift")[1]


def test_unlabelled_test_split_gets_null_test_columns(tmp_path):
    oof, test = planted_members(n=150)
    result = build_ensemble(oof, test, CLASSES, INFO, CFG, tmp_path, compare_methods=METHODS)
    assert result.scores["test_log_loss"].null_count() == result.scores.height
    assert "test" not in result.metrics and not (tmp_path / "test_recall.csv").exists()
    assert result.test_recall is None
    diagnostics = build_diagnostics(oof, CLASSES, result.spec, CFG, tmp_path / "d", scores=result.scores)
    assert "no labelled test split" in diagnostics.roadmap
