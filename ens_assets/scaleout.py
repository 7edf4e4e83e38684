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

from ens_assets.definitions import build_definitions
from ens_assets.defs.training_assets import GPU_POOL

ENGINES = ("celery", "k8s")
CELERY_QUEUE_TAG = "dagster-celery/queue"
K8S_CONFIG_TAG = "dagster-k8s/config"
GPU_STEP_ASSET = "checkpoints"
# Inert on the in-process/multiprocess executors; read by the Celery executor (queue) and k8s_job_executor (pod).
GPU_STEP_OP_TAGS = {
    CELERY_QUEUE_TAG: GPU_POOL,
    K8S_CONFIG_TAG: {"container_config": {"resources": {"limits": {"nvidia.com/gpu": "1"}}}},
}
# Env vars read when present (otherwise the libraries' defaults apply, e.g. DAGSTER_CELERY_BROKER_HOST).
CELERY_BROKER_ENV = "DAGSTER_CELERY_BROKER_URL"
CELERY_BACKEND_ENV = "DAGSTER_CELERY_BACKEND_URL"
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


def scaleout_executor(engine: Literal["celery", "k8s"]) -> dg.ExecutorDefinition:
    if engine == "celery":
        celery = _require("dagster_celery", engine)
        config = {
            key: os.environ[env] for key, env in (("broker", CELERY_BROKER_ENV), ("backend", CELERY_BACKEND_ENV)) if os.environ.get(env)
        }
        return celery.celery_executor.configured(config) if config else celery.celery_executor
    if engine == "k8s":
        k8s = _require("dagster_k8s", engine)
        namespace = os.environ.get(K8S_NAMESPACE_ENV)
        return k8s.k8s_job_executor.configured({"job_namespace": namespace}) if namespace else k8s.k8s_job_executor
    raise ValueError(f"unknown scale-out engine '{engine}'; choose one of {ENGINES}")


def _with_op_tags(asset: dg.AssetsDefinition, tags: dict) -> dg.AssetsDefinition:
    """A copy of the asset whose op carries extra tags (Dagster has no public re-tag for an existing asset's op).

    Unneeded once the checkpoints asset declares op_tags=GPU_STEP_OP_TAGS itself (then this returns it as is).
    """
    op = asset.op
    if all(key in op.tags for key in tags):
        return asset
    tagged = dg.OpDefinition(
        compute_fn=op.compute_fn,
        name=op.name,
        ins={d.name: dg.In.from_definition(d) for d in op.input_defs},
        outs={d.name: dg.Out.from_definition(d) for d in op.output_defs},
        config_schema=op.config_schema,
        description=op.description,
        tags={**tags, **op.tags},
        required_resource_keys=op.required_resource_keys,
        code_version=op.version,
        retry_policy=op.retry_policy,
        pool=op.pool,
    )
    return dg.AssetsDefinition.dagster_internal_init(**{**asset.get_attributes_dict(), "node_def": tagged})


def build_scaleout_definitions(
    engine: Literal["celery", "k8s"] = "celery", params_path: str | Path | None = None
) -> dg.Definitions:
    """build_definitions' assets, checks, jobs, schedules and sensors, run by `engine`'s executor, with the
    training step routed to GPU workers (Celery queue `gpu` / a pod requesting nvidia.com/gpu: 1)."""
    executor = scaleout_executor(engine)
    base = build_definitions(params_path, executor=executor)
    assets = [
        _with_op_tags(a, GPU_STEP_OP_TAGS) if isinstance(a, dg.AssetsDefinition) and a.key.to_user_string() == GPU_STEP_ASSET else a
        for a in base.assets or []
    ]
    return dg.Definitions(
        assets=assets,
        asset_checks=base.asset_checks,
        jobs=base.jobs,
        schedules=base.schedules,
        sensors=base.sensors,
        resources=base.resources,
        executor=executor,
    )
