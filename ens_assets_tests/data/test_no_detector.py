"""No detector (data.detections omitted): one crops partition 'full' of whole frames letterboxed to
square, no threshold lever; the plan, the Dagster partitions and the crop cache all follow from it."""

from __future__ import annotations

import numpy as np
import pytest

from ens_assets.data.crops import build_crop_cache, open_crop_cache
from ens_assets.data.detections import no_detector_table
from ens_assets.data.ingest import ingest_zamba
from ens_assets.plan import CropConfig, PlanError, plan_from_dict

from .exif_photos import write_photo


def _plan(tmp_path, **data):
    raw = {"data": {"layout": "zamba", "root": "photos", **data}, "members": [{"backbone": "test_resnet", "recipe": "geo"}]}
    return plan_from_dict(raw, tmp_path, check_backbones=False)


def test_no_detections_means_one_full_partition_and_no_threshold(tmp_path):
    plan = _plan(tmp_path)
    assert plan.detection_source == "none" and plan.detections_json is None
    assert plan.threshold_keys == ["full"]
    assert plan.member_keys == ["test_resnet.full.geo"] and plan.members[0].threshold == "full"
    assert plan.crops_dir(plan.members[0].threshold) == plan.work / "crops" / "full"


def test_a_numeric_threshold_without_a_detector_is_a_plan_error(tmp_path):
    raw = {"data": {"layout": "zamba"}, "members": [{"backbone": "test_resnet", "threshold": 0.05, "recipe": "geo"}]}
    with pytest.raises(PlanError, match=r"members\[0\].*threshold 0.05 is given but data.detections is not set.*'full'"):
        plan_from_dict(raw, tmp_path, check_backbones=False)
    raw = {"data": {"layout": "zamba"}, "crops": {"thresholds": [0.1]}, "members": [{"backbone": "test_resnet", "recipe": "geo"}]}
    with pytest.raises(PlanError, match=r"crops.thresholds \[0.1\] is set but data.detections is not"):
        plan_from_dict(raw, tmp_path, check_backbones=False)
    raw = {"data": {"layout": "zamba", "detections": "md.json"}, "members": [{"backbone": "test_resnet", "recipe": "geo"}]}
    with pytest.raises(PlanError, match=r"members\[0\].*no threshold given; with a detector each member crops at one of"):
        plan_from_dict(raw, tmp_path, check_backbones=False)


def test_the_demo_layout_keeps_its_own_detections_file(tmp_path):
    raw = {"members": [{"backbone": "test_resnet", "threshold": 0.05, "recipe": "geo"}]}
    plan = plan_from_dict(raw, tmp_path, check_backbones=False)
    assert plan.detection_source == "megadetector" and plan.detections_json == plan.data_root / "megadetector.json"
    assert plan.threshold_keys == ["0.05", "0.20"]


def test_dagster_partitions_derive_from_the_plan(tmp_path):
    from ens_assets.defs.partitions import checkpoint_partitions, threshold_partitions

    plan = _plan(tmp_path)
    assert threshold_partitions(plan).get_partition_keys() == ["full"]
    assert {k.keys_by_dimension["member"] for k in checkpoint_partitions(plan).get_partition_keys()} == {"test_resnet.full.geo"}


def test_full_frames_are_letterboxed_to_square(tmp_path):
    write_photo(tmp_path / "photos" / "wide.jpg", 0, size=(80, 40))
    write_photo(tmp_path / "photos" / "tall.jpg", 1, size=(30, 60))
    (tmp_path / "photos" / "labels.csv").write_text("filepath,label\nwide.jpg,bird\ntall.jpg,hog\n")
    manifest = ingest_zamba(tmp_path / "photos")
    detections = no_detector_table(manifest)
    assert detections["status"].to_list() == ["no_detector"] * 2
    summary = build_crop_cache(manifest, detections, "full", CropConfig(image_size=16), tmp_path / "crops", workers=1)
    assert summary["threshold"] == "full" and summary["n_fallback_only"] == 2 and summary["n_used"] == 0
    cache = open_crop_cache(tmp_path / "crops")
    by_id = {image_id: cache.images[row] for row, image_id in cache.index.select("row", "image_id").iter_rows()}
    wide, tall = by_id["wide.jpg"].astype(int), by_id["tall.jpg"].astype(int)
    grey = np.array([128, 128, 128])
    # 80x40 -> 16x8 picture centred in 16x16: grey bands above and below; 30x60 -> bands left and right
    assert np.abs(wide[0] - grey).max() <= 2 and np.abs(wide[-1] - grey).max() <= 2 and np.abs(wide[8] - grey).max() > 10
    assert np.abs(tall[:, 0] - grey).max() <= 2 and np.abs(tall[:, -1] - grey).max() <= 2
