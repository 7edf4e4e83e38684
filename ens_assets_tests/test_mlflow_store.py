"""A new SQLite tracking store appears whole or not at all, even when its creator is killed mid-way."""

import signal
import subprocess
import sys

from mlflow import MlflowClient

from ens_assets import mlflow_store

_CREATE = "import sys; from ens_assets.mlflow_store import ensure_store; ensure_store(sys.argv[1])"
# The creator kills itself in the middle of a batch migration (the moment a killed training run hit in CI):
# the first statement that touches alembic's temp copy of a table.
_CREATE_AND_DIE_MID_MIGRATION = """
import os, signal, sys
from sqlalchemy import event
from sqlalchemy.engine import Engine

def die(conn, cursor, statement, *args):
    if "_alembic_tmp" in statement:
        os.kill(os.getpid(), signal.SIGKILL)

event.listen(Engine, "after_cursor_execute", die)
from ens_assets.mlflow_store import ensure_store
ensure_store(sys.argv[1])
"""


def test_a_creator_killed_mid_migration_leaves_no_half_built_store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    creator = subprocess.Popen([sys.executable, "-c", _CREATE_AND_DIE_MID_MIGRATION, uri])
    assert creator.wait(timeout=120) == -signal.SIGKILL
    assert not (tmp_path / "mlflow.db").exists()

    client = MlflowClient(tracking_uri=uri)
    experiment = mlflow_store.experiment_id(client, uri, "night")
    run = client.create_run(experiment)
    client.log_metric(run.info.run_id, "val_acc", 0.5)
    assert client.get_run(run.info.run_id).data.metrics == {"val_acc": 0.5}
    assert client.get_experiment(experiment).tags[mlflow_store.EXPERIMENT_KIND_TAG] == mlflow_store.MODEL_TRAINING_KIND


def test_two_processes_creating_the_store_at_once_both_get_it(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    creators = [subprocess.Popen([sys.executable, "-c", _CREATE, uri]) for _ in range(2)]
    assert [c.wait(timeout=120) for c in creators] == [0, 0]
    assert not list(tmp_path.glob(".mlflow.db.*.tmp"))
    client = MlflowClient(tracking_uri=uri)
    assert mlflow_store.experiment_id(client, uri, "night") == mlflow_store.experiment_id(client, uri, "night")
