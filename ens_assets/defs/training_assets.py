"""Training stage: checkpoints per member x fold (gpu pool of one), then OOF and test predictions per member."""


import polars as pl

import dagster as dg

from ens_assets.defs.asset_checks import smoke_gate_result, smoke_gate_spec
from ens_assets.defs.metadata import (
    checkpoint_metadata,
    frame_markdown,
    mlflow_run_link,
    table_metadata,
    verdict_metadata,
    work_path,
    workdir_metadata,
)
from ens_assets.defs.partitions import checkpoint_key, checkpoint_partitions, member_partitions
from ens_assets.defs.resources import MlflowTracking, PlanResource
from ens_assets.defs.upstream_failures import refuse_failed_inputs
from ens_assets.plan import SMOKE_FOLD, Plan

GPU_POOL = "gpu"
GPU_STEP_OP_TAGS = {
    "dagster-celery/queue": GPU_POOL,
    "dagster-k8s/config": {"container_config": {"resources": {"limits": {"nvidia.com/gpu": "1"}}}},
}


def build_training_assets(plan: Plan, crops: dg.AssetsDefinition, folds: dg.AssetsDefinition) -> list[dg.AssetsDefinition]:
    members = member_partitions(plan)
    collapse_folds = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="member")
    checkpoints = _checkpoints_asset(plan, crops, folds)
    oof_predictions = _oof_predictions_asset(members, checkpoints, collapse_folds)
    test_predictions = _test_predictions_asset(members, checkpoints, collapse_folds)
    return [checkpoints, oof_predictions, test_predictions]


def _checkpoints_asset(plan: Plan, crops: dg.AssetsDefinition, folds: dg.AssetsDefinition) -> dg.AssetsDefinition:
    @dg.multi_asset(
        name="checkpoints",
        specs=[
            dg.AssetSpec(
                "checkpoints",
                group_name="training",
                # Crops map to checkpoints by the member's threshold, which Dagster cannot express per key;
                # freshness per partition is decided by the content fingerprint recorded beside each checkpoint.
                deps=[dg.AssetDep(crops, partition_mapping=dg.AllPartitionMapping()), folds],
                kinds={"pytorch", "mlflow"},
                description="One timm model trained on a fold's training part of its member's crops "
                "(safetensors + sidecar); fold 'smoke' is the short run every member must pass first.",
            )
        ],
        partitions_def=checkpoint_partitions(plan),
        # The smoke gate is evaluated here, on smoke partitions only: can_subset lets k-fold partitions
        # leave it unevaluated instead of reporting a gate that means nothing there.
        check_specs=[smoke_gate_spec(plan)],
        can_subset=True,
        pool=GPU_POOL,
        # Ignored by the default executors; route the step to a GPU under celery / k8s (see deploy/).
        op_tags=GPU_STEP_OP_TAGS,
    )
    def checkpoints(
        context: dg.AssetExecutionContext, plan_resource: PlanResource, mlflow_tracking: MlflowTracking
    ):
        """Train (or skip when fresh) one member x fold checkpoint; on smoke partitions, judge the smoke gate."""
        refuse_failed_inputs(context)
        from ens_assets.ensemble.plots import png_markdown
        from ens_assets.member_runs import train_member_fold
        from ens_assets.promotion import cv_gate_problem
        from ens_assets.training.checkpoint_store import CheckpointStore

        plan = plan_resource.load()
        store = CheckpointStore(plan)
        keys = context.partition_key.keys_by_dimension
        member, fold = keys["member"], keys["fold"]
        problem = cv_gate_problem(plan, member, fold)
        if problem:
            raise dg.Failure(description=problem, allow_retries=False)
        tracking = mlflow_tracking.resolve(plan)
        result = train_member_fold(plan, member, fold, log=context.log.info, tracking=tracking)
        sidecar = store.sidecar(member, fold) or {}
        smoke = fold == SMOKE_FOLD
        verdict = store.verdict(member) if smoke else None
        gate = verdict_metadata(verdict) if smoke else {}
        metadata = {
            "member": member,
            "fold": fold,
            # A smoke partition leads with its verdict (passed, or FAILED and why); its checks table comes last.
            **({"smoke_gate": gate.pop("smoke_gate")} if smoke else {}),
            **checkpoint_metadata(result.metrics, sidecar.get("classes", [])),
            "skipped_fresh": dg.MetadataValue.bool(result.skipped),
            "fingerprint": result.fingerprint,
            **_where_and_links(plan, result),
        }
        confusion_png = store.confusion_png(member, fold)
        if confusion_png is not None:
            metadata["confusion_matrix"] = dg.MetadataValue.md(png_markdown(confusion_png, "confusion matrix"))
        check_results = []
        if smoke:
            metadata.update(gate)
            check_results.append(smoke_gate_result(verdict))
            for observation in fold_gate_observations(plan, member, verdict):
                context.log_event(observation)
            if verdict is not None and not verdict.passed:
                context.log.warning(f"{member}: smoke gate failed, so it never runs on k folds: {'; '.join(verdict.reasons)}")
        else:
            context.log.info("smoke_gate is evaluated on smoke partitions only; this k-fold partition leaves it unevaluated")
        yield dg.MaterializeResult(
            metadata=metadata, data_version=dg.DataVersion(result.fingerprint), check_results=check_results
        )
    return checkpoints


def _where_and_links(plan: Plan, result) -> dict:
    """A checkpoint's folder (relative to the workdir) and its MLflow run. No absolute path and no tracking URI
    (an absolute sqlite path): one unbreakable word wider than the value column made the partition page
    scroll sideways at 1280 px."""
    out: dict = {"workdir": workdir_metadata(plan.work, plan.path(".")), "path": work_path(plan.work, result.checkpoint_dir)}
    if result.mlflow_url and result.mlflow_run_id:
        out["mlflow_run"] = mlflow_run_link(result.mlflow_url, result.mlflow_run_id)
    if result.mlflow_run_id:
        out["mlflow_run_id"] = result.mlflow_run_id
    return out


def _oof_predictions_asset(members: dg.PartitionsDefinition, checkpoints: dg.AssetsDefinition, collapse_folds: dg.PartitionMapping) -> dg.AssetsDefinition:
    @dg.asset(
        group_name="training",
        partitions_def=members,
        deps=[dg.AssetDep(checkpoints, partition_mapping=collapse_folds)],
        kinds={"polars"},
    )
    def oof_predictions(context: dg.AssetExecutionContext, plan_resource: PlanResource) -> dg.MaterializeResult:
        """Out-of-fold probabilities of one member: every training image once, from the fold that held it out."""
        refuse_failed_inputs(context)
        from ens_assets.member_outputs import CV_OOF, SMOKE_ONLY_OOF
        from ens_assets.promotion import gate_summary
        from ens_assets.training.run import oof_summary, predict_member_oof

        plan = plan_resource.load()
        member = plan.member(context.partition_key)
        frame = predict_member_oof(plan, member.key)
        classes = [c for c in frame.columns if c not in ("image_id", "fold", "label")]
        summary = oof_summary(frame, classes)
        recall = pl.DataFrame([{"class": c, "recall": summary.pop(f"recall_{c}")} for c in classes])
        # A smoke-stage member's OOF covers fold 0 only: say so where its row count is shown.
        coverage = CV_OOF if member.stage == "cv" else SMOKE_ONLY_OOF
        return dg.MaterializeResult(
            metadata={
                "coverage": dg.MetadataValue.text(coverage),
                "gate": dg.MetadataValue.text(gate_summary(plan, member.key)),
                "dagster/row_count": frame.height,
                **table_metadata(summary),
                "per_class_recall": dg.MetadataValue.md(frame_markdown(recall, float_digits=3)),
                "path": work_path(plan.work, plan.oof_path(member.key)),
            }
        )
    return oof_predictions


def _test_predictions_asset(members: dg.PartitionsDefinition, checkpoints: dg.AssetsDefinition, collapse_folds: dg.PartitionMapping) -> dg.AssetsDefinition:
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
                "path": work_path(plan.work, plan.test_predictions_path(context.partition_key)),
            }
        )
    return test_predictions


def fold_gate_observations(plan: Plan, member: str, verdict) -> list[dg.AssetObservation]:
    """What each k-fold partition of a member says once its smoke gate is judged: earned or not, and why.

    An unmaterialized partition would otherwise show "No metadata entries"; an observation (not a
    materialization) keeps it missing while its page says why.
    """
    if verdict is None:
        return []
    if not verdict.passed:
        text = "not earned: smoke gate failed (" + "; ".join(verdict.reasons) + ")"
    elif plan.member(member).stage == "cv":
        text = "earned: smoke gate passed"
    else:
        text = "earned: smoke gate passed; set stage: cv for this member in params.yaml to train this fold"
    return [
        dg.AssetObservation(
            asset_key="checkpoints", partition=str(checkpoint_key(member, fold)), description=text,
            metadata={"k_fold_run": dg.MetadataValue.text(text)},
        )  # fmt: skip
        for fold in plan.fold_keys
    ]
