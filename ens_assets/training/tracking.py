"""MLflow tracking of checkpoint runs: one MLflow run per (member, fold) checkpoint partition.

Uses the mlflow client directly (dagster-mlflow's resource is legacy). The store is
$MLFLOW_TRACKING_URI when set, else a SQLite file beside params.yaml (plan.tracking.default_store).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ens_assets.plan import Plan

_BATCH = 900  # MLflow accepts at most 1000 metrics / 100 params per log_batch call


@dataclass(frozen=True)
class TrackedRun:
    run_id: str
    experiment_id: str
    url: str  # http(s) stores: the run's page; other stores: '<store uri>#/experiments/<id>/runs/<run id>'


def tracking_uri(plan: Plan) -> str:
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{plan.path(plan.tracking.default_store)}"


def run_url(uri: str, experiment_id: str, run_id: str) -> str:
    return f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}" if uri.startswith(("http://", "https://")) \
        else f"{uri}#/experiments/{experiment_id}/runs/{run_id}"  # fmt: skip


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


def log_checkpoint_run(
    plan: Plan,
    *,
    tags: Mapping[str, str],
    params: Mapping[str, Any],
    history: Sequence[Mapping[str, float]],
    metrics: Mapping[str, float],
    artifacts: Iterable[Path] = (),
    run_name: str | None = None,
) -> TrackedRun:
    """Create a finished MLflow run: tags, flattened params, per-epoch metrics (step = epoch), final
    metrics and artifact files. Returns its ids and URL."""
    import mlflow
    from mlflow.entities import Metric, Param, RunStatus

    uri = tracking_uri(plan)
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment_id = _experiment_id(client, uri, plan.tracking.experiment)
    run = client.create_run(experiment_id, tags={k: str(v) for k, v in tags.items()}, run_name=run_name)
    run_id = run.info.run_id
    try:
        now = int(time.time() * 1000)
        epoch_metrics = [
            Metric(key, float(record[key]), now, int(record["epoch"]))
            for record in history
            for key in ("train_loss", "val_loss", "train_acc", "val_acc", "lr")
            if key in record
        ]
        final_metrics = [Metric(k, float(v), now, 0) for k, v in metrics.items() if isinstance(v, (int, float))]
        all_metrics = epoch_metrics + final_metrics
        for start in range(0, len(all_metrics), _BATCH):
            client.log_batch(run_id, metrics=all_metrics[start : start + _BATCH])
        flat = [Param(k, v) for k, v in flatten(params).items()]
        for start in range(0, len(flat), 100):
            client.log_batch(run_id, params=flat[start : start + 100])
        for path in artifacts:
            client.log_artifact(run_id, str(path))
    except Exception:
        client.set_terminated(run_id, status=RunStatus.to_string(RunStatus.FAILED))
        raise
    client.set_terminated(run_id, status=RunStatus.to_string(RunStatus.FINISHED))
    return TrackedRun(run_id=run_id, experiment_id=experiment_id, url=run_url(uri, experiment_id, run_id))


def _experiment_id(client, uri: str, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=_default_artifact_location(uri))
    except Exception:
        # Another process created it between our lookup and create.
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def _default_artifact_location(uri: str) -> str | None:
    """Artifacts of a SQLite store live beside the database, not in whatever folder the process runs in."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :])
        return (db.parent / "mlartifacts").resolve().as_uri()
    return None
