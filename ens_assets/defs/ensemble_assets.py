"""Ensemble stage: combine members from their OOF predictions, score honestly, and map the gaps."""


from dataclasses import replace

import dagster as dg

from ens_assets import mlflow_store
from ens_assets.defs.metadata import (
    frame_markdown,
    member_class_markdown,
    members_markdown,
    mlflow_run_link,
    reasons_markdown,
    records_markdown,
    table_metadata,
    work_path,
    workdir_metadata,
)
from ens_assets.defs.resources import MlflowTracking, PlanResource
from ens_assets.defs.upstream_failures import refuse_failed_inputs
from ens_assets.plan import Plan


def build_ensemble_assets(
    plan: Plan, oof_predictions: dg.AssetsDefinition, test_predictions: dg.AssetsDefinition
) -> list[dg.AssetsDefinition]:
    ensemble = _ensemble_asset(oof_predictions, test_predictions)
    ensemble_diagnostics = _ensemble_diagnostics_asset(ensemble)
    return [ensemble, ensemble_diagnostics]


def _ensemble_asset(oof_predictions: dg.AssetsDefinition, test_predictions: dg.AssetsDefinition) -> dg.AssetsDefinition:
    @dg.asset(group_name="ensemble", deps=[oof_predictions, test_predictions], kinds={"scikitlearn", "mlflow"})
    def ensemble(
        context: dg.AssetExecutionContext, plan_resource: PlanResource, mlflow_tracking: MlflowTracking
    ) -> dg.MaterializeResult:
        """The configured combiner fit on all members' OOF; honest nested scores; the test submission."""
        refuse_failed_inputs(context)
        import polars as pl

        from ens_assets.ensemble.build import build_ensemble
        from ens_assets.ensemble.plots import png_markdown
        from ens_assets.member_outputs import collect_member_outputs, image_sites, member_table

        plan = plan_resource.load()
        outputs = collect_member_outputs(plan)
        for member, why in outputs.excluded.items():
            context.log.warning(f"{member} left out of the ensemble: {why}")
        if not outputs.oof:
            raise dg.Failure(
                description="no member has OOF predictions at stage cv: promote a member to cv and "
                "materialize its checkpoints and predictions",
                metadata={"excluded": dg.MetadataValue.json(outputs.excluded)},
            )
        result = build_ensemble(
            outputs.oof, outputs.test, outputs.classes, outputs.info, plan.ensemble, plan.ensemble_dir,
            submission_format="conservision", groups=image_sites(plan), test_labels=outputs.test_labels,
        )
        tracking = mlflow_tracking.resolve(plan)
        member_runs = {m: ",".join(info["mlflow_run_ids"]) for m, info in outputs.info.items()}
        run_id = mlflow_store.log_ensemble_run(tracking, result, None, member_runs)
        context.log.info(result.test_split_note)
        run_page = tracking.run_page(run_id)
        # The diagnostics asset logs its plots into this same run.
        mlflow_store.write_run_record(plan.ensemble_dir, tracking, run_id)
        from ens_assets.inference.artefact import write_plan_artefact
        from ens_assets.inference.mlflow_model import log_ensemble_model

        # What `ens-assets predict` and the predictions asset load: one folder, one registered model version.
        artefact_dir = write_plan_artefact(plan)
        model = log_ensemble_model(artefact_dir, run_id, tracking, plan.inference.registered_model)
        return dg.MaterializeResult(
            metadata={
                **table_metadata(_headline(result.scores, result.spec["method"])),
                "method": plan.ensemble.method,
                "fitted_method": result.spec["method"],
                "temperature": round(float(result.spec["temperature"]), 4),
                "mlflow_run": mlflow_run_link(run_page, run_id),
                "members": dg.MetadataValue.md(members_markdown(member_table(plan, result.spec, outputs.excluded))),
                # A dialog 1024 px wide (over 1000 characters): one table, shared notes listed once, shorter than the screen.
                "honest_scores": dg.MetadataValue.md(frame_markdown(scores_for_people(result.scores), max_columns=8)),
                "accuracy_vs_compute": dg.MetadataValue.md(records_markdown(_for_people(result.compute), "name")),
                "pareto": dg.MetadataValue.md(png_markdown(result.pngs["pareto"], "accuracy vs compute")),
                "excluded_members": dg.MetadataValue.md(reasons_markdown(outputs.excluded)),
                "spec": dg.MetadataValue.json(result.spec),
                # Paths relative to the workdir: an absolute path is wider than the value column at 1280 px.
                "workdir": workdir_metadata(plan.work, plan.path(".")),
                "submission": work_path(plan.work, result.submission_path),
                "test_split": dg.MetadataValue.text(result.test_split_note),
                **({"test_recall": dg.MetadataValue.md(frame_markdown(result.test_recall))}
                   if result.test_recall is not None else {}),
                "site_shift": dg.MetadataValue.json(result.metrics["test_split"].get("site_shift", [])),
                "mlflow_run_id": run_id,
                "ensemble_model": work_path(plan.work, artefact_dir),
                "model_uri": model.registry_uri or model.model_uri,
            }
        )
    return ensemble


def _ensemble_diagnostics_asset(ensemble: dg.AssetsDefinition) -> dg.AssetsDefinition:
    @dg.asset(group_name="ensemble", deps=[ensemble], kinds={"matplotlib"})
    def ensemble_diagnostics(
        context: dg.AssetExecutionContext, plan_resource: PlanResource, mlflow_tracking: MlflowTracking
    ) -> dg.MaterializeResult:
        """Per-class recall across members, all-fail and single-win classes, shared confusions: the roadmap."""
        refuse_failed_inputs(context)
        from ens_assets.ensemble.build import diagnose_built_ensemble
        from ens_assets.ensemble.plots import png_markdown
        from ens_assets.member_outputs import collect_member_outputs

        plan = plan_resource.load()
        outputs = collect_member_outputs(plan)
        diagnostics = diagnose_built_ensemble(outputs.oof, outputs.classes, plan.ensemble, plan.ensemble_dir,
                                              plan.diagnostics_dir)
        run = mlflow_store.read_run_record(plan.ensemble_dir)
        # Into the ensemble's own run, in the store it was logged to (the record names it).
        tracking = replace(mlflow_tracking.resolve(plan), uri=run["tracking_uri"])
        mlflow_store.log_files(tracking, run["run_id"], diagnostics.paths.values(), artifact_path="diagnostics")
        return dg.MaterializeResult(
            metadata={
                "roadmap": dg.MetadataValue.md(diagnostics.roadmap),
                "per_class_recall": dg.MetadataValue.md(member_class_markdown(diagnostics.recall)),
                "recall_matrix": dg.MetadataValue.md(png_markdown(diagnostics.pngs["recall_matrix"], "per-class recall")),
                "confusions": dg.MetadataValue.md(png_markdown(diagnostics.pngs["confusion_grid"], "confusion matrices")),
                **({"reliability": dg.MetadataValue.md(png_markdown(diagnostics.pngs["reliability"], "reliability diagram"))}
                   if "reliability" in diagnostics.pngs else {}),  # fmt: skip
                "all_fail_classes": dg.MetadataValue.json(diagnostics.all_fail),
                "single_win_classes": dg.MetadataValue.json(diagnostics.single_win),
                "drop_candidates": dg.MetadataValue.json(diagnostics.never_selected),
                "site_shift": dg.MetadataValue.json([m for m, _, _ in diagnostics.site_shift]),
                "mlflow_run_id": run["run_id"],
            }
        )
    return ensemble_diagnostics


def scores_for_people(scores):
    """The honest-scores table narrow enough to read in the UI: each score with its interval in one cell."""
    import polars as pl

    def with_interval(value, lo, hi) -> str | None:
        if value is None:
            return None
        # No-break spaces: an interval never wraps inside its cell (a dialog of 3-line rows is taller than the screen).
        return f"{value:.3f}" if lo is None or hi is None else f"{value:.3f}\u00a0[{lo:.3f},\u00a0{hi:.3f}]"

    columns = set(scores.columns)
    rows = []
    for r in scores.iter_rows(named=True):
        row = {"name": r["name"], "log loss [95%]": with_interval(r["log_loss"], r.get("log_loss_lo"), r.get("log_loss_hi")),
               "acc [95%]": with_interval(r["accuracy"], r.get("accuracy_lo"), r.get("accuracy_hi"))}  # fmt: skip
        if "calibrated_log_loss" in columns:
            row["calibrated"] = with_interval(r["calibrated_log_loss"], None, None)
        if "delta_vs_best" in columns:
            row["vs best [95%]"] = with_interval(r["delta_vs_best"], r.get("delta_lo"), r.get("delta_hi"))
        if "test_log_loss" in columns:
            row["test LL"] = with_interval(r["test_log_loss"], None, None)
        row["members"] = None if r.get("members_used") == r["name"] else r.get("members_used")  # a member's own row
        row["note"] = r.get("note")
        rows.append(row)
    if not rows:
        return scores
    table = pl.DataFrame(rows, schema={k: pl.String for k in rows[0]})
    return table.select([c for c in table.columns if c == "name" or table[c].null_count() < table.height])


def _for_people(frame):
    """The columns a reader compares; flags the other columns already say (kind, nested) are dropped."""
    return frame.drop([c for c in ("kind", "nested", "in_sample_accuracy") if c in frame.columns])


def _headline(scores, method: str) -> dict[str, float]:
    """The fitted ensemble's and the best member's honest scores as numbers (the UI plots them across
    nights); every other method is in the honest_scores table. The best member's keys say `best_member`:
    the longest key sets the key column's width, and `best_single_member/accuracy` left the values too
    little of a 1280 px window."""
    out: dict[str, float] = {}
    for row in scores.iter_rows(named=True):
        if row["name"] in (method, "best_single_member"):
            name = "best_member" if row["name"] == "best_single_member" else row["name"]
            for column in ("log_loss", "accuracy", "test_log_loss", "test_accuracy"):
                if row.get(column) is not None:
                    out[f"{name}/{column}"] = round(float(row[column]), 4)
    return out
