"""A new SQLite tracking store appears whole or not at all, even when its creator is killed mid-way."""

import os
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


def test_tracking_is_resolved_once_explicit_first_and_sets_no_environment(tmp_path, monkeypatch):
    from ens_assets.defs.resources import MlflowTracking
    from ens_assets.plan import plan_from_dict
    from ens_assets_tests.training.tiny_project import tiny_plan_dict

    plan = plan_from_dict(tiny_plan_dict(), tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert mlflow_store.resolve_tracking(plan).uri == f"sqlite:///{plan.path(plan.tracking.default_store)}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///from-env.db")
    assert MlflowTracking().resolve(plan).uri == "sqlite:///from-env.db"
    explicit = MlflowTracking(tracking_uri="http://127.0.0.1:5999").resolve(plan)
    assert explicit == mlflow_store.Tracking("http://127.0.0.1:5999", plan.tracking.experiment, "http://127.0.0.1:5999")
    assert os.environ["MLFLOW_TRACKING_URI"] == "sqlite:///from-env.db"  # resolving changed nothing


_MODEL_FROM_CODE = '''
import mlflow.pyfunc
from mlflow.models import set_model


class Doubler(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        self.offset = float(open(context.artifacts["offset"]).read())

    def predict(self, context, model_input, params=None):
        return model_input * 2 + self.offset


set_model(Doubler())
'''


def test_a_pyfunc_model_is_logged_into_a_run_and_registered_one_version_per_call(tmp_path, monkeypatch):
    import mlflow.pyfunc
    import pandas as pd

    tracking = mlflow_store.Tracking(f"sqlite:///{tmp_path / 'mlflow.db'}", "ensembles")
    client = tracking.client()
    (tmp_path / "offset.txt").write_text("1.5")
    (tmp_path / "doubler.py").write_text(_MODEL_FROM_CODE)  # models from code: nothing pickled
    versions = []
    for _ in range(2):
        run_id = client.create_run(tracking.experiment_id(client)).info.run_id
        logged = mlflow_store.log_pyfunc_model(tracking, run_id, str(tmp_path / "doubler.py"),
                                               artifacts={"offset": tmp_path / "offset.txt"}, registered_name="ens",
                                               pip_requirements=["mlflow"])  # not inferred: that loads the model
        versions.append(logged.version)
    assert versions == ["1", "2"] and logged.registry_uri == "models:/ens/2"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking.uri)  # the loader's own lookup, in this test only
    model = mlflow.pyfunc.load_model(logged.registry_uri)
    out = model.predict(pd.DataFrame({"x": [1.0, 2.0]}))
    assert out["x"].tolist() == [3.5, 5.5]
