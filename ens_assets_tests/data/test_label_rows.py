"""Bad label rows are quarantined with the reason (same table and counts as bad images), not fatal;
data.strict keeps fail-fast; CSV encodings, folders named like images and tiny classes are explained."""

from __future__ import annotations

import json
import shutil

import polars as pl
import pytest

from ens_assets.data.crops import build_crop_cache, open_crop_cache
from ens_assets.data.detections import no_detector_table
from ens_assets.data.ingest import ManifestError, classes_below, ingest, ingest_conservision
from ens_assets.data.quarantine import RowQuarantine
from ens_assets.plan import CropConfig, plan_from_dict

from .exif_photos import write_photo


def _plan(tmp_path, **data):
    raw = {"data": {"layout": "zamba", "root": "photos", **data}, "members": [{"backbone": "test_resnet", "recipe": "geo"}]}
    return plan_from_dict(raw, tmp_path, check_backbones=False)


@pytest.fixture
def messy_zamba(tmp_path):
    root = tmp_path / "photos"
    for i in range(6):
        write_photo(root / f"cam/{i}.jpg", i)
    (root / "cam" / "burst.jpg").mkdir()  # a folder that looks like an image
    write_photo(tmp_path / "elsewhere.jpg", 99)
    (root / "labels.csv").write_text(
        "filepath,label\n"
        "cam/0.jpg,bird\n"  # row 2
        "cam/1.jpg,\n"  # row 3: empty label
        "cam/2.jpg,hog\n"  # row 4
        "cam/2.jpg,bird\n"  # row 5: duplicate path
        "../elsewhere.jpg,hog\n"  # row 6: outside the root
        ",bird\n"  # row 7: empty path
        "cam/3.jpg,bird\n"
        "cam/4.jpg,hog\n"
        "cam/5.jpg,hog\n"
        "cam/burst.jpg,bird\n"  # row 11: a folder
    )
    return tmp_path


def test_bad_label_rows_are_quarantined_with_their_reason(messy_zamba):
    ingested = ingest(_plan(messy_zamba))
    assert sorted(ingested.manifest["rel_path"]) == ["cam/0.jpg", "cam/2.jpg", "cam/3.jpg", "cam/4.jpg", "cam/5.jpg", "cam/burst.jpg"]
    reasons = dict(ingested.quarantine.select("image_id", "reason").iter_rows())
    assert set(reasons) == {"labels.csv:3", "labels.csv:5", "labels.csv:6", "labels.csv:7"}
    assert "row 3: empty label" in reasons["labels.csv:3"]
    assert "row 5: duplicate image id 'cam/2.jpg'" in reasons["labels.csv:5"]
    assert "row 6: path '../elsewhere.jpg' escapes the data root" in reasons["labels.csv:6"]
    assert "row 7: empty file path" in reasons["labels.csv:7"]


def test_strict_keeps_fail_fast(messy_zamba):
    with pytest.raises(ManifestError, match=r"labels.csv row 3: empty label"):
        ingest(_plan(messy_zamba, strict=True))


def test_label_rows_share_the_crop_quarantine_table_and_counts(messy_zamba):
    ingested = ingest(_plan(messy_zamba))
    manifest = ingested.manifest
    out = messy_zamba / "crops"
    summary = build_crop_cache(
        manifest, no_detector_table(manifest), "full", CropConfig(image_size=16), out, workers=1, label_rows=ingested.quarantine
    )
    # 10 data rows: 5 usable images, 1 folder named like an image, 4 bad label rows
    assert summary["n_images"] == 10 and summary["n_quarantined"] == 5 and summary["n_quarantined_label_rows"] == 4
    assert summary["n_used"] + summary["n_fallback_only"] + summary["n_quarantined"] == summary["n_images"]
    quarantine = open_crop_cache(out).quarantine
    folder = quarantine.filter(pl.col("rel_path") == "cam/burst.jpg")["reason"].to_list()
    assert folder == ["is a folder, not an image file: point its row at the image inside it or remove the row"]
    assert set(quarantine["image_id"]) >= {"labels.csv:3", "labels.csv:5", "labels.csv:6", "labels.csv:7"}
    assert summary["quarantined_by_reason"]["empty label"] == 1 and summary["quarantined_by_reason"]["is a folder, not an image file"] == 1


def test_latin1_csv_is_read_with_a_note_or_named_by_row(tmp_path):
    root = tmp_path / "photos"
    write_photo(root / "forêt" / "a.jpg", 0)  # UTF-8 name on disk, as after copying from Windows
    write_photo(root / "b.jpg", 1)
    (root / "labels.csv").write_bytes("filepath,label\nb.jpg,hog\nforêt/a.jpg,chevreuil\n".encode("latin-1"))
    ingested = ingest(_plan(tmp_path))
    assert sorted(ingested.manifest["rel_path"]) == ["b.jpg", "forêt/a.jpg"]
    assert all(p.endswith("b.jpg") or "forêt" in p for p in ingested.manifest["path"])
    (note,) = ingested.notes
    assert "row 3 is not valid UTF-8 (byte 0xea" in note and "read it as cp1252" in note
    with pytest.raises(ManifestError, match=r"labels.csv: row 3 is not valid utf-8 \(byte 0xea.*set data.encoding"):
        ingest(_plan(tmp_path, encoding="utf-8"))
    assert ingest(_plan(tmp_path, encoding="latin-1")).notes == []


def _classes(tmp_path, counts: dict[str, int]):
    root = tmp_path / "photos"
    lines = ["filepath,label"]
    n = 0
    for label, count in counts.items():
        for _ in range(count):
            write_photo(root / f"{n}.jpg", n)
            lines.append(f"{n}.jpg,{label}")
            n += 1
    (root / "labels.csv").write_text("\n".join(lines) + "\n")


def test_classes_with_fewer_images_than_folds_are_reported_and_dropped_or_merged_only_on_request(tmp_path):
    _classes(tmp_path, {"bird": 4, "hog": 4, "pangolin": 2, "okapi": 1})
    kept = ingest(_plan(tmp_path))
    assert kept.small_classes == {"okapi": 1, "pangolin": 2} and kept.manifest.height == 11  # k = 3 by default
    assert kept.quarantine.height == 0
    dropped = ingest(_plan(tmp_path, min_class_images=2))
    assert dropped.manifest.height == 10 and set(dropped.manifest["label"]) == {"bird", "hog", "pangolin"}
    (reason,) = dropped.quarantine["reason"].to_list()
    assert "class 'okapi' has 1 image(s) < data.min_class_images = 2; dropped" in reason
    merged = ingest(_plan(tmp_path, min_class_images=3, small_classes="merge", merged_class="rare"))
    assert merged.manifest.filter(pl.col("label") == "rare").height == 3 and merged.quarantine.height == 0
    assert classes_below(merged.manifest, 3) == {}


def test_conservision_bad_one_hot_row_quarantines_its_image(small_demo, tmp_path):
    root = tmp_path / "demo"
    shutil.copytree(small_demo, root)
    lines = (root / "train_labels.csv").read_text().splitlines()
    bad_id = lines[1].split(",")[0]
    lines[1] = ",".join([bad_id] + ["1"] * (len(lines[1].split(",")) - 1))  # every class set
    (root / "train_labels.csv").write_text("\n".join(lines) + "\n")
    rows = RowQuarantine(strict=False)
    manifest = ingest_conservision(root, rows_out=rows)
    assert bad_id not in set(manifest["image_id"]) and manifest.height == 39
    reasons = rows.frame()["reason"].to_list()
    assert len(reasons) == 2 and "one-hot row has 8 ones" in reasons[0] and "its labels row was quarantined" in reasons[1]


def test_coco_annotation_with_unknown_category_quarantines_its_image(tmp_path):
    root = tmp_path / "photos"
    for i in range(4):
        write_photo(root / f"{i}.jpg", i)
    data = {
        "images": [{"id": i, "file_name": f"{i}.jpg", "location": "L1"} for i in range(4)],
        "categories": [{"id": 0, "name": "empty"}, {"id": 1, "name": "deer"}],
        "annotations": [{"id": 10 + i, "image_id": i, "category_id": 7 if i == 2 else 1} for i in range(4)],
    }
    (root / "cct.json").write_text(json.dumps(data))
    ingested = ingest(_plan(tmp_path, layout="coco", labels_file="cct.json"))
    assert sorted(ingested.manifest["image_id"]) == ["0", "1", "3"]
    assert "unknown category_id 7" in ingested.quarantine["reason"][0]
