"""Inference stage: one `predictions` partition per batch folder in the inbox, added and run by `inbox_sensor`."""


import dagster as dg

from ens_assets.defs.metadata import frame_markdown
from ens_assets.defs.resources import PlanResource
from ens_assets.defs.training_assets import GPU_POOL, GPU_STEP_OP_TAGS
from ens_assets.plan import Plan

INBOX_PARTITIONS = "inbox_batches"
inbox_batches = dg.DynamicPartitionsDefinition(name=INBOX_PARTITIONS)


def build_inference_assets(ensemble: dg.AssetsDefinition) -> list[dg.AssetsDefinition]:
    @dg.asset(
        group_name="inference",
        partitions_def=inbox_batches,
        deps=[ensemble],
        pool=GPU_POOL,
        op_tags=GPU_STEP_OP_TAGS,
        kinds={"pytorch", "csv"},
    )
    def predictions(context: dg.AssetExecutionContext, plan_resource: PlanResource) -> dg.MaterializeResult:
        """The fitted ensemble on one inbox batch: predictions.csv and a MegaDetector JSON with classifications."""
        from ens_assets.inference.inbox import predict_inbox_batch
        from ens_assets.inference.outputs import least_confident

        plan = plan_resource.load()
        outputs = predict_inbox_batch(plan, context.partition_key)
        summary = outputs.summary
        for note in summary["notes"]:
            context.log.info(note)
        for row in summary["quarantined"]:
            context.log.warning(f"unreadable: {row['image']}: {row['reason']}")
        return dg.MaterializeResult(
            metadata={
                "images": summary["images"],
                "predicted": summary["predicted"],
                "fallbacks": summary["fallbacks"],
                "quarantined": len(summary["quarantined"]),
                "images_per_second": summary["images_per_second"],
                "class_counts": dg.MetadataValue.json(summary["class_counts"]),
                "least_confident": dg.MetadataValue.md(frame_markdown(least_confident(outputs.table), float_digits=3)),
                "unreadable": dg.MetadataValue.json(summary["quarantined"]),
                "ensemble_version": summary["ensemble"]["version"],
                "notes": dg.MetadataValue.json(summary["notes"]),
                "predictions_csv": dg.MetadataValue.path(str(outputs.paths["predictions"])),
                "megadetector_json": dg.MetadataValue.path(str(outputs.paths["megadetector"])),
            }
        )

    return [predictions]


def build_inference_job(predictions: dg.AssetsDefinition) -> dg.JobDefinition:
    return dg.define_asset_job("batch_predictions_job", selection=dg.AssetSelection.assets(predictions),
                               partitions_def=inbox_batches,
                               description="Classify one inbox batch folder with the fitted ensemble.")


def build_inbox_sensor(plan: Plan, job: dg.JobDefinition) -> dg.SensorDefinition:
    @dg.sensor(
        name="inbox_sensor",
        job=job,
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="A complete new (or changed) batch folder in inference.inbox becomes a predictions partition and a run.",
    )
    def inbox_sensor(context: dg.SensorEvaluationContext):
        from ens_assets.inference.inbox import inbox_batches as scan_inbox

        states, problems = scan_inbox(plan)
        for problem in problems:
            context.log.warning(problem)
        complete = [s for s in states if s.complete]
        if not complete:
            waiting = "; ".join(f"{s.name}: {s.why}" for s in states) or "no batch folders"
            return dg.SkipReason(f"no complete batch in the inbox ({waiting})")
        known = set(context.instance.get_dynamic_partitions(INBOX_PARTITIONS))
        new = [s.name for s in complete if s.name not in known]
        # The run key holds the batch's fingerprint: an unchanged batch is never run twice, a changed one is rerun.
        return dg.SensorResult(
            run_requests=[dg.RunRequest(run_key=f"{s.name}:{s.fingerprint}", partition_key=s.name,
                                        tags={"ens_assets/batch_files": str(s.files), "ens_assets/complete": s.why})
                          for s in complete],
            dynamic_partitions_requests=[inbox_batches.build_add_request(new)] if new else [],
        )

    return inbox_sensor
