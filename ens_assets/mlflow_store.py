"""The MLflow experiment every run goes to, and the browser address of a run's page.

Shared by the training runs (training/tracking.py) and the ensemble run (ensemble/build.py), so both
create the experiment the same way: as a model-training experiment, artifacts beside a SQLite store.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_UI_URL = "http://127.0.0.1:5000"  # what `make mlflow-ui` serves
# MLflow 3's UI opens an experiment by its kind: without this tag it guesses "GenAI" and lands on an empty
# traces page; "custom_model_development" opens on the runs table ("Model training" in the UI).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"


def experiment_id(client, uri: str, name: str) -> str:
    """The experiment's id, creating it as a model-training experiment (an older one is re-tagged)."""
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
