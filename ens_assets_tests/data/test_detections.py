import json

import polars as pl
import pytest

from ens_assets.data.detections import (
    DETECTIONS_SCHEMA,
    DetectionsError,
    detector_from_megadetector,
    load_detections,
    max_detection_conf,
)
from ens_assets.data.ingest import ingest_conservision
from ens_assets.plan import plan_from_dict

from .conftest import write_md_json


def _manifest(rel_paths):
    return pl.DataFrame(
        {
            "image_id": [f"i{n}" for n in range(len(rel_paths))],
            "path": [f"/data/{r}" for r in rel_paths],
            "rel_path": rel_paths,
            "label": ["rodent"] * len(rel_paths),
            "site": ["S01"] * len(rel_paths),
            "split": ["train"] * len(rel_paths),
        }
    )


def test_demo_json_covers_every_manifest_image(small_demo):
    manifest = ingest_conservision(small_demo)
    detections = load_detections(small_demo / "megadetector.json", manifest)
    assert detections.schema == DETECTIONS_SCHEMA
    assert set(detections["image_id"]) == set(manifest["image_id"])
    assert detections.filter(pl.col("status") == "failure").height >= 1
    assert detections.filter(pl.col("problem").is_not_null()).height == 0


def test_every_entry_kind(tmp_path):
    manifest = _manifest(["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg", "f.jpg", "g.jpg"])
    images = [
        {"file": "a.jpg", "detections": [
            {"category": "1", "conf": 0.9, "bbox": [0.1, 0.1, 0.5, 0.5], "classifications": [["3", 0.8]]},
            {"category": "2", "conf": 0.3, "bbox": [0.0, 0.0, 0.2, 0.2]},
        ]},
        {"file": "b.jpg", "detections": []},
        {"file": "c.jpg", "detections": None},
        {"file": "./d.jpg"},  # detections absent, path with a leading ./
        {"file": "e.jpg", "failure": "Failure image access", "detections": None},
        {"file": "f.jpg", "detections": [
            {"category": "1", "conf": float("nan"), "bbox": [0.1, 0.1, 0.2, 0.2]},
            {"category": "1", "conf": 0.8, "bbox": [0.7, 0.7, 0.5, 0.5]},
            {"category": "1", "conf": 0.5, "bbox": [0.1, 0.1, 0.2]},
            {"category": "9", "conf": 0.5, "bbox": [0.1, 0.1, 0.2, 0.2]},
        ]},
        {"file": "not/in/manifest.jpg", "detections": []},
    ]
    path = write_md_json(tmp_path / "md.json", images, version="1.1")
    assert "nan" in path.read_text().lower()  # a real NaN token, as Python's json writes it
    det = load_detections(path, manifest)

    def rows(image_id):
        return det.filter(pl.col("image_id") == image_id).to_dicts()

    a = rows("i0")
    assert [r["category"] for r in a] == ["animal", "person"] and a[0]["conf"] == 0.9
    assert (a[0]["x"], a[0]["y"], a[0]["w"], a[0]["h"]) == (0.1, 0.1, 0.5, 0.5)
    for image_id in ("i1", "i2", "i3"):
        (only,) = rows(image_id)
        assert only["status"] == "ok" and only["conf"] is None and only["category"] is None
    (failed,) = rows("i4")
    assert failed["status"] == "failure" and failed["failure"] == "Failure image access"
    problems = [r["problem"] for r in rows("i5")]
    assert problems == ["NaN confidence", "bbox outside [0,1]", "bbox is not four numbers [x, y, w, h]", "unknown category '9'"]
    (absent,) = rows("i6")
    assert absent["status"] == "not_in_json"
    assert det.height == 2 + 3 + 1 + 4 + 1

    maxima = dict(max_detection_conf(det).iter_rows())
    assert maxima["i0"] == 0.9 and maxima["i1"] == 0.0 and maxima["i5"] == 0.0  # problem rows never count


def test_tiny_bbox_overshoot_from_rounding_is_tolerated(tmp_path):
    path = write_md_json(tmp_path / "md.json", [{"file": "a.jpg", "detections": [{"category": "1", "conf": 0.5, "bbox": [0.5, 0.5, 0.5001, 0.5]}]}])
    assert load_detections(path, _manifest(["a.jpg"]))["problem"].to_list() == [None]


def test_invalid_json_names_the_file(tmp_path):
    path = tmp_path / "md.json"
    path.write_text('{"images": [')
    with pytest.raises(DetectionsError, match=r"md.json: not valid JSON"):
        load_detections(path, _manifest(["a.jpg"]))


def test_missing_file_says_how_to_provide_detections(tmp_path):
    with pytest.raises(DetectionsError, match=r"no such file; set data.detections"):
        load_detections(tmp_path / "absent.json", _manifest(["a.jpg"]))


def test_non_1x_format_is_rejected(tmp_path):
    path = write_md_json(tmp_path / "md.json", [{"file": "a.jpg", "detections": []}], version="2.0")
    with pytest.raises(DetectionsError, match=r"format_version '2.0' is not supported \(only 1.x\)"):
        load_detections(path, _manifest(["a.jpg"]))


def test_not_megadetector_output(tmp_path):
    path = tmp_path / "md.json"
    path.write_text(json.dumps({"annotations": []}))
    with pytest.raises(DetectionsError, match="no 'images' list"):
        load_detections(path, _manifest(["a.jpg"]))


def test_paths_relative_to_another_folder_are_explained(tmp_path):
    path = write_md_json(tmp_path / "md.json", [{"file": "/mnt/cam/a.jpg", "detections": []}])
    with pytest.raises(DetectionsError, match="none of its 1 file names matches a manifest rel_path"):
        load_detections(path, _manifest(["images/a.jpg"]))


def test_duplicate_file_entries(tmp_path):
    path = write_md_json(tmp_path / "md.json", [{"file": "a.jpg", "detections": []}, {"file": "a.jpg", "detections": []}])
    with pytest.raises(DetectionsError, match=r"images\[1\] repeats file 'a.jpg'"):
        load_detections(path, _manifest(["a.jpg"]))


def test_running_megadetector_without_the_package_explains_the_options(tmp_path):
    try:
        import megadetector  # noqa: F401

        pytest.skip("megadetector is installed here")
    except ImportError:
        pass
    plan = plan_from_dict(
        {"data": {"detections": None}, "members": [{"backbone": "test_resnet", "threshold": 0.05, "recipe": "geo"}]},
        tmp_path,
        check_backbones=False,
    )
    with pytest.raises(DetectionsError, match=r"set data.detections to a MegaDetector batch output JSON.*megadetector_weights"):
        detector_from_megadetector(_manifest(["a.jpg"]), plan)
