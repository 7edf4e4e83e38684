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
        assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"confusion_matrix.json", "confusion_matrix.png",
                                                                            "early_stopping_images.parquet"}
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


def test_predict_rebuilds_each_fold_model_from_the_store_alone(trained_project):
    """What predict reads (the store's fold models: weights + architecture, size, normalisation, crop rule,
    classes) reproduces the OOF predictions, with no call into training's own prediction path."""
    import torch
    import torch.nn.functional as F

    from ens_assets.training.checkpoint_store import CheckpointStore
    from ens_assets.training.models import create_member_model

    plan, _, results = trained_project
    member = plan.members[0]
    store = CheckpointStore(plan)
    assert store.fold_checkpoints(member.key) == plan.fold_keys and store.complete(member.key)
    oof = predict_member_oof(plan, member.key)
    index = store.crop_index(member.threshold).filter(pl.col("split") == "train")
    images = np.load(plan.crops_dir(member.threshold) / "images.npy")
    for fold_model, result in zip(store.member_fold_models(member.key), results):
        spec, fold = fold_model.spec, fold_model.spec.fold
        assert (spec.architecture, spec.fingerprint, spec.mlflow_run_id) == (member.backbone, result.fingerprint, result.mlflow_run_id)
        assert spec.image_size == plan.image_size(member) and spec.crop["threshold"] == "0.05" and len(spec.mean) == 3
        # New sidecars carry the inference block; one saved before it existed gets the same from its spec.
        older = {k: v for k, v in fold_model.sidecar.items() if k != "inference"}
        assert "inference" in fold_model.sidecar and store._spec_from(member.key, fold, older) == spec
        held_out = oof.filter(pl.col("fold") == int(fold))
        rows = index.filter(pl.col("image_id").is_in(held_out["image_id"].implode()))
        x = torch.from_numpy(images[rows["row"].to_numpy()]).permute(0, 3, 1, 2).float() / 255.0
        x = F.interpolate(x, size=(spec.image_size,) * 2, mode="bilinear", antialias=True) if x.shape[-1] != spec.image_size else x
        x = (x - torch.tensor(spec.mean)[:, None, None]) / torch.tensor(spec.std)[:, None, None]
        with torch.inference_mode():
            model = create_member_model(spec.architecture, len(spec.classes), None)
            model.load_state_dict(fold_model.state_dict)
            probs = torch.softmax(model.eval()(x), dim=1).numpy()
        per_image = pl.DataFrame({"image_id": rows["image_id"]}).with_columns(
            [pl.Series(c, probs[:, i]) for i, c in enumerate(spec.classes)]).group_by("image_id").mean()
        expected = held_out.sort("image_id").select(spec.classes).to_numpy()
        np.testing.assert_allclose(per_image.sort("image_id").select(spec.classes).to_numpy(), expected, atol=1e-5)


def test_the_store_decides_freshness_costs_and_oof_coverage(trained_project):
    from ens_assets.member_outputs import oof_coverage
    from ens_assets.training.checkpoint_store import CheckpointStore

    plan, _, results = trained_project
    member = plan.members[0].key
    store = CheckpointStore(plan)
    assert store.fresh_sidecar(member, results[0].fold, results[0].fingerprint)["fingerprint"] == results[0].fingerprint
    assert store.fresh_sidecar(member, results[0].fold, "another-fingerprint") is None
    with pytest.raises(ValueError, match="stale"):
        store.load(member, results[0].fold, fingerprint="another-fingerprint")
    assert store.flops_per_image(member) == results[0].metrics["flops_per_image"] > 0
    assert store.flops_per_image(plan.members[1].key) == float("inf")  # never trained: scheduled last
    assert store.minutes(member, results[0].fold) == pytest.approx(results[0].metrics["wall_seconds"] / 60)
    assert store.confusion_png(member, results[0].fold).startswith(b"\x89PNG") and store.confusion_png(member, "smoke") is None
    assert store.verdict(plan.members[1].key) is None and not store.complete(plan.members[1].key)
    predict_member_oof(plan, member)
    coverage = oof_coverage(plan, member)
    assert coverage.ok and coverage.expected == pl.read_parquet(plan.oof_path(member)).height
    with pytest.raises(FileNotFoundError, match="materialize the crops partition"):
        store.crop_summary("0.50")
