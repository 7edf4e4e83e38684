"""Jobs and the nightly/morning schedules: train what is missing or stale overnight, refresh the ensemble at dawn."""


import dagster as dg

from ens_assets.defs.partitions import checkpoint_key, checkpoint_partitions, member_partitions
from ens_assets.defs.resources import PlanResource
from ens_assets.plan import Plan
from ens_assets.runs.in_flight import in_flight_partitions


def build_jobs(plan: Plan, assets: dict[str, dg.AssetsDefinition]) -> dict[str, dg.JobDefinition]:
    jobs = {
        "data_job": dg.define_asset_job(
            "data_job",
            selection=dg.AssetSelection.assets(
                assets["source_images"], assets["manifest"], assets["detections"], assets["folds"]
            ),
            description="Source images, manifest, detections and folds (crops run per threshold in crops_job).",
        ),
        "crops_job": dg.define_asset_job(
            "crops_job", selection=dg.AssetSelection.assets(assets["crops"]), partitions_def=assets["crops"].partitions_def
        ),
        "checkpoints_job": dg.define_asset_job(
            "checkpoints_job",
            selection=dg.AssetSelection.assets(assets["checkpoints"]),
            partitions_def=assets["checkpoints"].partitions_def,
            description="Train one member x fold checkpoint (gpu pool of one).",
        ),
        "predictions_job": dg.define_asset_job(
            "predictions_job",
            selection=dg.AssetSelection.assets(assets["oof_predictions"], assets["test_predictions"]),
            partitions_def=assets["oof_predictions"].partitions_def,
        ),
        "ensemble_job": dg.define_asset_job(
            "ensemble_job", selection=dg.AssetSelection.assets(assets["ensemble"], assets["ensemble_diagnostics"])
        ),
    }
    if "difficulty_scores" in assets:
        jobs["difficulty_job"] = dg.define_asset_job(
            "difficulty_job",
            selection=dg.AssetSelection.assets(assets["difficulty_scores"]),
            partitions_def=assets["difficulty_scores"].partitions_def,
        )
    return jobs


def nightly_requests(plan: Plan, in_flight: set[str], night: str = "") -> list[dg.RunRequest]:
    """Checkpoint partitions that are missing or stale, in checkpoint_order (smoke first, then the k folds of
    members that passed the gate, cheapest first), none already queued/running."""
    from ens_assets.checkpoint_order import checkpoint_order, read_checkpoint_state

    requests, partitions = [], checkpoint_partitions(plan)
    for rank, (member, fold) in enumerate(checkpoint_order(plan, read_checkpoint_state(plan)).runs):
        key = checkpoint_key(member, fold)
        if str(key) in in_flight:
            continue
        requests.append(
            dg.RunRequest(
                # One request per partition per night; a partition that failed is asked for again tomorrow.
                run_key=f"{night}:{key}",
                partition_key=key,
                # Lower-cost work first when the queue drains (higher priority runs earlier).
                tags={"dagster/priority": str(-rank), **_partition_tags(partitions, key), "ens_assets/member": member, "ens_assets/fold": fold},
            )
        )
    return requests


def _tick_date(context: dg.ScheduleEvaluationContext) -> str:
    """The tick's date: run keys carry it, so each partition is asked for at most once per tick."""
    return context.scheduled_execution_time.date().isoformat() if context.scheduled_execution_time else ""


def _partition_tags(partitions: dg.PartitionsDefinition, key) -> dict[str, str]:
    """The partition's run tags from the start: the UI's tick preview shows a request's own tags, before
    Dagster adds the partition's, so without them every request reads as the same bare job name.
    All of them, as Dagster writes them: a request that already carries `dagster/partition` counts as resolved,
    so Dagster adds nothing, and a member x fold run without its per-dimension tags hands its step a plain
    string key (every nightly run the daemon launched failed on that)."""
    return dict(partitions.get_tags_for_partition_key(key))


def build_schedules(plan: Plan, jobs: dict[str, dg.JobDefinition]) -> list[dg.ScheduleDefinition]:
    tz = plan.schedules.timezone
    # schedules.enabled in params.yaml: whether they tick under `make ui` (dagster dev runs the daemon).
    status = dg.DefaultScheduleStatus.RUNNING if plan.schedules.enabled else dg.DefaultScheduleStatus.STOPPED

    @dg.schedule(
        name="nightly_training",
        cron_schedule=plan.schedules.nightly_cron,
        execution_timezone=tz,
        job=jobs["checkpoints_job"],
        default_status=status,
        description="Overnight: train missing or stale checkpoints of promoted members, cheapest first.",
    )
    def nightly_training(context: dg.ScheduleEvaluationContext, plan_resource: PlanResource):
        plan_now = plan_resource.load()
        in_flight = in_flight_partitions(context.instance, "checkpoints_job")
        requests = nightly_requests(plan_now, in_flight, _tick_date(context))
        if not requests:
            return dg.SkipReason("every checkpoint of every promoted member is fresh, queued or running")
        return requests

    @dg.schedule(
        name="morning_predictions",
        cron_schedule=plan.schedules.morning_cron,
        execution_timezone=tz,
        job=jobs["predictions_job"],
        default_status=status,
        description="Morning: refresh OOF and test predictions of every member (the ensemble follows them).",
    )
    def morning_predictions(context: dg.ScheduleEvaluationContext, plan_resource: PlanResource):
        plan_now = plan_resource.load()
        from ens_assets.training.checkpoint_store import CheckpointStore

        store = CheckpointStore(plan_now)
        busy = in_flight_partitions(context.instance, "predictions_job")
        morning = _tick_date(context)
        members = member_partitions(plan_now)
        requests = [
            dg.RunRequest(run_key=f"{morning}:{m}", partition_key=m, tags={**_partition_tags(members, m), "ens_assets/member": m})
            for m in plan_now.member_keys
            if m not in busy and store.complete(m)
        ]
        return requests or dg.SkipReason("no member has a complete set of checkpoints that is not already being predicted")

    return [nightly_training, morning_predictions]


def build_sensors(jobs: dict[str, dg.JobDefinition]) -> list[dg.SensorDefinition]:
    @dg.run_status_sensor(
        name="ensemble_after_predictions",
        run_status=dg.DagsterRunStatus.SUCCESS,
        monitored_jobs=[jobs["predictions_job"]],
        request_job=jobs["ensemble_job"],
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Refit the ensemble and its diagnostics once the last queued prediction run has finished.",
    )
    def ensemble_after_predictions(context: dg.RunStatusSensorContext):
        if in_flight_partitions(context.instance, "predictions_job"):
            return dg.SkipReason("prediction runs still in flight; the last one to finish triggers the ensemble")
        return dg.RunRequest(run_key=f"ensemble-after-{context.dagster_run.run_id}")

    return [ensemble_after_predictions]
