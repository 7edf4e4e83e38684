"""Runs that are queued or running: what the nightly schedule must not request again and the watchdog reaps."""

from __future__ import annotations

import dagster as dg

IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def in_flight_partitions(instance: dg.DagsterInstance, job_name: str) -> set[str]:
    """Partition keys of the job's runs that are queued or running."""
    runs = instance.get_runs(filters=dg.RunsFilter(job_name=job_name, statuses=IN_FLIGHT))
    return {run.tags["dagster/partition"] for run in runs if "dagster/partition" in run.tags}
