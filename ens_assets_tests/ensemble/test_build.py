import json

import numpy as np
import polars as pl
import pytest

from ens_assets.ensemble.build import (
    build_diagnostics,
    build_ensemble,
    read_metrics,
    read_nested_oof,
    read_per_class_recall,
    read_roadmap,
    read_scores,
    read_spec,
)
from ens_assets.mlflow_store import Tracking, log_ensemble_run
from ens_assets.ensemble.tables import PredictionTableError
from ens_assets.plan import EnsembleConfig
from ens_assets_tests.ensemble.synthetic import CLASSES, planted_members
from ens_assets_tests.tracking_store import new_tracking_store

INFO = {"a": {"flops_per_image": 300, "param_count": 3000, "mlflow_run_id": "run-a"},
        "b": {"flops_per_image": 20, "param_count": 200, "mlflow_run_id": "run-b"},
        "c": {"flops_per_image": 10, "param_count": 100, "mlflow_run_id": None}}
CFG = EnsembleConfig(method="greedy", greedy_rounds=10)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("ensemble")
    oof, test = planted_members(n=300)
    result = build_ensemble(oof, test, CLASSES, INFO, CFG, out, compare_methods=["mean", "weighted"])
    diagnostics = build_diagnostics(oof, CLASSES, result.spec, CFG, out / "diagnostics")
    return out, oof, test, result, diagnostics


def test_build_ensemble_writes_spec_scores_metrics_compute_and_submission(built):
    out, _, test, result, _ = built
    for name in ("spec.json", "scores.parquet", "metrics.json", "compute.parquet", "pareto.png", "submission.csv"):
        assert (out / name).is_file(), name
    assert not list(out.glob(".*"))  # no temp files left behind
    spec = json.loads((out / "spec.json").read_text())
    assert spec["method"] == "greedy" and spec["classes"] == CLASSES and spec["members"] == ["a", "b", "c"]
    assert np.isclose(sum(spec["weights"].values()), 1.0) and spec["nested"] is True
    submission = pl.read_csv(out / "submission.csv")
    assert submission.columns == ["id", *CLASSES]
    assert submission.height == test["a"].height
    assert sorted(submission["id"].to_list()) == sorted(test["a"]["image_id"].to_list())
    np.testing.assert_allclose(submission.select(CLASSES).to_numpy().sum(axis=1), 1.0, atol=1e-9)
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"ensemble", "best_member", "methods", "test_split"}
    assert set(metrics["methods"]) == {"greedy", "mean", "weighted"}
    assert metrics["ensemble"]["log_loss"] == result.scores.filter(pl.col("name") == "greedy")["log_loss"][0]
    assert pl.read_parquet(out / "compute.parquet")["pareto"].any()
    assert result.scores.equals(pl.read_parquet(out / "scores.parquet"))
    assert read_spec(out) == spec and read_scores(out).equals(result.scores)  # the CLI's readers
    assert read_spec(out / "nothing") is None and read_scores(out / "nothing") is None
    assert read_metrics(out) == metrics and read_nested_oof(out).height == spec["oof_images"]


def test_build_diagnostics_writes_roadmap_recall_confusions_and_pngs(built):
    out, _, _, _, diagnostics = built
    d = out / "diagnostics"
    for name in ("roadmap.md", "per_class_recall.csv", "confusions.parquet", "recall_matrix.png",
                 "confusion_grid.png"):
        assert (d / name).is_file(), name
    recall = pl.read_csv(d / "per_class_recall.csv")
    assert recall["member"].to_list() == ["a", "b", "c", "ensemble"]
    assert diagnostics.all_fail == ["rodent"] and diagnostics.single_win[0][:2] == ("bird", "a")
    assert "rodent" in (d / "roadmap.md").read_text()
    assert read_roadmap(d) == diagnostics.roadmap and read_roadmap(out) is None
    assert read_per_class_recall(d).equals(recall) and read_per_class_recall(out) is None


def test_test_images_missing_for_one_member_are_an_error_not_a_silent_drop(tmp_path):
    oof, test = planted_members(n=150)
    test["b"] = test["b"].head(50)
    with pytest.raises(PredictionTableError, match="cover different images"):
        build_ensemble(oof, test, CLASSES, INFO, CFG, tmp_path)
    with pytest.raises(PredictionTableError, match="flops_per_image for \\['c'\\]"):
        build_ensemble(oof, planted_members(n=150)[1], CLASSES, {"a": INFO["a"], "b": INFO["b"]}, CFG, tmp_path)


def test_log_ensemble_run_records_a_linked_run(built, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    # An environment pointing elsewhere is ignored: the store is the one passed.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'elsewhere.db'}")
    _, _, _, result, diagnostics = built
    uri = new_tracking_store(tmp_path / "mlruns.db")
    run_ids = {m: info["mlflow_run_id"] for m, info in INFO.items()}
    run_id = log_ensemble_run(Tracking(uri, "ens-test"), result, diagnostics, run_ids)
    assert not (tmp_path / "elsewhere.db").exists()
    run = MlflowClient(tracking_uri=uri).get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["member_run.a"] == "run-a" and "member_run.c" not in run.data.tags
    assert run.data.params["method"] == "greedy" and run.data.params["member_run.c"] == "none"
    assert run.data.metrics["log_loss"] == result.metrics["ensemble"]["log_loss"]
    assert "log_loss/best_single_member" in run.data.metrics
    artifacts = {a.path for a in MlflowClient(tracking_uri=uri).list_artifacts(run_id)}
    assert {"spec.json", "submission.csv", "roadmap.md", "pareto.png", "recall_matrix.png"} <= artifacts
    assert (tmp_path / "mlartifacts").is_dir()  # artifacts sit beside the database, not in the cwd


def test_no_test_split_builds_from_oof_alone_with_an_empty_submission(tmp_path):
    from ens_assets.ensemble.build import NO_TEST_SPLIT

    oof, test = planted_members(n=150)
    empty = {m: t.head(0) for m, t in test.items()}
    result = build_ensemble(oof, empty, CLASSES, INFO, CFG, tmp_path)
    assert result.spec["test_images"] == 0 and result.test_split_note == NO_TEST_SPLIT
    submission = pl.read_csv(tmp_path / "submission.csv")
    assert submission.columns == ["id", *CLASSES] and submission.height == 0
    assert result.metrics["ensemble"]["log_loss"] == result.scores.filter(pl.col("name") == "greedy")["log_loss"][0]
    diagnostics = build_diagnostics(oof, CLASSES, result.spec, CFG, tmp_path / "diagnostics")
    assert diagnostics.all_fail == ["rodent"]
