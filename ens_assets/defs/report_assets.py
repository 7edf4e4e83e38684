"""The morning half of the loop: one report per date, and the sensor that promotes `stage: auto` members."""

import datetime

import dagster as dg

from ens_assets.defs.partitions import checkpoint_key
from ens_assets.defs.resources import MlflowTracking, PlanResource
from ens_assets.plan import Plan

REPORT_START_DATE = "2026-01-01"


def report_partitions(plan: Plan) -> dg.DailyPartitionsDefinition:
    # end_offset=1: today's report exists as a partition this morning, not only tomorrow.
    return dg.DailyPartitionsDefinition(start_date=REPORT_START_DATE, timezone=plan.schedules.timezone, end_offset=1)


def night_events(instance: dg.DagsterInstance, since: float) -> list:
    """Checkpoint partitions the instance ran since `since`: trained, skipped as fresh, or failed (with why)."""
    from ens_assets.morning_report import NightEvent

    after = datetime.datetime.fromtimestamp(since, tz=datetime.timezone.utc) if since else None
    runs = instance.get_runs(filters=dg.RunsFilter(
        job_name="checkpoints_job", created_after=after,
        statuses=[dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE]))
    events = []
    for run in reversed(runs):  # oldest first
        member = run.tags.get("dagster/partition/member", "?")
        fold = run.tags.get("dagster/partition/fold", "?")
        note = run.tags.get("ens_assets/promotion_reason", "")
        if run.status == dg.DagsterRunStatus.FAILURE:
            failures = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
            why = []
            for record in failures:
                data = record.dagster_event.step_failure_data
                user = data.user_failure_data
                error = data.error.cause if data.error is not None and data.error.cause is not None else data.error
                why.append(user.description if user and user.description else
                           (error.message.strip().splitlines()[0] if error else "failed"))
            events.append(NightEvent(member, fold, "failed", note="; ".join(why)[:300], run_id=run.run_id))
            continue
        for record in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION):
            metadata = record.dagster_event.event_specific_data.materialization.metadata
            value = {k: getattr(v, "value", v) for k, v in metadata.items()}
            skipped = bool(value.get("skipped_fresh"))
            events.append(NightEvent(
                member, fold, "skipped_fresh" if skipped else "trained",
                # The checkpoint's metadata says "minutes" (defs.metadata.checkpoint_metadata); older ones "wall_seconds".
                wall_seconds=0.0 if skipped else float(value.get("wall_seconds") or 60.0 * float(value.get("minutes") or 0.0)),
                peak_memory_mb=0.0 if skipped else float(value.get("peak_memory_mb") or 0.0),
                note=note, run_id=run.run_id))
    return events


def build_report_assets(plan: Plan, ensemble_diagnostics: dg.AssetsDefinition) -> list[dg.AssetsDefinition]:
    @dg.asset(group_name="ensemble", deps=[ensemble_diagnostics], partitions_def=report_partitions(plan),
              kinds={"markdown", "mlflow"})
    def morning_report(
        context: dg.AssetExecutionContext, plan_resource: PlanResource, mlflow_tracking: MlflowTracking
    ) -> dg.MaterializeResult:
        """What the night ran, every smoke verdict, the ensemble before/after with intervals, and proposals."""
        from ens_assets.mlflow_store import log_report_run
        from ens_assets.morning_report import build_morning_report, window_start

        plan = plan_resource.load()
        date = context.partition_key
        events = night_events(context.instance, window_start(plan, date))
        report = build_morning_report(plan, date, events)
        run_id = log_report_run(mlflow_tracking.resolve(plan), report)
        ran = report.summary["ran"]
        return dg.MaterializeResult(metadata={
            "report": dg.MetadataValue.md(report.markdown),
            "path": dg.MetadataValue.path(str(report.paths["report"])),
            "proposals": dg.MetadataValue.json(report.proposals),
            "trained": ran["trained"], "skipped_fresh": ran["skipped_fresh"], "failed": ran["failed"],
            "compute_minutes": float(ran["compute_minutes"]),
            "mlflow_run_id": run_id,
        })

    return [morning_report]


def build_promotion_sensor(params_path: str, plan: Plan, jobs: dict[str, dg.JobDefinition]) -> dg.SensorDefinition:
    @dg.run_status_sensor(
        name="promote_auto_members",
        run_status=dg.DagsterRunStatus.SUCCESS,
        monitored_jobs=[jobs["checkpoints_job"]],
        request_job=jobs["checkpoints_job"],
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="A `stage: auto` member whose smoke gate passed is promoted to cv in params.yaml and its folds queued.",
    )
    def promote_auto_members(context: dg.RunStatusSensorContext):
        from ens_assets.promotion import promote_passed_auto_members

        by = f"sensor promote_auto_members after run {context.dagster_run.run_id}"
        decisions = promote_passed_auto_members(params_path, by=by)
        if not decisions:
            return dg.SkipReason("no stage: auto member has a passed smoke gate waiting for promotion")
        return [
            dg.RunRequest(
                run_key=f"promoted:{d['member']}:{fold}:{int(d['unix'])}",
                partition_key=checkpoint_key(d["member"], fold),
                # The decision travels with every run it caused (and the report lists it).
                tags={"ens_assets/promoted": d["member"], "ens_assets/promotion_reason": d["reason"][:200],
                      "ens_assets/promoted_by": "promote_auto_members"},
            )
            for d in decisions for fold in plan.fold_keys
        ]

    return promote_auto_members
