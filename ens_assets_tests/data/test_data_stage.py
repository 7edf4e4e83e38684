"""The data stage through the CLI's StageRunner and Dagster on a real SQLite instance, on small real
JPEG folders (EXIF, no site column): what the folds asset, its check and the CLI say about grouping."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import dagster as dg

from ens_assets_tests.data.small_datasets import write_md_json
from .exif_photos import write_burst_dataset, write_photo
from ens_assets_tests.instance_home import make_dagster_home

MEMBERS = [{"backbone": "test_resnet", "threshold": 0.05, "recipe": "geo"}]


@pytest.fixture
def instance_home(tmp_path, monkeypatch):
    home = make_dagster_home(tmp_path)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


def _run_data_stage(project: Path, params: dict):
    from ens_assets.cli import StageRunner

    path = project / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    lines: list[str] = []
    runner = StageRunner(path, out=lines.append)
    code = runner.run(["data"])
    return runner, lines, code


def _detectorless_params(data: dict, k: int) -> dict:
    """A tiny plan without data.detections: members name no threshold."""
    members = [{"backbone": "test_resnet", "recipe": "geo"}]
    return {"data": data, "crops": {"image_size": 16}, "folds": {"k": k}, "members": members, "workdir": "work"}


def _latest_materialization(runner, asset: str) -> dict:
    event = runner.instance.get_latest_materialization_event(dg.AssetKey(asset))
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def test_data_stage_groups_exif_bursts_and_says_so(tmp_path, instance_home):
    root = tmp_path / "photos"
    truth = write_burst_dataset(root, cameras=3, bursts_per_camera=3, frames=3)
    # Windows separators, and one entry for an image that is not in labels.csv
    entries = [{"file": rel.replace("/", "\\"), "detections": []} for rel in truth]
    write_md_json(root / "md.json", entries + [{"file": "cam9\\IMG_9999.JPG", "detections": []}])
    params = {
        "data": {"layout": "zamba", "root": "photos", "detections": "photos/md.json"},
        "crops": {"thresholds": [0.05], "image_size": 16},
        "folds": {"k": 3},
        "members": MEMBERS,
        "workdir": "work",
    }
    runner, lines, code = _run_data_stage(tmp_path, params)
    assert code == 0, "\n".join(lines)
    grouping = json.loads(runner.plan.folds_summary_path.read_text())
    assert grouping["group_by"] == "burst" and grouping["requested"] == "auto" and grouping["n_groups"] == 9
    assert any("folds grouped by burst: 9 groups" in line for line in lines), lines
    # 3 cameras x 3 bursts of 3 frames over 3 classes: every class has 9 images >= k, so none is reported
    assert not any("fewer images than folds.k" in line for line in lines), lines
    meta = _latest_materialization(runner, "folds")
    assert meta["group_by"] == "burst" and meta["n_groups"] == 9 and meta["grouping_warning"] == ""
    detections = _latest_materialization(runner, "detections")
    assert detections["unmatched_json_entries"] == 1 and "IMG_9999" in detections["unmatched_examples"]
    assert detections["images_by_status"] == {"ok": 27}
    listed = json.loads(runner.plan.detections_summary_path.read_text())["unmatched_entries"]
    assert listed == [{"file": "cam9\\IMG_9999.JPG", "reason": "no manifest image has this path"}]
    check = runner.instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [dg.AssetCheckKey(dg.AssetKey("folds"), "folds_keep_groups_together")]
    )[dg.AssetCheckKey(dg.AssetKey("folds"), "folds_keep_groups_together")]
    evaluation = check.event.dagster_event.event_specific_data
    assert evaluation.metadata["group_by"].value == "burst"
    assert evaluation.metadata["groups_in_several_folds"].value == []


def test_no_detector_plan_runs_data_and_crops_through_dagster(tmp_path, instance_home):
    """Pre-cropped or detector-less photos: no data.detections, members without a threshold."""
    root = tmp_path / "photos"
    truth = write_burst_dataset(root, cameras=2, bursts_per_camera=3, frames=2)
    write_photo(root / "misc" / "okapi.jpg", 7, taken=None)  # one image of a class: fewer than k = 2
    with open(root / "labels.csv", "a") as fh:
        fh.write("misc/okapi.jpg,okapi\n")
    truth["misc/okapi.jpg"] = "single"
    runner, lines, code = _run_data_stage(tmp_path, _detectorless_params({"layout": "zamba", "root": "photos"}, k=2))
    assert code == 0, "\n".join(lines)
    assert runner.run(["crops"]) == 0, "\n".join(lines)
    assert any("crops full" in line and "[ok]" in line for line in lines), lines
    assert any("classes with fewer images than folds.k = 2: {'okapi': 1}" in line for line in lines), lines
    summary = json.loads((runner.plan.crops_dir("full") / "summary.json").read_text())
    assert summary["n_images"] == len(truth) == summary["n_fallback_only"]
    assert summary["detection_status"] == {"no_detector": len(truth)}
    assert runner.instance.get_materialized_partitions(dg.AssetKey("crops")) == {"full"}


def test_camtrap_dp_package_through_data_and_crops(tmp_path, instance_home):
    from .camtrap_package import write_camtrap_package

    truth = write_camtrap_package(tmp_path / "package")
    runner, lines, code = _run_data_stage(tmp_path, _detectorless_params({"layout": "camtrap-dp", "root": "package"}, k=3))
    assert code == 0 and runner.run(["crops"]) == 0, "\n".join(lines)
    assert any("folds grouped by sequence: 12 groups" in line for line in lines), lines
    manifest_meta = _latest_materialization(runner, "manifest")
    assert manifest_meta["quarantined_label_rows"] == 3 and "remote URL" in manifest_meta["quarantine_examples"]
    summary = json.loads((runner.plan.crops_dir("boxes") / "summary.json").read_text())
    assert summary["n_images"] == len(truth["labels"]) + 3 and summary["n_quarantined"] == 3
    assert summary["n_used"] == len(truth["boxed"])
    assert runner.instance.get_materialized_partitions(dg.AssetKey("crops")) == {"boxes"}
