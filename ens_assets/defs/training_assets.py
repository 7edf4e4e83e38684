"""Training stage: checkpoints per member x fold (gpu pool of one), then OOF and test predictions per member."""


import dagster as dg

from ens_assets.defs.metadata import table_metadata
from ens_assets.defs.partitions import checkpoint_partitions, member_partitions
from ens_assets.defs.resources import MlflowTracking, PlanResource
from ens_assets.defs.upstream_failures import refuse_failed_inputs
from ens_assets.plan import Plan

GPU_POOL = "gpu"
GPU_STEP_OP_TAGS = {
    "dagster-celery/queue": GPU_POOL,
    "dagster-k8s/config": {"container_config": {"resources": {"limits": {"nvidia.com/gpu": "1"}}}},
}


def build_training_assets(plan: Plan, crops: dg.AssetsDefinition, folds: dg.AssetsDefinition) -> list[dg.AssetsDefinition]:
    members = member_partitions(plan)
    collapse_folds = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="member")

    @dg.asset(
        group_name="training",
        partitions_def=checkpoint_partitions(plan),
        pool=GPU_POOL,
        # Crops map to checkpoints by the member's threshold, which Dagster cannot express per key;
        # freshness per partition is decided by the content fingerprint recorded beside each checkpoint.
        deps=[dg.AssetDep(crops, partition_mapping=dg.AllPartitionMapping()), folds],
        kinds={"pytorch", "mlflow"},
        # Ignored by the default executors; route the step to a GPU under celery / k8s (see deploy/).
        op_tags=GPU_STEP_OP_TAGS,
    )
    def checkpoints(
        context: dg.AssetExecutionContext, plan_resource: PlanResource, mlflow_tracking: MlflowTracking
    ) -> dg.MaterializeResult:
        """One timm model trained on a fold's training part of its member's crops (safetensors + sidecar)."""
        refuse_failed_inputs(context)
        from ens_assets.promotion import cv_gate_problem
        from ens_assets.training.run import train_member_fold

        plan = plan_resource.load()
        keys = context.partition_key.keys_by_dimension
        member, fold = keys["member"], keys["fold"]
        problem = cv_gate_problem(plan, member, fold)
        if problem:
            raise dg.Failure(description=problem, allow_retries=False)
        tracking_uri = mlflow_tracking.activate(plan)
        result = train_member_fold(plan, member, fold, log=context.log.info)
        metadata = {
            "member": member,
            "fold": fold,
            "skipped_fresh": dg.MetadataValue.bool(result.skipped),
            "fingerprint": result.fingerprint,
            "path": dg.MetadataValue.path(str(result.checkpoint_dir)),
            **table_metadata({k: v for k, v in result.metrics.items() if isinstance(v, (int, float, str))}),
        }
        if result.mlflow_run_id:
            metadata["mlflow_run_id"] = result.mlflow_run_id
        if result.mlflow_url:
            metadata["mlflow_run"] = dg.MetadataValue.url(result.mlflow_url)
        metadata["mlflow_tracking_uri"] = tracking_uri
        return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(result.fingerprint))

    @dg.asset(
        group_name="training",
        partitions_def=members,
        deps=[dg.AssetDep(checkpoints, partition_mapping=collapse_folds)],
        kinds={"polars"},
    )
    def oof_predictions(context: dg.AssetExecutionContext, plan_resource: PlanResource) -> dg.MaterializeResult:
        """Out-of-fold probabilities of one member: every training image once, from the fold that held it out."""
        refuse_failed_inputs(context)
        from ens_assets.training.run import oof_summary, predict_member_oof

        plan = plan_resource.load()
        frame = predict_member_oof(plan, context.partition_key)
        classes = [c for c in frame.columns if c not in ("image_id", "fold", "label")]
        return dg.MaterializeResult(
            metadata={
                "dagster/row_count": frame.height,
                "path": dg.MetadataValue.path(str(plan.oof_path(context.partition_key))),
                **table_metadata(oof_summary(frame, classes)),
            }
        )

    @dg.asset(
        group_name="training",
        partitions_def=members,
        deps=[dg.AssetDep(checkpoints, partition_mapping=collapse_folds)],
        kinds={"polars"},
    )
    def test_predictions(context: dg.AssetExecutionContext, plan_resource: PlanResource) -> dg.MaterializeResult:
        """Test-split probabilities of one member, averaged over its fold checkpoints."""
        refuse_failed_inputs(context)
        from ens_assets.training.run import predict_member_test

        plan = plan_resource.load()
        frame = predict_member_test(plan, context.partition_key)
        return dg.MaterializeResult(
            metadata={
                "dagster/row_count": frame.height,
                "path": dg.MetadataValue.path(str(plan.test_predictions_path(context.partition_key))),
            }
        )

    return [checkpoints, oof_predictions, test_predictions]
