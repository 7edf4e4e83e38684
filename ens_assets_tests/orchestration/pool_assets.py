"""Tiny assets for the gpu-pool test: three pooled "training" steps and two CPU-only steps that sleep and
record their wall-clock interval, so the test can read back what overlapped.

They live in an importable module because the multiprocess executor rebuilds the job in each step's
subprocess (dg.reconstructable). Run as a script, it executes one job against $DAGSTER_HOME's instance:
    python -m ens_assets_tests.orchestration.pool_assets first_run_job
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import dagster as dg

from ens_assets.atomic import write_json

RECORDS_ENV = "ENS_ASSETS_POOL_RECORDS"
GPU_POOL = "gpu"
GPU_STEP_SECONDS = 1.5
# CPU steps sleep longer than a gpu step so that "ran beside a gpu step" does not hinge on subprocess start jitter.
CPU_STEP_SECONDS = 3.0


def _sleep_and_record(name: str, pool: str | None, seconds: float) -> None:
    start = time.time()
    time.sleep(seconds)
    end = time.time()
    # One file per step: concurrent steps never write the same file.
    write_json(Path(os.environ[RECORDS_ENV]) / f"{name}.json", {"name": name, "pool": pool, "start": start, "end": end, "pid": os.getpid()})


def _pooled_asset(name: str) -> dg.AssetsDefinition:
    @dg.asset(name=name, pool=GPU_POOL)
    def _asset() -> None:
        _sleep_and_record(name, GPU_POOL, GPU_STEP_SECONDS)

    return _asset


def _cpu_asset(name: str) -> dg.AssetsDefinition:
    @dg.asset(name=name)
    def _asset() -> None:
        _sleep_and_record(name, None, CPU_STEP_SECONDS)

    return _asset


GPU_ASSETS = [_pooled_asset(f"gpu_{i}") for i in (1, 2, 3)]
CPU_ASSETS = [_cpu_asset(f"cpu_{i}") for i in (1, 2)]

# The default max_concurrent is the core count (2 here), which would serialise steps for a reason other
# than the pool; allow every step to start so only the pool can hold gpu steps back.
EXECUTOR = dg.multiprocess_executor.configured({"max_concurrent": 5})

JOB_SELECTIONS = {
    "all_steps_job": [*GPU_ASSETS, *CPU_ASSETS],
    "first_run_job": [GPU_ASSETS[0], GPU_ASSETS[1], CPU_ASSETS[0]],
    "second_run_job": [GPU_ASSETS[2], CPU_ASSETS[1]],
}

defs = dg.Definitions(
    assets=[*GPU_ASSETS, *CPU_ASSETS],
    jobs=[dg.define_asset_job(name, selection=dg.AssetSelection.assets(*assets)) for name, assets in JOB_SELECTIONS.items()],
    executor=EXECUTOR,
)


def all_steps_job() -> dg.JobDefinition:
    return defs.resolve_job_def("all_steps_job")


def first_run_job() -> dg.JobDefinition:
    return defs.resolve_job_def("first_run_job")


def second_run_job() -> dg.JobDefinition:
    return defs.resolve_job_def("second_run_job")


def execute(job_name: str, instance: dg.DagsterInstance) -> bool:
    job_fn = {"all_steps_job": all_steps_job, "first_run_job": first_run_job, "second_run_job": second_run_job}[job_name]
    with dg.execute_job(dg.reconstructable(job_fn), instance=instance) as result:
        return result.success


if __name__ == "__main__":
    with dg.DagsterInstance.get() as _instance:
        sys.exit(0 if execute(sys.argv[1], _instance) else 1)
