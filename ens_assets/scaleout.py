"""The same definitions on a scale-out engine: Celery workers (a `gpu` queue) or Kubernetes (one pod per step,
GPU requested only by training pods). Instance configs and worker commands are in deploy/.

    defs = build_scaleout_definitions("celery")   # e.g. in a workspace.yaml python_module entry

dagster-celery / dagster-k8s are optional (`pip install -e ".[scaleout]"`) and imported only here, lazily.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import dagster as dg

from ens_assets.defs.build import build_definitions
from ens_assets.defs.training_assets import GPU_POOL, GPU_STEP_OP_TAGS  # noqa: F401 (re-exported)
from ens_assets.scaleout_services import DEFAULT_VISIBILITY_TIMEOUT_S, celery_settings

ENGINES = ("celery", "k8s")
# Inert on the in-process/multiprocess executors; read by the Celery executor (queue) and k8s_job_executor (pod).
# The checkpoints asset declares these op tags itself; inert on the in-process/multiprocess executors.
# Env vars read when present (otherwise the libraries' defaults apply, e.g. DAGSTER_CELERY_BROKER_HOST).
CELERY_BROKER_ENV = "DAGSTER_CELERY_BROKER_URL"
CELERY_BACKEND_ENV = "DAGSTER_CELERY_BACKEND_URL"
# Seconds an unacknowledged step stays with a worker before it is handed to another (see celery_settings).
CELERY_VISIBILITY_TIMEOUT_ENV = "ENS_ASSETS_CELERY_VISIBILITY_TIMEOUT"
K8S_NAMESPACE_ENV = "ENS_ASSETS_K8S_NAMESPACE"


class ScaleoutUnavailable(RuntimeError):
    """The engine's library is not installed."""


def _require(module: str, engine: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ScaleoutUnavailable(
            f"the '{engine}' engine needs {module.replace('_', '-')}, which is not installed ({exc}). "
            'Install the scale-out extra: pip install -e ".[scaleout]"'
        ) from exc


def celery_executor_config() -> dict:
    """Broker and backend from the env when set; the Celery settings every worker also has (deploy/celery-worker.yaml)."""
    config = {
        key: os.environ[env] for key, env in (("broker", CELERY_BROKER_ENV), ("backend", CELERY_BACKEND_ENV)) if os.environ.get(env)
    }
    timeout = int(os.environ.get(CELERY_VISIBILITY_TIMEOUT_ENV) or DEFAULT_VISIBILITY_TIMEOUT_S)
    return {**config, "config_source": celery_settings(timeout)}


def scaleout_executor(engine: Literal["celery", "k8s"]) -> dg.ExecutorDefinition:
    if engine == "celery":
        celery = _require("dagster_celery", engine)
        return celery.celery_executor.configured(celery_executor_config())
    if engine == "k8s":
        k8s = _require("dagster_k8s", engine)
        namespace = os.environ.get(K8S_NAMESPACE_ENV)
        return k8s.k8s_job_executor.configured({"job_namespace": namespace}) if namespace else k8s.k8s_job_executor
    raise ValueError(f"unknown scale-out engine '{engine}'; choose one of {ENGINES}")


def build_scaleout_definitions(
    engine: Literal["celery", "k8s"] = "celery", params_path: str | Path | None = None
) -> dg.Definitions:
    """build_definitions' assets, checks, jobs, schedules and sensors, run by `engine`'s executor, with the
    training step routed to GPU workers (Celery queue `gpu` / a pod requesting nvidia.com/gpu: 1)."""
    return build_definitions(params_path, executor=scaleout_executor(engine))


@dg.definitions
def celery_definitions() -> dg.Definitions:
    """What a workspace loads for the Celery engine (module ens_assets.scaleout, attribute celery_definitions),
    built from $ENS_ASSETS_PARAMS (else the repo's params.yaml) when the code location loads, not on import."""
    return build_scaleout_definitions("celery")
