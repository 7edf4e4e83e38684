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
        import numpy as np
        import polars as pl

        from ens_assets.atomic import write_parquet
        from ens_assets.ensemble.plots import png_markdown
        from ens_assets.subsets.difficulty import score_distribution_png
        from ens_assets.subsets.member_training import member_difficulty_table

        plan = plan_resource.load()
        member = context.partition_key
        table = member_difficulty_table({f: plan.checkpoint_dir(member, f) for f in plan.checkpoint_folds(member)})
        if table.is_empty():
            raise dg.Failure(description=f"{member} has no scored checkpoint yet: materialize its checkpoints first")
        write_parquet(plan.difficulty_path(member), table)
        classes = sorted(table["label"].unique().to_list())
        per_class = table.group_by("label").agg(
            pl.len().alias("images"), pl.col("el2n").mean(), pl.col("grand").mean(), pl.col("el2n").quantile(0.9).alias("el2n_p90")
        ).sort("el2n", descending=True)
        labels = np.array([classes.index(c) for c in table["label"]])
        png = score_distribution_png(table.with_row_index("index").select("index", "el2n", "grand"), classes, labels)
        return dg.MaterializeResult(
            metadata={
                "path": dg.MetadataValue.path(str(plan.difficulty_path(member))),
                "dagster/row_count": table.height,
                "per_class": dg.MetadataValue.md(frame_markdown(per_class)),
                "distributions": dg.MetadataValue.md(png_markdown(png, "difficulty per class")),
            }
        )

    return [difficulty_scores]
