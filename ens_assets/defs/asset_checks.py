"""Asset checks: folds keep each group (site/sequence/burst) in one fold, every image is accounted for, OOF
coverage; and the smoke gate's spec and result, which the checkpoints asset evaluates on smoke partitions."""


import json

import polars as pl

import dagster as dg

from ens_assets.defs.partitions import checkpoint_partitions, member_partitions, threshold_partitions
from ens_assets.defs.resources import PlanResource
from ens_assets.plan import Plan


SMOKE_GATE = "smoke_gate"
SMOKE_ONLY_OOF = "smoke only: fold 0's validation images, from the short smoke run (not an ensemble input)"


def smoke_gate_spec(plan: Plan) -> dg.AssetCheckSpec:
    """The smoke gate, evaluated by the checkpoints asset itself on each member's smoke partition only
    (a k-fold partition has nothing to gate). Not blocking: a failed gate is a verdict about a member, so its
    run succeeds and the check reads as failed on that partition; k-fold runs are refused by the gate itself
    (promotion.cv_gate_problem), which the nightly schedule and the checkpoints asset both ask."""
    return dg.AssetCheckSpec(
        SMOKE_GATE,
        asset="checkpoints",
        partitions_def=checkpoint_partitions(plan),
        description="Smoke partitions only: loss went down, accuracy clearly above chance, no NaN, every class "
        "predicted; a member that fails never runs on k folds.",
    )


def smoke_gate_result(verdict) -> dg.AssetCheckResult:
    """The check result of a smoke checkpoint's stored verdict (promotion.SmokeVerdict, None: no verdict)."""
    if verdict is None:
        return dg.AssetCheckResult(check_name=SMOKE_GATE, passed=False, description="checkpoint has no verdict: retrain it")
    return dg.AssetCheckResult(
        check_name=SMOKE_GATE,
        passed=verdict.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description="; ".join(verdict.reasons) or "passed: " + ", ".join(verdict.checks),
        metadata={
            "verdict": "passed" if verdict.passed else "failed",
            "reasons": dg.MetadataValue.md("\n".join(f"- {r}" for r in verdict.reasons) or "none"),
            **{k: dg.MetadataValue.bool(v) for k, v in verdict.checks.items()},
            **verdict.metrics,
        },
    )


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
        coverage = "every training image once (k folds)" if member.stage == "cv" else SMOKE_ONLY_OOF
        return dg.AssetCheckResult(
            passed=duplicated == 0 and missing == 0 and extra == 0,
            description=f"covers {coverage}",
            metadata={"coverage": coverage, "duplicated": duplicated, "missing": missing, "extra": extra,
                      "expected": expected.height},
        )

    return [folds_keep_groups_together, every_image_accounted_for, oof_covers_each_training_image_once]
