"""Issue 13: a standard member's best epoch is chosen on a slice of its fold's training images, never on the OOF fold."""

import mlflow
import numpy as np
import polars as pl
import pytest
import torch

from ens_assets.data.folds import HoldoutError, classes_short_in_slice, selection_split
from ens_assets.member_runs import train_member_fold
from ens_assets.training.checkpoint import load_checkpoint
from ens_assets.training.run import EARLY_STOPPING_IMAGES_FILE
from ens_assets_tests.tiny_plan import budget
from ens_assets_tests.training.tiny_project import make_tiny_plan, tiny_plan_dict

QUIET = dict(log=lambda _: None)
FOLD = "1"  # trains on folds 0 and 2 (sites S0, S2, S3, S5), holds out S1 and S4


def _plan(base, **training):
    return make_tiny_plan(base, tiny_plan_dict(**{"cv": budget(3, 60, 3), **training}))


def _rewrite_folds(plan, change) -> None:
    folds = pl.read_parquet(plan.folds_path)
    change(folds).write_parquet(plan.folds_path)


def test_oof_labels_never_influence_the_chosen_epoch(tmp_path, mlflow_store):
    """Two projects differing only in the held-out fold's labels (shuffled): the same epochs, the same selection
    losses, the same best epoch and bit-identical weights; only the OOF score differs."""
    honest, corrupted = _plan(tmp_path / "a", cv=budget(2, 60, 2)), _plan(tmp_path / "b", cv=budget(2, 60, 2))

    def shuffle_held_out_labels(folds):
        held = folds["fold"] == int(FOLD)
        labels = folds["label"].to_numpy().copy()
        labels[held.to_numpy()] = np.random.default_rng(1).permutation(labels[held.to_numpy()])
        assert (labels != folds["label"].to_numpy()).any()
        return folds.with_columns(pl.Series("label", labels))

    _rewrite_folds(corrupted, shuffle_held_out_labels)
    member = honest.members[0].key
    a, b = (train_member_fold(p, member, FOLD, **QUIET) for p in (honest, corrupted))
    weights_a, sidecar_a = load_checkpoint(a.checkpoint_dir)
    weights_b, sidecar_b = load_checkpoint(b.checkpoint_dir)

    assert [h["select_loss"] for h in sidecar_a["history"]] == [h["select_loss"] for h in sidecar_b["history"]]
    assert a.metrics["best_epoch"] == b.metrics["best_epoch"] and a.metrics["epochs_run"] == b.metrics["epochs_run"] == 2
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    assert a.metrics["val_loss"] != b.metrics["val_loss"]  # the OOF fold is still what the checkpoint is scored on
    assert a.metrics["early_stopping_loss_crops"] == b.metrics["early_stopping_loss_crops"]

    # The slice: whole sites of the training folds, recorded with its size and fraction; never an OOF image.
    record = sidecar_a["early_stopping"]
    slice_ids = pl.read_parquet(a.checkpoint_dir / EARLY_STOPPING_IMAGES_FILE)
    folds = pl.read_parquet(honest.folds_path)
    assert record["images"] == slice_ids.height > 0 and record["fraction"] == 0.15 and record["reason"] is None
    assert record["held_out_fraction"] == pytest.approx(slice_ids.height / folds.filter(pl.col("fold") != int(FOLD)).height, abs=1e-4)
    in_slice = folds.filter(pl.col("image_id").is_in(slice_ids["image_id"].implode()))
    assert (in_slice["fold"] != int(FOLD)).all()
    trained = folds.filter((pl.col("fold") != int(FOLD)) & ~pl.col("image_id").is_in(slice_ids["image_id"].implode()))
    assert not set(in_slice["site"]) & set(trained["site"])  # no site on both sides
    assert a.metrics["n_early_stopping_crops"] == record["crops"] and a.metrics["n_train_crops"] > 0

    params = mlflow.MlflowClient(tracking_uri=mlflow_store).get_run(a.mlflow_run_id).data.params
    assert params["early_stopping.images"] == str(record["images"]) and params["early_stopping.fraction"] == "0.15"


def test_no_slice_that_keeps_every_class_falls_back_to_the_last_epoch_with_its_reason(tmp_path, mlflow_store):
    """Every class of the training folds lives at one site: no site can be held out without taking a class out of
    training, so the member trains on all of it, patience never stops it, and the reason is recorded."""
    plan = _plan(tmp_path, cv=budget(2, 60, 1))
    classes = ["bird", "hog", "leopard", "rodent"]
    _rewrite_folds(plan, lambda f: f.with_columns(
        pl.col("site").map_elements(lambda s: classes[int(s[1:]) % 4], return_dtype=pl.String).alias("label")))
    messages = []
    result = train_member_fold(plan, plan.members[0].key, FOLD, log=messages.append)
    _, sidecar = load_checkpoint(result.checkpoint_dir)
    record = sidecar["early_stopping"]
    assert record["images"] == 0 and record["rows"].startswith("none")
    assert "take some class out of training" in record["reason"] and "kept the last epoch" in record["reason"]
    assert any("no early-stopping slice" in m for m in messages)
    assert result.metrics["epochs_run"] == 2 and result.metrics["best_epoch"] == 1  # patience 1 did not stop it
    assert result.metrics["stopped_reason"] == "completed" and "select_loss" not in sidecar["history"][0]
    assert "early_stopping_loss_crops" not in result.metrics and result.metrics["n_early_stopping_crops"] == 0
    assert not (result.checkpoint_dir / EARLY_STOPPING_IMAGES_FILE).exists()
    params = mlflow.MlflowClient(tracking_uri=mlflow_store).get_run(result.mlflow_run_id).data.params
    assert "take some class out of training" in params["early_stopping.reason"]


def test_a_class_at_a_single_site_stays_in_training_and_is_named():
    labels = np.array(["a"] * 6 + ["b"] * 6 + ["c"] * 3)
    groups = np.array(["s0", "s1", "s2"] * 4 + ["s3"] * 3)  # class c lives at one site only
    keep, chosen = selection_split(labels, 0.3, seed=0, groups=groups, min_per_class=1)
    assert not set(groups[keep]) & set(groups[chosen])
    assert "c" in set(labels[keep]) and classes_short_in_slice(labels, chosen, 1) == ["c"]
    assert set(labels[chosen]) == {"a", "b"}
    with pytest.raises(HoldoutError, match="take some class out of training"):
        selection_split(labels[6:], 0.3, seed=0, groups=np.array(["s0"] * 6 + ["s3"] * 3), min_per_class=1)
    with pytest.raises(HoldoutError, match="1 training group"):
        selection_split(labels, 0.3, seed=0, groups=np.zeros(len(labels)), min_per_class=1)
