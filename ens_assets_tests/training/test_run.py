"""train_member_fold / predict_member_oof / predict_member_test on a private copy of the tiny demo."""

import json

import mlflow
import numpy as np
import polars as pl
import pytest

from ens_assets.plan import PlanError, plan_from_dict
from ens_assets.member_runs import train_member_fold
from ens_assets.training.checkpoint import load_checkpoint
from ens_assets.training.run import (
    checkpoint_is_fresh,
    oof_summary,
    predict_member_oof,
    predict_member_test,
)
from ens_assets_tests.training.tiny_project import copy_tiny_project

QUIET = dict(log=lambda _: None)


def test_train_member_fold_writes_a_complete_checkpoint(trained_project):
    plan, _, results = trained_project
    member = plan.members[0].key
    assert [r.fold for r in results] == plan.fold_keys and not any(r.skipped for r in results)
    for result in results:
        assert result.checkpoint_dir == plan.checkpoint_dir(member, result.fold)
        files = {p.name for p in result.checkpoint_dir.iterdir()}
        assert {"model.safetensors", "checkpoint.json", "confusion_matrix.json", "confusion_matrix.png"} <= files
        assert "recovery" not in files  # recovery state is dropped once the final checkpoint exists
        state, sidecar = load_checkpoint(result.checkpoint_dir)
        assert sidecar["fingerprint"] == result.fingerprint and sidecar["classes"] == sorted(sidecar["classes"])
        assert sidecar["smoke_verdict"]["checks"] and len(sidecar["history"]) == result.metrics["epochs_run"]
        m = result.metrics
        assert m["stopped_reason"] in {"completed", "early_stopping", "time_budget"}
        assert m["images_per_second"] > 0 and m["wall_seconds"] > 0 and m["peak_memory_mb"] > 0
        assert m["flops_per_image"] > 0 and m["param_count"] == sum(v.numel() for k, v in state.items() if "running" not in k and "num_batches" not in k)
        assert 0.0 <= m["val_acc"] <= 1.0 and np.isfinite(m["val_loss"])
        assert all(f"recall_{c}" in m for c in sidecar["classes"])


def test_oof_covers_every_training_image_exactly_once(trained_project):
    plan, _, _ = trained_project
    member = plan.members[0]
    oof = predict_member_oof(plan, member.key)
    folds = pl.read_parquet(plan.folds_path)
    cropped = pl.read_parquet(plan.crops_dir(member.threshold) / "index.parquet").filter(pl.col("split") == "train")
    expected = folds.join(cropped.select("image_id").unique(), on="image_id")
    assert oof["image_id"].n_unique() == oof.height == expected.height
    joined = oof.join(expected, on="image_id", suffix="_folds")
    assert joined.height == oof.height and (joined["fold"] == joined["fold_folds"]).all() and (joined["label"] == joined["label_folds"]).all()
    classes = [c for c in oof.columns if c not in ("image_id", "fold", "label")]
    np.testing.assert_allclose(oof.select(classes).to_numpy().sum(axis=1), 1.0, rtol=1e-5)
    assert pl.read_parquet(plan.oof_path(member.key)).equals(oof)
    summary = oof_summary(oof, classes)
    assert summary["n_images"] == oof.height and 0 < summary["log_loss"] and set(f"recall_{c}" for c in classes) <= set(summary)


def test_test_predictions_average_the_fold_checkpoints(trained_project):
    plan, _, _ = trained_project
    member = plan.members[0]
    frame = predict_member_test(plan, member.key)
    index = pl.read_parquet(plan.crops_dir(member.threshold) / "index.parquet")
    assert frame["image_id"].to_list() == sorted(index.filter(pl.col("split") == "test")["image_id"].unique().to_list())
    np.testing.assert_allclose(frame.drop("image_id").to_numpy().sum(axis=1), 1.0, rtol=1e-5)
    assert plan.test_predictions_path(member.key).is_file()


def test_mlflow_run_per_checkpoint_with_tags_metrics_and_confusion_matrix(trained_project):
    plan, uri, results = trained_project
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(plan.tracking.experiment)
    runs = client.search_runs([experiment.experiment_id])
    assert {r.info.run_id for r in runs} == {r.mlflow_run_id for r in results}
    for result in results:
        run = client.get_run(result.mlflow_run_id)
        assert result.mlflow_url.endswith(f"#/experiments/{experiment.experiment_id}/runs/{result.mlflow_run_id}")
        tags = run.data.tags
        assert (tags["member"], tags["backbone"], tags["threshold"], tags["recipe"], tags["fold"], tags["stage"]) == (
            "test_resnet.t005.geo", "test_resnet", "0.05", "geo", result.fold, "cv")  # fmt: skip
        assert run.data.params["training.lr"] == str(plan.training.lr) and run.data.params["recipe.hflip"] == "0.5"
        for key in ("val_loss", "val_acc", "wall_seconds", "images_per_second", "peak_memory_mb", "flops_per_image",
                    "param_count", "recall_bird", "precision_rodent", "f1_leopard"):  # fmt: skip
            assert key in run.data.metrics, key
        history = client.get_metric_history(run.info.run_id, "train_loss")
        assert [m.step for m in history] == list(range(result.metrics["epochs_run"]))
        assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"confusion_matrix.json", "confusion_matrix.png"}
        stored = json.loads((result.checkpoint_dir / "confusion_matrix.json").read_text())
        assert np.array(stored["matrix"]).sum() == result.metrics["n_val_images"]


def test_skip_when_fresh_and_retrain_when_the_member_changes(tiny_data, tmp_path, mlflow_store):
    plan = copy_tiny_project(tiny_data, tmp_path)
    smoke = plan.members[1].key
    first = train_member_fold(plan, smoke, "smoke", **QUIET)
    assert not first.skipped and checkpoint_is_fresh(plan, smoke, "smoke")
    again = train_member_fold(plan, smoke, "smoke", **QUIET)
    assert again.skipped and again.fingerprint == first.fingerprint and again.mlflow_run_id == first.mlflow_run_id

    raw = plan.model_dump(mode="json", exclude={"base_dir"})
    raw["members"].append({"backbone": "lcnet_050", "threshold": 0.05, "recipe": "mixup", "stage": "smoke"})
    with_another = plan_from_dict(raw, tmp_path)
    assert train_member_fold(with_another, smoke, "smoke", **QUIET).skipped

    raw["members"][1]["overrides"] = {"lr": 0.001}
    changed = plan_from_dict(raw, tmp_path)
    assert not checkpoint_is_fresh(changed, smoke, "smoke")
    retrained = train_member_fold(changed, smoke, "smoke", **QUIET)
    assert not retrained.skipped and retrained.fingerprint != first.fingerprint
    assert load_checkpoint(retrained.checkpoint_dir)[1]["member_spec"]["training"]["lr"] == 0.001


def test_smoke_member_trains_only_its_smoke_partition(tiny_data, tmp_path):
    plan = copy_tiny_project(tiny_data, tmp_path)
    with pytest.raises(PlanError, match="promote it to stage: cv"):
        train_member_fold(plan, plan.members[1].key, 0, **QUIET)
    with pytest.raises(PlanError, match="not a checkpoint partition"):
        train_member_fold(plan, plan.members[0].key, 7, **QUIET)


def test_test_images_without_a_crop_get_the_class_prior_not_dropped(trained_project):
    """A quarantined test image has no pixels to predict from, yet the submission needs its row."""
    from ens_assets.training.run import _class_prior_rows

    plan, _, _ = trained_project
    manifest = pl.read_parquet(plan.manifest_path)
    test_ids = manifest.filter(pl.col("split") == "test")["image_id"].sort()
    classes = sorted(manifest.filter(pl.col("split") == "train")["label"].unique().to_list())
    rows = _class_prior_rows(plan, test_ids[1:], classes)
    assert rows["image_id"].to_list() == [test_ids[0]]
    probs = rows.select(classes).to_numpy()
    assert np.allclose(probs.sum(axis=1), 1.0) and (probs > 0).all()
