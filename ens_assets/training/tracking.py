"""MLflow tracking of checkpoint runs: one MLflow run per (member, fold) checkpoint partition.

Uses the mlflow client directly (dagster-mlflow's resource is legacy). The store is
$MLFLOW_TRACKING_URI when set, else a SQLite file beside params.yaml (plan.tracking.default_store).
Links point at a page a browser can open: the server's own address for an http(s) store, else the MLflow
UI that serves the file store (plan.tracking.ui_url, what `make mlflow-ui` starts).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ens_assets import mlflow_store
from ens_assets.plan import Plan

_BATCH = 900  # MLflow accepts at most 1000 metrics / 100 params per log_batch call
EPOCH_KEYS = ("train_loss", "val_loss", "train_acc", "val_acc", "lr")


@dataclass(frozen=True)
class TrackedRun:
    run_id: str
    experiment_id: str
    url: str  # the run's page in the MLflow UI (http), see run_url


def tracking_uri(plan: Plan) -> str:
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{plan.path(plan.tracking.default_store)}"


def ui_address(plan: Plan, uri: str | None = None) -> str:
    """The MLflow UI serving the plan's store: the tracking server itself, else tracking.ui_url."""
    return mlflow_store.ui_address(uri or tracking_uri(plan), plan.tracking.ui_url)


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
    started_unix: float | None = None,
) -> TrackedRun:
    """Create a finished MLflow run: tags, flattened params, per-epoch metrics (step = epoch, timestamped
    when the epoch ended), final metrics at the last epoch's step, and artifact files.

    started_unix is when training began: the run's start time, so its duration is the training's, not the
    logging's. Returns its ids and URL.
    """
    import mlflow
    from mlflow.entities import Param, RunStatus

    uri = tracking_uri(plan)
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment_id = mlflow_store.experiment_id(client, uri, plan.tracking.experiment)
    now_ms = int(time.time() * 1000)
    start_ms = int(started_unix * 1000) if started_unix is not None else now_ms
    run = client.create_run(
        experiment_id, start_time=start_ms, tags={k: str(v) for k, v in tags.items()}, run_name=run_name
    )
    run_id = run.info.run_id
    try:
        all_metrics = epoch_metrics(history, metrics, start_ms, now_ms)
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
    client.set_terminated(run_id, status=RunStatus.to_string(RunStatus.FINISHED), end_time=int(time.time() * 1000))
    return TrackedRun(run_id=run_id, experiment_id=experiment_id, url=mlflow_store.run_url(ui_address(plan, uri), experiment_id, run_id))


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
