import json
from datetime import datetime, timedelta

import polars as pl
import pytest

from ens_assets.data.folds import FoldError, assign_folds, check_folds, make_folds, read_folds, read_grouping, write_folds
from ens_assets.data.ingest import ingest_coco, ingest_zamba
from ens_assets.plan import FoldConfig

from .exif_photos import write_burst_dataset, write_photo


def test_folds_split_by_site(tiny_data):
    folds, manifest, plan = tiny_data["folds"], tiny_data["manifest"], tiny_data["plan"]
    assert folds.columns == ["image_id", "site", "label", "group", "fold"]
    assert folds.height == manifest.filter(pl.col("split") == "train").height  # test sites never enter a fold
    assert set(folds["fold"]) == set(range(plan.folds.k))
    assert folds["group"].to_list() == folds["site"].to_list()  # 6 sites >= k: auto groups by site
    assert folds.group_by("site").agg(pl.col("fold").n_unique())["fold"].max() == 1
    report = check_folds(folds)
    assert report.ok and report.groups_in_several_folds == []
    assert pl.read_parquet(plan.folds_path).equals(read_folds(plan)) and read_folds(plan).equals(folds)


def test_folds_files_are_read_back_through_the_folds_module(tiny_data, tmp_path):
    plan = tiny_data["plan"].model_copy(update={"workdir": str(tmp_path / "work")})
    with pytest.raises(FileNotFoundError, match=r"folds.parquet: no folds table; materialize the folds asset first"):
        read_folds(plan)
    assert read_grouping(plan) == {}
    frame, grouping = make_folds(tiny_data["manifest"], plan.folds)
    write_folds(plan, frame, grouping)
    assert read_folds(plan).equals(frame)
    assert read_grouping(plan) == json.loads(json.dumps(grouping.as_dict())) and read_grouping(plan)["group_by"] == "site"


def test_folds_are_deterministic(tiny_data):
    # (StratifiedGroupKFold's seed only breaks ties between equally distributed sites, so other seeds
    # often give the same folds; determinism for a given seed is what skip-when-fresh relies on.)
    manifest = tiny_data["manifest"]
    assert assign_folds(manifest, 3, 5).equals(assign_folds(manifest, 3, 5))


def test_fewer_sites_than_k_names_the_fix(tiny_data):
    with pytest.raises(FoldError, match=r"folds.k = 7 but the train split has only 6 site\(s\).*set folds.group_by"):
        assign_folds(tiny_data["manifest"], 7, 0, group_by="site")


def _fold_per_truth(folds: pl.DataFrame, manifest: pl.DataFrame, truth: dict[str, str]) -> pl.DataFrame:
    by_rel = folds.join(manifest.select("image_id", "rel_path"), on="image_id")
    return by_rel.with_columns(pl.col("rel_path").replace_strict(truth).alias("truth"))


def test_exif_bursts_never_span_folds(tmp_path):
    """No site column (one site 'unknown'), no sequence ids: auto groups the EXIF bursts of real JPEGs."""
    truth = write_burst_dataset(tmp_path, cameras=3, bursts_per_camera=4, frames=3)
    manifest = ingest_zamba(tmp_path)
    folds, grouping = make_folds(manifest, FoldConfig(k=3, seed=0))
    assert grouping.group_by == "burst" and grouping.requested == "auto" and grouping.warning is None
    assert grouping.n_groups == 12 and grouping.details["n_with_capture_time"] == 36
    labelled = _fold_per_truth(folds, manifest, truth)
    # the recovered groups are exactly the true bursts, and no burst spans two folds
    pairs = labelled.select("truth", "group").unique()
    assert pairs.height == 12 and pairs["truth"].n_unique() == 12 and pairs["group"].n_unique() == 12
    assert labelled.group_by("truth").agg(pl.col("fold").n_unique())["fold"].max() == 1
    assert sorted(set(folds["fold"])) == [0, 1, 2]
    assert check_folds(folds).ok
    # a gap shorter than the 2 s between frames splits every burst into single frames
    _, tight = make_folds(manifest, FoldConfig(k=3, group_by="burst", burst_gap_s=1.0))
    assert tight.n_groups == 36


def test_bursts_are_per_camera_even_in_one_folder(tmp_path):
    """Two camera bodies shooting at the same second into one folder are two bursts, not one."""
    lines = ["filepath,label"]
    start = datetime(2024, 1, 1, 12, 0, 0)
    for i in range(12):
        serial = f"SN{i % 2}"
        rel = f"dump/{serial}_{i:02d}.jpg"
        write_photo(tmp_path / rel, i, taken=start + timedelta(minutes=5 * (i // 4), seconds=i % 4 // 2), camera=("Bushnell", "Core", serial))
        lines.append(f"{rel},{['bird', 'hog'][i // 4 % 2]}")
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    manifest = ingest_zamba(tmp_path)
    folds, grouping = make_folds(manifest, FoldConfig(k=2))
    assert grouping.group_by == "burst" and grouping.n_groups == 6  # 3 triggers x 2 bodies
    assert check_folds(folds).ok


def _coco_with_sequences(root, n_seq=9, frames=3, location="cam1"):
    images, annotations = [], []
    for s in range(n_seq):
        for f in range(frames):
            i = s * frames + f
            write_photo(root / f"{location}/{i:03d}.jpg", i, taken=None, camera=None)
            images.append({"id": f"im{i}", "file_name": f"{location}/{i:03d}.jpg", "location": location, "seq_id": f"seq{s}",
                           "frame_num": f})  # fmt: skip
            annotations.append({"id": f"a{i}", "image_id": f"im{i}", "category_id": 1 + s % 3})
    categories = [{"id": 0, "name": "empty"}, {"id": 1, "name": "deer"}, {"id": 2, "name": "fox"}, {"id": 3, "name": "hare"}]
    (root / "cct.json").write_text(json.dumps({"info": {}, "images": images, "categories": categories, "annotations": annotations}))


def test_sequences_never_span_folds(tmp_path):
    _coco_with_sequences(tmp_path)
    manifest = ingest_coco(tmp_path, "cct.json")
    assert manifest["sequence"].n_unique() == 9
    folds, grouping = make_folds(manifest, FoldConfig(k=3))
    assert grouping.group_by == "sequence" and grouping.n_groups == 9
    per_seq = folds.join(manifest.select("image_id", "sequence"), on="image_id").group_by("sequence").agg(pl.col("fold").n_unique())
    assert per_seq["fold"].max() == 1
    assert check_folds(folds).ok


def test_nothing_to_group_by_falls_back_to_images_with_a_warning(tmp_path):
    lines = ["filepath,label"]
    for i in range(12):
        write_photo(tmp_path / f"{i}.jpg", i, taken=None, camera=None)  # no EXIF time, no site, no sequence
        lines.append(f"{i}.jpg,{['bird', 'hog', 'rodent'][i % 3]}")
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    manifest = ingest_zamba(tmp_path)
    folds, grouping = make_folds(manifest, FoldConfig(k=3))
    assert grouping.group_by == "image" and grouping.n_groups == 12
    assert "frames of one burst may land in different folds" in grouping.warning
    assert folds.group_by("fold").agg(pl.col("label").n_unique())["label"].min() == 3  # still stratified
    with pytest.raises(FoldError, match="folds.group_by = burst but no train image has an EXIF DateTimeOriginal"):
        make_folds(manifest, FoldConfig(k=3, group_by="burst"))
    with pytest.raises(FoldError, match="folds.group_by = sequence but no train image has a sequence id"):
        make_folds(manifest, FoldConfig(k=3, group_by="sequence"))


def test_check_folds_reports_leakage_and_missing_classes():
    folds = pl.DataFrame(
        {
            "image_id": ["a", "b", "c", "d", "e"],
            "site": ["S1", "S1", "S2", "S3", "S3"],
            "label": ["rodent", "bird", "rodent", "bird", "rodent"],
            "group": ["b1", "b1", "b2", "b3", "b3"],
            "fold": [0, 1, 1, 0, 0],
        }
    )
    report = check_folds(folds)
    assert not report.ok and report.groups_in_several_folds == ["b1"]
    assert report.classes_missing == {}

    no_leak = folds.with_columns(pl.when(pl.col("group") == "b1").then(0).otherwise(pl.col("fold")).alias("fold"))
    report = check_folds(no_leak)
    assert report.ok and report.classes_missing == {1: ["bird"]}
    assert any("fold 1" in w and "bird" in w for w in report.warnings)
    # a table written before the group column existed is checked by site
    assert check_folds(folds.drop("group")).groups_in_several_folds == ["S1"]
