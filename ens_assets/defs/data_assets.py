"""Data stage: source images -> manifest -> detections -> crops per threshold, and folds grouped by site, sequence or burst."""


from pathlib import Path

import polars as pl

import dagster as dg

from ens_assets.defs.metadata import frame_markdown, table_metadata
from ens_assets.defs.partitions import threshold_partitions
from ens_assets.defs.resources import PlanResource
from ens_assets.defs.upstream_failures import refuse_failed_inputs
from ens_assets.plan import Plan


def build_data_assets(plan: Plan) -> list[dg.AssetsDefinition]:
    source_images = _source_images_asset()
    manifest = _manifest_asset(source_images)
    detections = _detections_asset(manifest)
    crops = _crops_asset(plan, detections)
    folds = _folds_asset(manifest)
    return [source_images, manifest, detections, crops, folds]


def _source_images_asset() -> dg.AssetsDefinition:
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
                f"{plan.params_file or Path(plan.base_dir) / 'params.yaml'} at your {plan.data.layout} dataset"
            )
        return dg.MaterializeResult(metadata={"root": dg.MetadataValue.path(str(plan.data_root))})
    return source_images


def _manifest_asset(source_images: dg.AssetsDefinition) -> dg.AssetsDefinition:
    @dg.asset(group_name="data", deps=[source_images], kinds={"polars"})
    def manifest(context: dg.AssetExecutionContext, plan_resource: PlanResource) -> dg.MaterializeResult:
        """One validated table of every image: id, path, label, site, split."""
        refuse_failed_inputs(context)
        from ens_assets.data.ingest import ingest, manifest_summary, write_ingested

        plan = plan_resource.load()
        ingested = ingest(plan)
        frame = ingested.manifest
        write_ingested(plan, ingested)
        summary = manifest_summary(frame)
        for note in ingested.notes:
            context.log.warning(note)
        if ingested.quarantine.height:
            context.log.warning(
                f"{ingested.quarantine.height} label row(s) quarantined (e.g. {ingested.quarantine['reason'][0]}); "
                f"list in {plan.manifest_quarantine_path}"
            )
        if ingested.small_classes:
            context.log.warning(
                f"classes with fewer images than folds.k = {plan.folds.k}: {ingested.small_classes}; some folds validate "
                "without them (set data.min_class_images to drop or merge them)"
            )
        return dg.MaterializeResult(
            metadata={
                "path": dg.MetadataValue.path(str(plan.manifest_path)),
                "dagster/row_count": frame.height,
                "quarantined_label_rows": ingested.quarantine.height,
                "quarantine_examples": dg.MetadataValue.md(
                    frame_markdown(ingested.quarantine.select("image_id", "reason"), max_rows=20)
                    if ingested.quarantine.height else "none"
                ),
                "classes_with_fewer_images_than_folds": dg.MetadataValue.json(ingested.small_classes),
                "notes": dg.MetadataValue.json(ingested.notes),
                **table_metadata(summary),
            }
        )
    return manifest


def _detections_asset(manifest: dg.AssetsDefinition) -> dg.AssetsDefinition:
    @dg.asset(group_name="data", deps=[manifest], kinds={"polars"})
    def detections(context: dg.AssetExecutionContext, plan_resource: PlanResource) -> dg.MaterializeResult:
        """MegaDetector boxes per image (from a batch-output JSON, or by running MegaDetector)."""
        refuse_failed_inputs(context)
        from ens_assets.data.detections import detector_from_megadetector, no_detector_table, read_detections, write_detection_table
        from ens_assets.data.ingest import read_manifest

        plan = plan_resource.load()
        frame_manifest = read_manifest(plan)
        if plan.detection_source == "none":
            frame = no_detector_table(frame_manifest)
            write_detection_table(plan, frame, {"source": "none", "images_by_status": {"no_detector": frame.height}})
            context.log.info("no data.detections: one crops partition 'full' (whole frames letterboxed to square)")
            return dg.MaterializeResult(metadata={"source": "none (whole frames)", "images": frame.height})
        if plan.detection_source == "observations":
            from ens_assets.data.camtrap_dp import observation_detections

            frame = observation_detections(plan.data_root, frame_manifest)
            with_box = frame.filter(pl.col("conf").is_not_null())["image_id"].n_unique()
            write_detection_table(plan, frame, {"source": "camtrap-dp observations", "images_with_boxes": with_box,
                                                "images": frame_manifest.height})  # fmt: skip
            return dg.MaterializeResult(
                metadata={"source": "Camtrap DP observation boxes", "images_with_boxes": with_box, "images": frame_manifest.height}
            )
        # The configured (or demo) file, or one MegaDetector writes into the workdir.
        json_path = plan.detections_json or detector_from_megadetector(frame_manifest, plan)
        loaded = read_detections(json_path, frame_manifest)
        frame = loaded.table
        summary = loaded.summary()
        write_detection_table(plan, frame, summary)
        problems = frame.filter(pl.col("problem").is_not_null()).group_by("problem").len()
        if loaded.unmatched:
            context.log.warning(
                f"{len(loaded.unmatched)} entries of {json_path.name} match no manifest image "
                f"(e.g. {loaded.unmatched[0]['file']!r}); full list in {plan.detections_summary_path}"
            )
        unmatched = pl.DataFrame(loaded.unmatched[:20], schema={"file": pl.String, "reason": pl.String})
        return dg.MaterializeResult(
            metadata={
                "source": dg.MetadataValue.path(str(json_path)),
                "format_version": loaded.format_version,
                "images_by_status": dg.MetadataValue.json(summary["images_by_status"]),
                "ignored_detections": dg.MetadataValue.json(dict(problems.iter_rows())),
                "animal_detections": frame.filter(pl.col("category") == "animal").height,
                "unmatched_json_entries": len(loaded.unmatched),
                "unmatched_examples": dg.MetadataValue.md(frame_markdown(unmatched) if unmatched.height else "none"),
                "matched_by_path_suffix": loaded.matched_by_suffix,
                "summary": dg.MetadataValue.path(str(plan.detections_summary_path)),
            }
        )
    return detections


def _crops_asset(plan: Plan, detections: dg.AssetsDefinition) -> dg.AssetsDefinition:
    @dg.asset(group_name="data", deps=[detections], partitions_def=threshold_partitions(plan), kinds={"numpy"})
    def crops(context: dg.AssetExecutionContext, plan_resource: PlanResource) -> dg.MaterializeResult:
        """Square crops of animals at one detector-confidence threshold (or whole frames, partition 'full'),
        cached as a uint8 memmap."""
        refuse_failed_inputs(context)
        from ens_assets.data.crops import build_crop_cache, read_crop_quarantine
        from ens_assets.data.detections import read_detection_table
        from ens_assets.data.ingest import read_label_quarantine, read_manifest

        plan = plan_resource.load()
        summary = build_crop_cache(
            read_manifest(plan),
            read_detection_table(plan),
            context.partition_key,
            plan.crop_settings,  # at the largest member image size
            plan.crops_dir(context.partition_key),
            workers=plan.crops.workers or None,
            max_pixels=plan.data.max_image_pixels,
            label_rows=read_label_quarantine(plan),
        )
        # The crop cache's own reader: the crops stage runs no training code (dvc.yaml lists only data/ as its deps).
        quarantine = read_crop_quarantine(plan.crops_dir(context.partition_key))
        return dg.MaterializeResult(
            metadata={
                "path": dg.MetadataValue.path(str(plan.crops_dir(context.partition_key))),
                **table_metadata(summary),
                # The first quarantined images with their reasons, where people look (the full list is the parquet).
                "quarantine_examples": dg.MetadataValue.md(
                    frame_markdown(quarantine.select("rel_path", "reason"), max_rows=20) if quarantine.height else "none"
                ),
            }
        )
    return crops


def _folds_asset(manifest: dg.AssetsDefinition) -> dg.AssetsDefinition:
    @dg.asset(group_name="data", deps=[manifest], kinds={"scikitlearn"})
    def folds(context: dg.AssetExecutionContext, plan_resource: PlanResource) -> dg.MaterializeResult:
        """k folds by StratifiedGroupKFold over sites, sequences or bursts (folds.group_by): no group in two folds."""
        refuse_failed_inputs(context)
        from ens_assets.data.folds import make_folds, write_folds
        from ens_assets.data.ingest import read_manifest

        plan = plan_resource.load()
        frame, grouping = make_folds(read_manifest(plan), plan.folds)
        write_folds(plan, frame, grouping)
        if grouping.warning:
            context.log.warning(grouping.warning)
        per_fold = frame.group_by("fold").agg(
            pl.len().alias("images"),
            pl.col("group").n_unique().alias("groups"),
            pl.col("site").n_unique().alias("sites"),
            pl.col("label").n_unique().alias("classes"),
        ).sort("fold")
        return dg.MaterializeResult(
            metadata={
                "path": dg.MetadataValue.path(str(plan.folds_path)),
                "group_by": grouping.group_by,
                "group_by_requested": grouping.requested,
                "n_groups": grouping.n_groups,
                "grouping_reason": grouping.reason,
                "grouping_warning": grouping.warning or "",
                "per_fold": dg.MetadataValue.md(frame_markdown(per_fold)),
            }
        )
    return folds
