"""The MLflow experiment every run goes to, and the browser address of a run's page.

Shared by the training runs (training/tracking.py) and the ensemble run (ensemble/build.py), so both
create the experiment the same way: as a model-training experiment, artifacts beside a SQLite store.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

DEFAULT_UI_URL = "http://127.0.0.1:5000"  # what `make mlflow-ui` serves
# MLflow 3's UI opens an experiment by its kind: without this tag it guesses "GenAI" and lands on an empty
# traces page; "custom_model_development" opens on the runs table ("Model training" in the UI).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"


def ensure_store(uri: str) -> None:
    """Create a SQLite store whole or not at all, before any client touches it.

    MLflow creates a new SQLite store by running its alembic migrations in place; a process killed in the
    middle (a run killed while its first checkpoint logs) leaves a half-migrated file that every later run
    fails on ("table _alembic_tmp_experiments already exists"). So the store is built in a temp file under
    a lock and renamed into place; an existing file is left to MLflow.
    """
    if not uri.startswith("sqlite:///"):
        return
    db = Path(uri[len("sqlite:///") :])
    if db.exists():
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(db.parent, os.O_RDONLY)  # a lock on the folder: no lock file left, dropped if its holder dies
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if db.exists():
            return
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        tmp = db.parent / f".{db.name}.{os.getpid()}.tmp"
        tmp.unlink(missing_ok=True)
        store = SqlAlchemyStore(f"sqlite:///{tmp}", default_artifact_location(uri))
        store.engine.dispose()
        os.replace(tmp, db)
    finally:
        os.close(fd)


def experiment_id(client, uri: str, name: str) -> str:
    """The experiment's id, creating it as a model-training experiment (an older one is re-tagged)."""
    ensure_store(uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(
                name, artifact_location=default_artifact_location(uri), tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND}
            )
        except Exception:
            # Another process created it between our lookup and create.
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.tags.get(EXPERIMENT_KIND_TAG) != MODEL_TRAINING_KIND:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)
    return experiment.experiment_id


def default_artifact_location(uri: str) -> str | None:
    """Artifacts of a SQLite store live beside the database, not in whatever folder the process runs in."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :])
        return (db.parent / "mlartifacts").resolve().as_uri()
    return None


def ui_address(uri: str, ui_url: str = DEFAULT_UI_URL) -> str:
    """The MLflow UI serving a store: a tracking server is its own UI; a file store is served at ui_url."""
    return uri if uri.startswith(("http://", "https://")) else ui_url


def run_url(ui: str, experiment: str, run_id: str) -> str:
    """The run's page in the MLflow UI at `ui` (an http address a browser opens)."""
    return f"{ui.rstrip('/')}/#/experiments/{experiment}/runs/{run_id}"
