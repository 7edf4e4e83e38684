"""Difficulty scores of subset-ensemble members (Ro et al.): per training image EL2N and GraNd, per class plots."""

import dagster as dg

from ens_assets.defs.metadata import frame_markdown
from ens_assets.defs.resources import PlanResource
from ens_assets.defs.upstream_failures import refuse_failed_inputs
from ens_assets.plan import Plan


def build_subset_assets(plan: Plan, checkpoints: dg.AssetsDefinition) -> list[dg.AssetsDefinition]:
    if not plan.subset_member_keys:
        return []

    @dg.asset(
        group_name="training",
        partitions_def=dg.StaticPartitionsDefinition(plan.subset_member_keys),
        # Scores are computed by short seeded runs inside each checkpoint partition of the member (and cached
        # there, so retraining with new k/n/phases reuses them); this asset gathers them per image.
        deps=[dg.AssetDep(checkpoints, partition_mapping=dg.AllPartitionMapping())],
        kinds={"polars", "pytorch"},
    )
    def difficulty_scores(context: dg.AssetExecutionContext, plan_resource: PlanResource) -> dg.MaterializeResult:
        """EL2N and GraNd per training image of one subset member, one row per image and checkpoint partition."""
        refuse_failed_inputs(context)
        from ens_assets.ensemble.plots import png_markdown
        from ens_assets.subsets.difficulty_report import member_difficulty_report

        try:
            report = member_difficulty_report(plan_resource.load(), context.partition_key)
        except FileNotFoundError as exc:
            raise dg.Failure(description=str(exc)) from None
        return dg.MaterializeResult(
            metadata={
                "path": dg.MetadataValue.path(str(report.path)),
                "dagster/row_count": report.table.height,
                "per_class": dg.MetadataValue.md(frame_markdown(report.per_class)),
                "distributions": dg.MetadataValue.md(png_markdown(report.distributions_png, "difficulty per class")),
            }
        )

    return [difficulty_scores]
