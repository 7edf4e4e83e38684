"""A `strategy: subset` member is a normal checkpoint partition: it materializes through Dagster on a real
SQLite instance (smoke -> k folds -> OOF/test predictions) with the standard sidecar, verdict and MLflow run."""

import json

import mlflow
import polars as pl

import dagster as dg
import pytest
import yaml

from ens_assets.cli import StageRunner
from ens_assets.plan import plan_from_dict
from ens_assets.subsets.member_training import SCORES_FILE, SCORES_KEY_FILE, SCORES_PLOT_FILE
from ens_assets.member_runs import train_member_fold
from ens_assets.training.run import checkpoint_is_fresh, checkpoint_spec
from ens_assets_tests.instance_home import make_dagster_home
from ens_assets_tests.tiny_plan import budget, member, tiny_plan
from ens_assets_tests.tracking_store import new_tracking_store

pytestmark = pytest.mark.slow

SUBSET = "test_resnet.t005.geo.subset"
SUBSET_SETTINGS = {"fraction": 0.5, "copies": 2, "phases": 1, "total_epochs": 6, "score_seeds": [0], "batch_size": 16}

PARAMS = tiny_plan(
    data={"demo": {"seed": 3}},
    crops={"thresholds": [0.05], "min_size_px": 4},
    recipes={"mixup": None},
    # One batch per epoch at this size: ens_assets.training.loop._batches mishandles a last batch of one
    # (n = 17 with batch 16 raises IndexError), which a k% subset of tiny data can hit.
    training={"batch_size": 64, "smoke": budget(2), "cv": budget(2)},
    members=[member(0.05, strategy="subset", subset=SUBSET_SETTINGS)],
    promotion={"min_accuracy_over_chance": 0.0, "require_every_class_predicted": False},
)


@pytest.fixture(scope="module")
def materialized(tmp_path_factory):
    root = tmp_path_factory.mktemp("subset_project")
    home = make_dagster_home(root)
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump(PARAMS, sort_keys=False))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DAGSTER_HOME", str(home))
        mp.setenv("MLFLOW_TRACKING_URI", new_tracking_store(root / "mlflow.db"))
        lines: list[str] = []
        runner = StageRunner(params, out=lines.append)
        runner.data()
        runner.crops()
        runner.train()
        runner.predict()
        print("\n".join(lines))
        yield runner, lines


def test_subset_member_checkpoints_and_oof_come_out_of_dagster(materialized):
    runner, lines = materialized
    plan = runner.plan
    assert runner.instance.is_persistent
    assert not runner.failures and not runner.gate_failures, "\n".join(lines)
    for fold in ("smoke", "0", "1"):
        directory = plan.checkpoint_dir(SUBSET, fold)
        for name in ("model.safetensors", "checkpoint.json", SCORES_FILE, SCORES_KEY_FILE, SCORES_PLOT_FILE):
            assert (directory / name).is_file(), (fold, name)
        sidecar = json.loads((directory / "checkpoint.json").read_text())
        assert sidecar["strategy"] == "subset" and sidecar["smoke_verdict"]["passed"] is True
        (phase,) = sidecar["subset_report"]["phases"]
        assert len(phase["copy_val_losses"]) == 2 and phase["accepted_copies"]
        assert sidecar["metrics"]["subset_p0_merged_val_loss_crops"] == pytest.approx(phase["merged_val_loss"])
        assert sidecar["metrics"]["flops_per_image"] > 0 and sidecar["metrics"]["param_count"] > 0
        # The history is every epoch trained (base, then each copy) numbered across the run.
        assert [r["part"] for r in sidecar["history"]] == ["base"] * phase["base_epochs"] + [
            f"copy{j}" for j in range(2) for _ in range(phase["copy_epochs"])]
        assert [r["epoch"] for r in sidecar["history"]] == list(range(len(sidecar["history"])))
        scores = pl.read_parquet(directory / SCORES_FILE)
        # Scored and trained: the training crops minus the selection slice soups are chosen on.
        assert scores.height == sidecar["metrics"]["n_train_crops"] - sidecar["metrics"]["subset_selection_crops"] > 0
        assert sidecar["metrics"]["subset_selection_crops"] > 0 and "fallback_to_base" in phase

    # Smoke trains one reduced phase (the smoke budget's 2 epochs, raised to 2 x copies); the folds the config as written.
    smoke = json.loads((plan.checkpoint_dir(SUBSET, "smoke") / "checkpoint.json").read_text())
    fold0 = json.loads((plan.checkpoint_dir(SUBSET, "0") / "checkpoint.json").read_text())
    assert smoke["subset_config"]["total_epochs"] == 4 and len(smoke["history"]) == 4
    assert fold0["subset_config"]["total_epochs"] == 6 and len(fold0["history"]) == 6

    oof = pl.read_parquet(plan.oof_path(SUBSET))
    folds = pl.read_parquet(plan.folds_path)
    assert oof["image_id"].n_unique() == oof.height
    assert set(oof["fold"].unique().to_list()) == {0, 1}
    # Every training image that has a crop is predicted exactly once (none silently dropped).
    assert oof.height == folds.height - fold0["metrics"]["images_without_crops"]
    assert plan.test_predictions_path(SUBSET).is_file()


def test_difficulty_scores_asset_gathers_per_image_scores(materialized):
    runner, lines = materialized
    plan = runner.plan
    assert any(f"difficulty scores {SUBSET}" in line and "[ok]" in line for line in lines), "\n".join(lines)
    table = pl.read_parquet(plan.difficulty_path(SUBSET))
    assert set(table["fold"].unique().to_list()) == {"smoke", "0", "1"}
    assert table.select(pl.col("el2n").is_finite().all(), pl.col("grand").is_finite().all()).row(0) == (True, True)
    # Fold 0's scores cover exactly the images it trained on: those of the other fold.
    folds = pl.read_parquet(plan.folds_path)
    trained_on = set(folds.filter(pl.col("fold") != 0)["image_id"]) & set(table["image_id"])
    assert set(table.filter(pl.col("fold") == "0")["image_id"]) == trained_on
    assert runner.instance.get_latest_materialization_event(dg.AssetKey("difficulty_scores")) is not None


def test_subset_run_is_logged_to_mlflow_like_a_standard_one(materialized):
    runner, _ = materialized
    sidecar = json.loads((runner.plan.checkpoint_dir(SUBSET, "0") / "checkpoint.json").read_text())
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{runner.params.parent / 'mlflow.db'}")
    run = client.get_run(sidecar["mlflow_run_id"])
    assert run.data.tags["strategy"] == "subset" and run.data.tags["member"] == SUBSET
    assert run.data.params["subset.copies"] == "2"
    assert run.data.metrics["subset_p0_base_val_loss_crops"] == pytest.approx(sidecar["subset_report"]["phases"][0]["base_val_loss"])
    # One point per epoch trained (steps 0-5); tracking also logs the final image-level val_loss at step 0.
    assert sorted({m.step for m in client.get_metric_history(run.info.run_id, "train_loss")}) == list(range(6))
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {SCORES_PLOT_FILE, "subset_report.json"}


def test_subset_settings_are_part_of_the_fingerprint_and_reruns_skip(materialized):
    runner, lines = materialized
    plan = runner.plan
    again: list[str] = []
    rerun = StageRunner(runner.params, out=again.append)
    rerun.train()
    assert not rerun.failures
    assert all(checkpoint_is_fresh(plan, SUBSET, fold) for fold in ("smoke", "0", "1"))

    changed = json.loads(json.dumps(PARAMS))
    changed["members"][0]["subset"]["copies"] = 3
    changed_plan = plan_from_dict(changed, runner.params.parent, check_backbones=False)
    assert not checkpoint_is_fresh(changed_plan, SUBSET, "0")

    # Retraining with 3 copies reuses the fold's cached difficulty scores (they do not depend on copies).
    scores = changed_plan.checkpoint_dir(SUBSET, "0") / SCORES_FILE
    scored_at = scores.stat().st_mtime_ns
    result = train_member_fold(changed_plan, SUBSET, "0", log=lambda _: None)
    assert not result.skipped and result.metrics["subset_scores_cached"] == 1.0
    assert scores.stat().st_mtime_ns == scored_at
    assert len(json.loads((result.checkpoint_dir / "checkpoint.json").read_text())["subset_report"]["phases"][0]["copy_val_losses"]) == 3

    # A standard member beside it keeps its key and its spec has no subset keys (old fingerprints stand).
    both = json.loads(json.dumps(PARAMS))
    both["members"].append({"backbone": "test_resnet", "threshold": 0.05, "recipe": "geo", "stage": "cv"})
    both_plan = plan_from_dict(both, runner.params.parent, check_backbones=False)
    assert both_plan.member_keys == [SUBSET, "test_resnet.t005.geo"]
    standard_spec = checkpoint_spec(both_plan, "test_resnet.t005.geo", "0")
    assert "subset" not in standard_spec and "strategy" not in standard_spec
    assert checkpoint_spec(both_plan, SUBSET, "0")["subset"]["copies"] == 2
