"""MLflow tells the truth: links a browser opens, a model-training experiment, real run times, metrics
only at the epochs that ran."""

import mlflow

from ens_assets import mlflow_store
from ens_assets.plan import plan_from_dict


def test_checkpoint_run_links_to_the_mlflow_ui_page(trained_project):
    plan, _, results = trained_project
    for result in results:
        assert result.mlflow_url.startswith("http://127.0.0.1:5000/#/experiments/")
        assert result.mlflow_url.endswith(f"/runs/{result.mlflow_run_id}")


def test_ui_address_follows_the_config_and_an_http_tracking_server(tmp_path):
    from ens_assets_tests.training.tiny_project import tiny_plan_dict

    raw = tiny_plan_dict()
    raw["tracking"] = {**raw["tracking"], "ui_url": "http://mlflow.lab:8080"}
    plan = plan_from_dict(raw, tmp_path)
    assert mlflow_store.resolve_tracking(plan, "sqlite:///x.db").ui == "http://mlflow.lab:8080"
    assert mlflow_store.resolve_tracking(plan, "https://mlflow.internal").ui == "https://mlflow.internal"
    assert mlflow_store.run_url("http://h:1/", "3", "abc") == "http://h:1/#/experiments/3/runs/abc"


def test_experiment_is_a_model_training_experiment(trained_project):
    plan, uri, _ = trained_project
    experiment = mlflow.MlflowClient(tracking_uri=uri).get_experiment_by_name(plan.tracking.experiment)
    assert experiment.tags[mlflow_store.EXPERIMENT_KIND_TAG] == mlflow_store.MODEL_TRAINING_KIND


def test_an_untagged_older_experiment_is_retagged(tmp_path):
    uri = f"sqlite:///{tmp_path / 'old.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    old = client.create_experiment("old")
    assert mlflow_store.experiment_id(client, uri, "old") == old
    assert client.get_experiment(old).tags[mlflow_store.EXPERIMENT_KIND_TAG] == mlflow_store.MODEL_TRAINING_KIND


def test_run_spans_the_training_and_metrics_sit_at_real_epochs(trained_project):
    _, uri, results = trained_project
    client = mlflow.MlflowClient(tracking_uri=uri)
    for result in results:
        info = client.get_run(result.mlflow_run_id).info
        # The run opens when training starts: its duration covers the training, not only the logging.
        assert (info.end_time - info.start_time) / 1000 >= result.metrics["train_seconds"]
        epochs = result.metrics["epochs_run"]
        last = epochs - 1
        select_loss = client.get_metric_history(result.mlflow_run_id, "select_loss")
        # One point per epoch that ran on the early-stopping slice; the held-out fold is scored once, with the
        # chosen weights: its per-image val_loss is one point at the last epoch.
        assert sorted(m.step for m in select_loss) == list(range(epochs))
        assert [m.step for m in client.get_metric_history(result.mlflow_run_id, "val_loss")] == [last]
        assert client.get_run(result.mlflow_run_id).data.metrics["val_loss"] == result.metrics["val_loss"]
        stamps = [m.timestamp for m in sorted(select_loss, key=lambda m: (m.step, m.timestamp))]
        assert stamps == sorted(stamps) and info.start_time <= stamps[0] and stamps[-1] <= info.end_time
        for key in ("wall_seconds", "peak_memory_mb", "recall_bird"):
            assert [m.step for m in client.get_metric_history(result.mlflow_run_id, key)] == [last], key
