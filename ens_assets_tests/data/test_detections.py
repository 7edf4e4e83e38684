import json
import unicodedata

import polars as pl
import pytest

from ens_assets.data.detections import (
    DETECTIONS_SCHEMA,
    DetectionsError,
    detector_from_megadetector,
    load_detections,
    max_detection_conf,
    read_detections,
)
from ens_assets.data.ingest import ingest_conservision
from ens_assets.plan import plan_from_dict

from ens_assets_tests.data.small_datasets import write_md_json


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
    unmatched = read_detections(path, manifest).unmatched
    assert unmatched == [{"file": "not/in/manifest.jpg", "reason": "no manifest image has this path"}]

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


@pytest.mark.parametrize("version", ["1.0", "1.1", "1.2", "1.3", "1.4", "1.5", 1.1, None])
def test_format_versions_1_0_to_1_5(tmp_path, version):
    images = [{"file": "a.jpg", "max_detection_conf": 0.9, "detections": [{"category": "1", "conf": 0.9, "bbox": [0.1, 0.1, 0.5, 0.5]}]}]
    info = {"detector": "md_v5a.0.0.pt"} if version is None else {"format_version": version}
    path = tmp_path / "md.json"
    path.write_text(json.dumps({"info": info, "detection_categories": {"1": "Animal"}, "images": images}))
    loaded = read_detections(path, _manifest(["a.jpg"]))
    assert loaded.format_version == ("1.0" if version is None else str(version))
    assert loaded.table["category"].to_list() == ["animal"] and loaded.table["problem"].to_list() == [None]


def test_windows_separators_and_absolute_paths_match_the_manifest(tmp_path):
    manifest = _manifest(["cam1/a.jpg", "cam1/b.jpg", "cam2/c.jpg", "d.jpg", "cam2/e.jpg"])
    box = [{"category": "1", "conf": 0.8, "bbox": [0.1, 0.1, 0.4, 0.4]}]
    images = [
        {"file": "C:\\Users\\field\\traps\\cam1\\a.jpg", "detections": box},  # Windows absolute
        {"file": "/home/field/traps/cam1/b.jpg", "detections": box},  # POSIX absolute
        {"file": "cam2\\c.jpg", "detections": box},  # Windows relative
        {"file": "\\\\nas\\traps\\d.jpg", "detections": box},  # UNC share
        {"file": "/other/place/zzz.jpg", "detections": box},
    ]
    loaded = read_detections(write_md_json(tmp_path / "md.json", images), manifest)
    status = dict(loaded.table.select("rel_path", "status").iter_rows())
    assert [status[r] for r in ("cam1/a.jpg", "cam1/b.jpg", "cam2/c.jpg", "d.jpg")] == ["ok"] * 4
    assert loaded.table.filter(pl.col("conf") == 0.8).height == 4
    assert status["cam2/e.jpg"] == "not_in_json" and loaded.matched_by_suffix == 3
    assert loaded.unmatched == [{"file": "/other/place/zzz.jpg", "reason": "no manifest image has this path"}]
    summary = loaded.summary()
    assert summary["images_by_status"] == {"not_in_json": 1, "ok": 4} and summary["n_unmatched_entries"] == 1


@pytest.mark.parametrize("manifest_form,json_form", [("NFC", "NFD"), ("NFD", "NFC")])
def test_unicode_names_match_across_nfc_and_nfd(tmp_path, manifest_form, json_form):
    name = "Réserve/élan_ça.jpg"
    manifest = _manifest([unicodedata.normalize(manifest_form, name)])
    box = [{"category": "1", "conf": 0.7, "bbox": [0.2, 0.2, 0.3, 0.3]}]
    path = write_md_json(tmp_path / "md.json", [{"file": unicodedata.normalize(json_form, name), "detections": box}])
    loaded = read_detections(path, manifest)
    assert loaded.table["status"].to_list() == ["ok"] and loaded.table["conf"].to_list() == [0.7]
    assert loaded.unmatched == []


def test_entries_for_images_outside_the_manifest_are_counted_and_listed(tmp_path):
    manifest = _manifest(["a.jpg", "b.jpg"])
    images = [
        {"file": "a.jpg", "detections": []},
        {"file": "gone/x.jpg", "detections": []},
        {"file": "gone/y.jpg", "failure": "Failure image access"},
        {"file": "/abs/a.jpg", "detections": []},  # a second entry for a.jpg through its tail
    ]
    loaded = read_detections(write_md_json(tmp_path / "md.json", images), manifest)
    assert [u["file"] for u in loaded.unmatched] == ["gone/x.jpg", "gone/y.jpg", "/abs/a.jpg"]
    assert "another entry already describes 'a.jpg'" in loaded.unmatched[2]["reason"]
    assert dict(loaded.table.select("rel_path", "status").iter_rows()) == {"a.jpg": "ok", "b.jpg": "not_in_json"}


def test_failures_and_missing_images_fall_back_and_people_are_never_cropped_as_animals(tmp_path):
    """Real JPEGs through the crop builder: failure / not_in_json / person-only frames become full-frame
    fallbacks (counted); crops.categories decides which detector categories are cropped."""
    from ens_assets.data.crops import build_crop_cache
    from ens_assets.plan import CropConfig

    from .exif_photos import write_photo

    rels = ["ok.jpg", "failed.jpg", "absent.jpg", "person.jpg", "vehicle.jpg"]
    for n, rel in enumerate(rels):
        write_photo(tmp_path / rel, n, size=(64, 48))
    manifest = _manifest(rels).with_columns(pl.Series("path", [str(tmp_path / r) for r in rels]))
    box = [0.2, 0.2, 0.5, 0.5]
    images = [
        {"file": "ok.jpg", "detections": [{"category": "1", "conf": 0.9, "bbox": box}]},
        {"file": "failed.jpg", "failure": "Failure image access", "detections": None},
        {"file": "person.jpg", "detections": [{"category": "2", "conf": 0.95, "bbox": box}]},
        {"file": "vehicle.jpg", "detections": [{"category": "3", "conf": 0.95, "bbox": box}]},
    ]
    detections = load_detections(write_md_json(tmp_path / "md.json", images), manifest)
    summary = build_crop_cache(manifest, detections, 0.2, CropConfig(image_size=16), tmp_path / "crops", workers=1)
    assert summary["n_used"] == 1 and summary["n_fallback_only"] == 4 and summary["n_quarantined"] == 0
    assert summary["detection_status"] == {"failure": 1, "not_in_json": 1, "ok": 3}
    with_people = build_crop_cache(
        manifest, detections, 0.2, CropConfig(image_size=16, categories=("animal", "Person")), tmp_path / "crops2", workers=1
    )
    assert with_people["n_used"] == 2 and with_people["n_fallback_only"] == 3
