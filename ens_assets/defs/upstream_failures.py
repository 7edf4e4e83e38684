"""No asset reads an input whose last materialization attempt failed: the file on disk is then older than what
the user last asked for (e.g. crops built from the previous manifest after a bad labels row failed the data
stage), so the step fails saying which input, which run and what to rematerialize."""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg

_FAILED = (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)
_RECENT = 500  # newest planned/materialized events looked at per input (per partition, the newest one counts)


@dataclass(frozen=True)
class FailedInput:
    asset: str
    partition: str | None
    run_id: str

    def reason(self) -> str:
        which = self.asset + (f" partition {self.partition}" if self.partition else "")
        return (
            f"its input {which} failed to materialize in run {self.run_id[:8]} and was not rebuilt since, so what is on "
            f"disk is older than that attempt; fix that failure and rematerialize {self.asset} first"
        )


def failed_inputs(instance: dg.DagsterInstance, key: dg.AssetKey, partitions: list[str] | None) -> list[FailedInput]:
    """Partitions of `key` (all of them when None) whose newest planned materialization belongs to a failed or
    cancelled run and was not followed by a materialization."""
    records_filter = dg.AssetRecordsFilter(asset_key=key, asset_partitions=partitions)
    planned = _newest_per_partition(instance.fetch_planned_materializations(records_filter, limit=_RECENT).records)
    if not planned:
        return []
    materialized = _newest_per_partition(instance.fetch_materializations(records_filter, limit=_RECENT).records)
    failed = []
    for partition, record in planned.items():
        done = materialized.get(partition)
        if done is not None and done.storage_id > record.storage_id:
            continue
        run = instance.get_run_by_id(record.run_id)
        if run is not None and run.status in _FAILED:
            failed.append(FailedInput(key.to_user_string(), partition, record.run_id))
    return failed


def _newest_per_partition(records) -> dict:
    newest: dict = {}
    for record in records:  # newest first
        newest.setdefault(record.partition_key, record)
    return newest


def refuse_failed_inputs(context: dg.AssetExecutionContext) -> None:
    """Raise a Failure naming the input when any upstream partition this step reads last failed to materialize."""
    assets_def = context.assets_def
    problems: list[FailedInput] = []
    for input_name, key in assets_def.keys_by_input_name.items():
        if key in assets_def.keys:
            continue
        partitions = None
        if _is_partitioned(context, key):
            try:
                partitions = list(context.asset_partition_keys_for_input(input_name))
            except Exception:  # a mapping that cannot be resolved here: look at every partition of the input
                partitions = None
        problems += failed_inputs(context.instance, key, partitions)
    if problems:
        raise dg.Failure(
            description=f"{problems[0].reason()}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""),
            metadata={"failed_inputs": dg.MetadataValue.json([p.__dict__ for p in problems])},
            allow_retries=False,
        )


def _is_partitioned(context: dg.AssetExecutionContext, key: dg.AssetKey) -> bool:
    try:
        return context.job_def.asset_layer.asset_graph.get(key).partitions_def is not None
    except Exception:
        return False
