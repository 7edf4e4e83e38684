"""Data stage: source images -> manifest -> detections -> crops per threshold, and folds by site."""


import polars as pl

import dagster as dg

from ens_assets.atomic import write_parquet
from ens_assets.defs.metadata import frame_markdown, table_metadata
from ens_assets.defs.partitions import threshold_partitions
from ens_assets.defs.resources import PlanResource
from ens_assets.defs.upstream_failures import refuse_failed_inputs
from ens_assets.plan import Plan


def build_data_assets(plan: Plan) -> list[dg.AssetsDefinition]:
    @dg.asset(group_name="data", kinds={"python"})
    def source_images(context: dg.AssetExecutionContext, plan_resource: PlanResource) -> dg.MaterializeResult:
        """The input images: the embedded demo (generated from a seed) or the user's data root."""
        from ens_assets.data.demo import GENERATOR_VERSION, generate_demo

        plan = plan_resource.load()
        if plan.data.layout == "demo":
            info = generate_demo(plan.data_root, plan.data.demo)
            context.log.info(f"demo data at {plan.data_root} (seed {plan.data.demo.seed}, v{GENERATOR_VERSION})")
            return dg.MaterializeResult(
                metadata={
                    "root": dg.MetadataValue.path(str(plan.data_root)),
                    "seed": plan.data.demo.seed,
                    "generator_version": GENERATOR_VERSION,
                    "info": dg.MetadataValue.json(info),
                }
            )
        if not plan.data_root.is_dir():
            raise dg.Failure(
                description=f"data.root {plan.data_root} does not exist: point data.root in "
                f"{plan.base_dir}/params.yaml at your {plan.data.layout} dataset"
            )
        return dg.MaterializeResult(metadata={"root": dg.MetadataValue.path(str(plan.data_root))})

    @dg.asset(group_name="data", deps=[source_images], kinds={"polars"})
    def manifest(context: dg.AssetExecutionContext, plan_resource: PlanResource) -> dg.MaterializeResult:
        """One validated table of every image: id, path, label, site, split."""
        refuse_failed_inputs(context)
        from ens_assets.data.ingest import load_manifest, manifest_summary

        plan = plan_resource.load()
        frame = load_manifest(plan)
        write_parquet(plan.manifest_path, frame)
        summary = manifest_summary(frame)
        return dg.MaterializeResult(
            metadata={
                "path": dg.MetadataValue.path(str(plan.manifest_path)),
                "dagster/row_count": frame.height,
                **table_metadata(summary),
            }
        )

    @dg.asset(group_name="data", deps=[manifest], kinds={"polars"})
    def detections(context: dg.AssetExecutionContext, plan_resource: PlanResource) -> dg.MaterializeResult:
        """MegaDetector boxes per image (from a batch-output JSON, or by running MegaDetector)."""
        refuse_failed_inputs(context)
        from ens_assets.data.detections import detector_from_megadetector, load_detections

        plan = plan_resource.load()
        frame_manifest = pl.read_parquet(plan.manifest_path)
        if plan.data.detections:
            json_path = plan.path(plan.data.detections)
        else:
            json_path = detector_from_megadetector(frame_manifest, plan)
        frame = load_detections(json_path, frame_manifest)
        write_parquet(plan.detections_path, frame)
        per_status = frame.unique("image_id").group_by("status").len().sort("status")
        problems = frame.filter(pl.col("problem").is_not_null()).group_by("problem").len()
        return dg.MaterializeResult(
            metadata={
                "source": dg.MetadataValue.path(str(json_path)),
                "images_by_status": dg.MetadataValue.json(dict(per_status.iter_rows())),
                "ignored_detections": dg.MetadataValue.json(dict(problems.iter_rows())),
                "animal_detections": frame.filter(pl.col("category") == "animal").height,
            }
        )

    @dg.asset(group_name="data", deps=[detections], partitions_def=threshold_partitions(plan), kinds={"numpy"})
    def crops(context: dg.AssetExecutionContext, plan_resource: PlanResource) -> dg.MaterializeResult:
        """Square crops of animals at one detector-confidence threshold, cached as a uint8 memmap."""
        refuse_failed_inputs(context)
        from ens_assets.data.crops import build_crop_cache

        plan = plan_resource.load()
        threshold = float(context.partition_key)
        summary = build_crop_cache(
            pl.read_parquet(plan.manifest_path),
            pl.read_parquet(plan.detections_path),
            threshold,
            plan.crops,
            plan.crops_dir(context.partition_key),
            workers=plan.crops.workers or None,
            max_pixels=plan.data.max_image_pixels,
        )
        return dg.MaterializeResult(
            metadata={"path": dg.MetadataValue.path(str(plan.crops_dir(context.partition_key))), **table_metadata(summary)}
        )

    @dg.asset(group_name="data", deps=[manifest], kinds={"scikitlearn"})
    def folds(context: dg.AssetExecutionContext, plan_resource: PlanResource) -> dg.MaterializeResult:
        """k folds by StratifiedGroupKFold over camera sites, so no site is in two folds."""
        refuse_failed_inputs(context)
        from ens_assets.data.folds import assign_folds

        plan = plan_resource.load()
        frame = assign_folds(pl.read_parquet(plan.manifest_path), plan.folds.k, plan.folds.seed)
        write_parquet(plan.folds_path, frame)
        per_fold = frame.group_by("fold").agg(
            pl.len().alias("images"), pl.col("site").n_unique().alias("sites"), pl.col("label").n_unique().alias("classes")
        ).sort("fold")
        return dg.MaterializeResult(
            metadata={
                "path": dg.MetadataValue.path(str(plan.folds_path)),
                "per_fold": dg.MetadataValue.md(frame_markdown(per_fold)),
            }
        )

    return [source_images, manifest, detections, crops, folds]
