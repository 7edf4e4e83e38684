"""MLflow, in one place: where runs go (resolved once, passed explicitly), the experiment, and every run the
platform logs (checkpoint, ensemble + diagnostics, morning report) and the ensemble's pyfunc model.

Uses the mlflow client directly (dagster-mlflow's resource is legacy) and never the fluent API's global
state: nothing here sets an environment variable or mlflow's process-wide tracking URI. The store is the
explicit URI a caller names (the Dagster resource's `tracking_uri`), else $MLFLOW_TRACKING_URI, else a SQLite
file beside params.yaml (plan.tracking.default_store): see `resolve_tracking`, the only place that decides.
Links point at a page a browser can open: the server's own address for an http(s) store, else the MLflow UI
that serves the file store (plan.tracking.ui_url, what `make mlflow-ui` starts).
"""

from __future__ import annotations

import fcntl
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

if TYPE_CHECKING:  # types only: this module sits below the plan, training and ensemble layers
    from mlflow import MlflowClient

DEFAULT_UI_URL = "http://127.0.0.1:5000"  # what `make mlflow-ui` serves
# MLflow 3's UI opens an experiment by its kind: without this tag it guesses "GenAI" and lands on an empty
# traces page; "custom_model_development" opens on the runs table ("Model training" in the UI).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"
ENSEMBLE_RUN_FILE = "mlflow_run.json"  # under the ensemble folder: the run the diagnostics log into
MODEL_ARTIFACT_PATH = "model"  # where log_pyfunc_model puts the model inside its run
_METRICS_PER_BATCH = 900  # MLflow accepts at most 1000 metrics / 100 params per log_batch call
_PARAMS_PER_BATCH = 100
# select_*: the early-stopping slice (held-out training crops); val_*: epoch histories written before it existed.
EPOCH_KEYS = ("train_loss", "select_loss", "val_loss", "train_acc", "select_acc", "val_acc", "lr")


# --- where runs go ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tracking:
    """A tracking store and the experiment runs go to, resolved once (resolve_tracking) and passed down."""

    uri: str
    experiment: str
    ui: str = DEFAULT_UI_URL  # the MLflow UI a browser opens for this store

    def client(self) -> "MlflowClient":
        """A client of the store; a new SQLite store is created whole first (ensure_store)."""
        from mlflow import MlflowClient  # deferred: importing mlflow is slow

        ensure_store(self.uri)
        return MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    def experiment_id(self, client: "MlflowClient | None" = None) -> str:
        return experiment_id(client or self.client(), self.uri, self.experiment)

    def run_url(self, experiment: str, run_id: str) -> str:
        return run_url(self.ui, experiment, run_id)

    def run_page(self, run_id: str, client: "MlflowClient | None" = None) -> str:
        """The page of a run in the MLflow UI, its experiment looked up in the store."""
        experiment = (client or self.client()).get_run(run_id).info.experiment_id
        return self.run_url(experiment, run_id)


def resolve_tracking(plan: Any, uri: str = "") -> Tracking:
    """The plan's tracking store: `uri` when given, else $MLFLOW_TRACKING_URI, else the plan's SQLite file."""
    resolved = uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{plan.path(plan.tracking.default_store)}"
    return Tracking(uri=resolved, experiment=plan.tracking.experiment, ui=ui_address(resolved, plan.tracking.ui_url))


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


def experiment_id(client: "MlflowClient", uri: str, name: str) -> str:
    """The experiment's id, creating it as a model-training experiment (an older one is re-tagged).

    The one path that creates an experiment; every run below goes through it."""
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


def metric_key(text: str) -> str:
    """`text` as an MLflow metric/param key (alphanumerics, '_', '-', '.', ' ', '/')."""
    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", text)


def flatten(spec: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """{'training': {'lr': 0.003}} -> {'training.lr': '0.003'} (MLflow params are flat strings)."""
    out: dict[str, str] = {}
    for key, value in spec.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = str(value)[:6000]
    return out


# --- checkpoint runs --------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrackedRun:
    run_id: str
    experiment_id: str
    url: str  # the run's page in the MLflow UI (http), see run_url


def log_checkpoint_run(
    tracking: Tracking,
    *,
    tags: Mapping[str, str],
    params: Mapping[str, Any],
    history: Sequence[Mapping[str, float]],
    metrics: Mapping[str, float],
    artifacts: Iterable[Path] = (),
    run_name: str | None = None,
    started_unix: float | None = None,
) -> TrackedRun:
    """Create a finished MLflow run: tags, flattened params, per-epoch metrics (step = epoch, timestamped
    when the epoch ended), final metrics at the last epoch's step, and artifact files.

    started_unix is when training began: the run's start time, so its duration is the training's, not the
    logging's. Returns its ids and URL.
    """
    from mlflow.entities import Param

    client = tracking.client()
    experiment = tracking.experiment_id(client)
    now_ms = int(time.time() * 1000)
    start_ms = int(started_unix * 1000) if started_unix is not None else now_ms
    run = client.create_run(experiment, start_time=start_ms, tags={k: str(v) for k, v in tags.items()}, run_name=run_name)
    run_id = run.info.run_id
    with _finished_or_failed(client, run_id):
        all_metrics = epoch_metrics(history, metrics, start_ms, now_ms)
        for start in range(0, len(all_metrics), _METRICS_PER_BATCH):
            client.log_batch(run_id, metrics=all_metrics[start : start + _METRICS_PER_BATCH])
        flat = [Param(k, v) for k, v in flatten(params).items()]
        for start in range(0, len(flat), _PARAMS_PER_BATCH):
            client.log_batch(run_id, params=flat[start : start + _PARAMS_PER_BATCH])
        for path in artifacts:
            client.log_artifact(run_id, str(path))
    return TrackedRun(run_id=run_id, experiment_id=experiment, url=tracking.run_url(experiment, run_id))


def epoch_metrics(history: Sequence[Mapping[str, float]], final: Mapping[str, Any], start_ms: int, end_ms: int) -> list:
    """Per-epoch points at step = epoch, stamped when that epoch ended (start + the epochs' seconds so far);
    final numbers at the last epoch's step and the end time, so no chart gets a point at a step never run."""
    from mlflow.entities import Metric

    points, elapsed_s = [], 0.0
    for record in history:
        elapsed_s += float(record.get("epoch_seconds", 0.0))
        stamp = min(start_ms + int(elapsed_s * 1000), end_ms)
        points += [Metric(k, float(record[k]), stamp, int(record["epoch"])) for k in EPOCH_KEYS if k in record]
    last_step = int(history[-1]["epoch"]) if history else 0
    points += [
        Metric(k, float(v), end_ms, last_step)
        for k, v in final.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    ]
    return points


class _finished_or_failed:
    """Ends a run FINISHED when the block succeeds, FAILED (and re-raises) when it does not."""

    def __init__(self, client: "MlflowClient", run_id: str) -> None:
        self.client, self.run_id = client, run_id

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> bool:
        status = "FINISHED" if exc_type is None else "FAILED"
        self.client.set_terminated(self.run_id, status=status, end_time=int(time.time() * 1000))
        return False


# --- the ensemble run and its diagnostics -----------------------------------------------------------
def log_ensemble_run(tracking: Tracking, result: Any, diagnostics: Any, member_run_ids: Mapping[str, str]) -> str:
    """Log an ensemble (ensemble.build.EnsembleResult) as its own run: comparison metrics, member run links,
    its files (and the diagnostics' files when given); return the run id."""
    from mlflow.entities import Metric, Param

    client = tracking.client()
    spec = result.spec
    members = spec["members"]
    note = "\n".join([f"Ensemble `{spec['method']}` over {len(members)} members.", "", "Member runs:"]
                     + [f"- `{m}`: run `{member_run_ids.get(m, 'unknown')}`" for m in members])  # fmt: skip
    tags = {"ens_assets.kind": "ensemble", "ens_assets.method": spec["method"], "mlflow.note.content": note}
    tags.update({f"member_run.{metric_key(m)}": rid for m, rid in member_run_ids.items() if rid})
    run = client.create_run(tracking.experiment_id(client), run_name=f"ensemble-{spec['method']}", tags=tags)
    run_id = run.info.run_id
    with _finished_or_failed(client, run_id):
        params = {"method": spec["method"], "n_members": len(members), "nested": spec.get("nested"),
                  "test_images": spec.get("test_images", 0),
                  "members": ",".join(members)[:6000], "n_classes": len(spec["classes"])}  # fmt: skip
        params.update({f"weight.{metric_key(m)}": round(w, 6) for m, w in spec["weights"].items()})
        params.update({f"member_run.{metric_key(m)}": member_run_ids.get(m) or "none" for m in members})
        now = int(time.time() * 1000)
        client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), now, 0) for k, v in _ensemble_metrics(result) if v is not None],
            params=[Param(k, str(v)) for k, v in params.items()],
        )
        files = list(result.paths.values()) + (list(diagnostics.paths.values()) if diagnostics else [])
        for path in files:
            client.log_artifact(run_id, str(path))
    return run_id


def _ensemble_metrics(result: Any) -> list[tuple[str, float | None]]:
    metrics = []
    for row in result.scores.iter_rows(named=True):
        for column in ("log_loss", "accuracy", "in_sample_log_loss", "in_sample_accuracy", "test_log_loss", "test_accuracy"):
            metrics.append((f"{column}/{metric_key(row['name'])}", row.get(column)))
    for name, test in result.metrics.get("test", {}).items():
        metrics += [(f"test_recall/{metric_key(name)}/{metric_key(c)}", r) for c, r in test["recall"].items()]
    chosen = result.metrics["ensemble"]
    metrics += [("log_loss", chosen["log_loss"]), ("accuracy", chosen["accuracy"]),
                ("flops_per_image", chosen["flops_per_image"])]  # fmt: skip
    return metrics


def log_files(tracking: Tracking, run_id: str, paths: Iterable[Path], artifact_path: str | None = None) -> None:
    """Add files to an existing run (the diagnostics' plots into the ensemble's run)."""
    client = tracking.client()
    for path in paths:
        client.log_artifact(run_id, str(path), artifact_path=artifact_path)


def write_run_record(folder: Path, tracking: Tracking, run_id: str) -> Path:
    """Record beside an artefact folder (the ensemble's) which run it was logged as, for later steps."""
    from ens_assets.atomic import write_json

    return write_json(Path(folder) / ENSEMBLE_RUN_FILE, {"run_id": run_id, "tracking_uri": tracking.uri})


def read_run_record(folder: Path) -> dict[str, str]:
    """{'run_id', 'tracking_uri'} written by write_run_record; a clear error when the folder has none."""
    import json

    path = Path(folder) / ENSEMBLE_RUN_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no MLflow run recorded for this ensemble; materialize the ensemble asset first")
    return json.loads(path.read_text())


# --- the morning report -----------------------------------------------------------------------------
def log_report_run(tracking: Tracking, report: Any) -> str:
    """One run per morning report (morning_report.MorningReport): markdown and proposals as artifacts,
    headline numbers as metrics; return the run id."""
    client = tracking.client()
    run = client.create_run(tracking.experiment_id(client), run_name=f"morning-report-{report.date}",
                            tags={"ens_assets.kind": "morning_report", "ens_assets.date": report.date,
                                  "mlflow.note.content": report.markdown[:5000]})  # fmt: skip
    run_id = run.info.run_id
    with _finished_or_failed(client, run_id):
        ran = report.summary["ran"]
        for key in ("trained", "skipped_fresh", "failed", "compute_minutes", "peak_memory_mb"):
            client.log_metric(run_id, f"night/{key}", float(ran[key]))
        if "ensemble" in report.summary:
            client.log_metric(run_id, "ensemble/log_loss", float(report.summary["ensemble"]["log_loss"]))
            client.log_metric(run_id, "delta/log_loss", float(report.summary["deltas"]["deltas"]["log_loss"]["value"]))
        client.log_metric(run_id, "proposals", float(len(report.proposals)))
        for path in report.paths.values():
            client.log_artifact(run_id, str(path), artifact_path="morning_report")
    return run_id


# --- the ensemble as a pyfunc model -----------------------------------------------------------------
@dataclass(frozen=True)
class LoggedModel:
    run_id: str
    model_uri: str  # runs:/<run_id>/model: what mlflow.pyfunc.load_model opens
    registered_name: str | None = None
    version: str | None = None  # the registry version, when registered

    @property
    def registry_uri(self) -> str | None:
        """models:/<name>/<version>, when registered."""
        return f"models:/{self.registered_name}/{self.version}" if self.version else None


def log_pyfunc_model(
    tracking: Tracking,
    run_id: str,
    python_model: Any,
    *,
    artifacts: Mapping[str, str | Path] | None = None,
    registered_name: str | None = None,
    code_paths: Sequence[str | Path] | None = None,
    pip_requirements: Sequence[str] | None = None,
    input_example: Any = None,
    signature: Any = None,
) -> LoggedModel:
    """Save `python_model` (an mlflow.pyfunc.PythonModel) with its artifact files (name -> path: e.g. the
    ensemble folder) into run `run_id` under 'model', and register it under `registered_name` (one new
    version per call) when given.

    Saved with mlflow.pyfunc.save_model into a temp folder and uploaded with the client, so the process's
    fluent state (active run, global tracking URI) is never touched.
    """
    import mlflow.pyfunc

    client = tracking.client()
    with tempfile.TemporaryDirectory(prefix="ens-assets-model-") as tmp:
        local = Path(tmp) / MODEL_ARTIFACT_PATH
        mlflow.pyfunc.save_model(
            str(local), python_model=python_model,
            artifacts={k: str(v) for k, v in (artifacts or {}).items()} or None,
            code_paths=[str(p) for p in code_paths] if code_paths else None,
            pip_requirements=list(pip_requirements) if pip_requirements is not None else None,
            input_example=input_example, signature=signature,
        )  # fmt: skip
        client.log_artifacts(run_id, str(local), artifact_path=MODEL_ARTIFACT_PATH)
    model_uri = f"runs:/{run_id}/{MODEL_ARTIFACT_PATH}"
    if not registered_name:
        return LoggedModel(run_id=run_id, model_uri=model_uri)
    return LoggedModel(run_id, model_uri, registered_name, register_model(tracking, run_id, registered_name))


def register_model(tracking: Tracking, run_id: str, name: str, artifact_path: str = MODEL_ARTIFACT_PATH) -> str:
    """A new version of registered model `name` (created on first use) from the run's model folder; its number."""
    from mlflow.exceptions import MlflowException

    client = tracking.client()
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise  # anything but "already registered, add a version"
    source = client.get_run(run_id).info.artifact_uri.rstrip("/") + f"/{artifact_path}"
    return str(client.create_model_version(name, source=source, run_id=run_id).version)
