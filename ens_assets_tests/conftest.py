"""Session-wide test settings: never reach a model hub, keep every store inside tmp dirs."""

import os
from pathlib import Path

import pytest

from ens_assets_tests.tiny_plan import SHARED_PROJECT, write_params

# Tests must never hit a hub: timm/huggingface downloads fail fast instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TIMM_USE_OLD_CACHE", "0")
# Two cores: keep torch from oversubscribing when several processes run.
os.environ.setdefault("OMP_NUM_THREADS", "2")


# --- shared tiny project: demo data -> manifest -> detections -> crops -> folds ------------------
@pytest.fixture(scope="session")
def tiny_params(tmp_path_factory) -> Path:
    """A params.yaml for a tiny demo project in a session tmp dir (load with ens_assets.plan.load_plan)."""
    project = tmp_path_factory.mktemp("tiny_project")
    return write_params(project, SHARED_PROJECT)


@pytest.fixture(scope="session")
def tiny_data(tiny_params) -> dict:
    """The tiny project's data stage run with the data core, written at the plan's conventional paths."""
    from ens_assets.atomic import write_parquet
    from ens_assets.data.crops import build_crop_cache, open_crop_cache
    from ens_assets.data.demo import generate_demo
    from ens_assets.data.detections import load_detections
    from ens_assets.data.folds import assign_folds
    from ens_assets.data.ingest import load_manifest
    from ens_assets.plan import load_plan

    plan = load_plan(tiny_params)
    demo_info = generate_demo(plan.data_root, plan.data.demo)
    manifest = load_manifest(plan)
    write_parquet(plan.manifest_path, manifest)
    detections = load_detections(plan.path(plan.data.detections), manifest)
    write_parquet(plan.detections_path, detections)
    crop_summaries = {
        key: build_crop_cache(manifest, detections, float(key), plan.crop_settings, plan.crops_dir(key))
        for key in plan.threshold_keys
    }
    folds = assign_folds(manifest, plan.folds.k, plan.folds.seed)
    write_parquet(plan.folds_path, folds)
    return {
        "plan": plan,
        "params": tiny_params,
        "demo_info": demo_info,
        "manifest": manifest,
        "detections": detections,
        "folds": folds,
        "crop_summaries": crop_summaries,
        "crops": {key: open_crop_cache(plan.crops_dir(key)) for key in plan.threshold_keys},
    }
