"""Asset checks: folds keep each group (site/sequence/burst) in one fold, every image is accounted for, smoke gates the k-fold runs, OOF coverage."""


import json

import polars as pl

import dagster as dg

from ens_assets.defs.partitions import checkpoint_partitions, member_partitions, threshold_partitions
from ens_assets.defs.resources import PlanResource
from ens_assets.plan import SMOKE_FOLD, Plan


def build_asset_checks(plan: Plan, assets: dict[str, dg.AssetsDefinition]) -> list[dg.AssetChecksDefinition]:
    @dg.asset_check(asset=assets["folds"], blocking=True)
    def folds_keep_groups_together(plan_resource: PlanResource) -> dg.AssetCheckResult:
        """No group (site, sequence, burst: whatever folds.group_by chose) in two folds (ERROR); every class
        in every fold's validation part (WARN only)."""
        from ens_assets.data.folds import check_folds

        plan = plan_resource.load()
        report = check_folds(pl.read_parquet(plan.folds_path))
        grouping = json.loads(plan.folds_summary_path.read_text()) if plan.folds_summary_path.is_file() else {}
        group_by = grouping.get("group_by", "site")
        severity = dg.AssetCheckSeverity.ERROR if report.groups_in_several_folds else dg.AssetCheckSeverity.WARN
        return dg.AssetCheckResult(
            passed=report.ok and not report.classes_missing,
            severity=severity,
            description="; ".join(report.warnings) or f"every {group_by} group in one fold; every class in every fold",
            metadata={
                "group_by": group_by,
                "n_groups": grouping.get("n_groups", 0),
                "groups_in_several_folds": dg.MetadataValue.json(report.groups_in_several_folds[:50]),
                "classes_missing": dg.MetadataValue.json({str(k): v for k, v in report.classes_missing.items()}),
            },
        )

    @dg.asset_check(asset=assets["crops"], partitions_def=threshold_partitions(plan), blocking=True)
    def every_image_accounted_for(context: dg.AssetCheckExecutionContext, plan_resource: PlanResource) -> dg.AssetCheckResult:
        """Each input image is used (crop), fallen back (full frame) or quarantined (with a reason)."""
        plan = plan_resource.load()
        summary = json.loads((plan.crops_dir(context.partition_key) / "summary.json").read_text())
        accounted = summary["n_used"] + summary["n_fallback_only"] + summary["n_quarantined"]
        return dg.AssetCheckResult(
            passed=accounted == summary["n_images"],
            metadata={k: summary[k] for k in ("n_images", "n_used", "n_fallback_only", "n_quarantined")},
        )

    @dg.asset_check(asset=assets["checkpoints"], partitions_def=checkpoint_partitions(plan), blocking=True)
    def smoke_gate(context: dg.AssetCheckExecutionContext, plan_resource: PlanResource) -> dg.AssetCheckResult:
        """Loss went down, accuracy clearly above chance, no NaN, every class predicted: else no k-fold runs."""
        from ens_assets.promotion import read_verdict

        plan = plan_resource.load()
        keys = context.partition_key.keys_by_dimension
        verdict = read_verdict(plan.checkpoint_dir(keys["member"], keys["fold"]))
        if verdict is None:
            return dg.AssetCheckResult(passed=False, description="checkpoint has no verdict: retrain it")
        is_smoke = keys["fold"] == SMOKE_FOLD
        return dg.AssetCheckResult(
            passed=verdict.passed,
            # A failing smoke run blocks its member's cv runs; a weak cv fold is reported, not blocked.
            severity=dg.AssetCheckSeverity.ERROR if is_smoke else dg.AssetCheckSeverity.WARN,
            description="; ".join(verdict.reasons) or "passed",
            metadata={**{k: dg.MetadataValue.bool(v) for k, v in verdict.checks.items()}, **verdict.metrics},
        )

    @dg.asset_check(asset=assets["oof_predictions"], partitions_def=member_partitions(plan))
    def oof_covers_each_training_image_once(
        context: dg.AssetCheckExecutionContext, plan_resource: PlanResource
    ) -> dg.AssetCheckResult:
        plan = plan_resource.load()
        member = plan.member(context.partition_key)
        oof = pl.read_parquet(plan.oof_path(member.key))
        # Quarantined images have no crop, so they cannot have a prediction; the rest must, once.
        cropped = pl.read_parquet(plan.crops_dir(member.threshold) / "index.parquet").select("image_id").unique()
        folds = pl.read_parquet(plan.folds_path).join(cropped, on="image_id")
        expected = folds if member.stage == "cv" else folds.filter(pl.col("fold") == 0)
        duplicated = oof.height - oof["image_id"].n_unique()
        missing = expected.join(oof, on="image_id", how="anti").height
        extra = oof.join(expected, on="image_id", how="anti").height
        return dg.AssetCheckResult(
            passed=duplicated == 0 and missing == 0 and extra == 0,
            metadata={"duplicated": duplicated, "missing": missing, "extra": extra, "expected": expected.height},
        )

    return [folds_keep_groups_together, every_image_accounted_for, smoke_gate, oof_covers_each_training_image_once]
