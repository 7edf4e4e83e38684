"""Asset checks: folds keep each group (site/sequence/burst) in one fold, every image is accounted for, OOF
coverage; and the smoke gate's spec and result, which the checkpoints asset evaluates on smoke partitions."""

import dagster as dg

from ens_assets.defs.partitions import checkpoint_partitions, member_partitions, threshold_partitions
from ens_assets.defs.resources import PlanResource
from ens_assets.plan import Plan


SMOKE_GATE = "smoke_gate"


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
    """The check result of a smoke checkpoint's stored verdict (training.smoke_gate.SmokeVerdict, None: no verdict)."""
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
        from ens_assets.data.folds import check_folds, read_folds, read_grouping

        plan = plan_resource.load()
        report = check_folds(read_folds(plan))
        grouping = read_grouping(plan)
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
        from dataclasses import asdict

        from ens_assets.training.checkpoint_store import CheckpointStore

        accounting = CheckpointStore(plan_resource.load()).crop_accounting(context.partition_key)
        return dg.AssetCheckResult(passed=accounting.complete, metadata=asdict(accounting))

    @dg.asset_check(asset=assets["oof_predictions"], partitions_def=member_partitions(plan))
    def oof_covers_each_training_image_once(
        context: dg.AssetCheckExecutionContext, plan_resource: PlanResource
    ) -> dg.AssetCheckResult:
        from dataclasses import asdict

        from ens_assets.member_outputs import oof_coverage

        coverage = oof_coverage(plan_resource.load(), context.partition_key)
        return dg.AssetCheckResult(passed=coverage.ok, description=f"covers {coverage.coverage}", metadata=asdict(coverage))

    return [folds_keep_groups_together, every_image_accounted_for, oof_covers_each_training_image_once]
