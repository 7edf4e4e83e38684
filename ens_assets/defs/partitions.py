"""Partition definitions derived from the plan: thresholds, members, and member x fold."""


import dagster as dg

from ens_assets.plan import SMOKE_FOLD, Plan


def threshold_partitions(plan: Plan) -> dg.StaticPartitionsDefinition:
    return dg.StaticPartitionsDefinition(plan.threshold_keys)


def member_partitions(plan: Plan) -> dg.StaticPartitionsDefinition:
    return dg.StaticPartitionsDefinition(plan.member_keys)


def checkpoint_partitions(plan: Plan) -> dg.MultiPartitionsDefinition:
    """member x fold, where fold 'smoke' is the short fold-0 run every member must pass first."""
    return dg.MultiPartitionsDefinition(
        {
            "member": member_partitions(plan),
            "fold": dg.StaticPartitionsDefinition([SMOKE_FOLD, *plan.fold_keys]),
        }
    )


def checkpoint_key(member: str, fold: str) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({"member": member, "fold": fold})
