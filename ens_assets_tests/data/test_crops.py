import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from ens_assets.data.crops import _Settings, build_crop_cache, crop_pixels, open_crop_cache
from ens_assets.data.detections import load_detections
from ens_assets.data.ingest import ingest_conservision
from ens_assets.plan import CropConfig

from . import bad_images

CFG = CropConfig(image_size=24, min_size_px=4)


def _detection_crops(cache, classes) -> int:
    return cache.index.filter((pl.col("source") == "detection") & pl.col("label").is_in(classes)).height


def test_threshold_lever_more_small_animal_crops_at_005(tiny_data):
    low, high = tiny_data["crops"]["0.05"], tiny_data["crops"]["0.20"]
    assert _detection_crops(low, ["rodent", "bird"]) > _detection_crops(high, ["rodent", "bird"])
    # ... at the cost of more noisy crops on blanks (false positives on rocks and plants).
    assert _detection_crops(low, ["blank"]) > _detection_crops(high, ["blank"]) == 0


def test_cache_files_and_accounting(tiny_data):
    plan, manifest = tiny_data["plan"], tiny_data["manifest"]
    for key, cache in tiny_data["crops"].items():
        s = cache.summary
        assert s["n_images"] == manifest.height == s["n_used"] + s["n_fallback_only"] + s["n_quarantined"]
        assert isinstance(cache.images, np.memmap) and cache.images.dtype == np.uint8 and not cache.images.flags.writeable
        assert cache.images.shape == (cache.index.height, 32, 32, 3)
        assert cache.index["row"].to_list() == list(range(cache.index.height))
        assert set(cache.index["image_id"]) == set(manifest["image_id"])  # train and test, one crop each ("top")
        assert cache.images[:8].std() > 5  # real pixels, not zeros
        assert open_crop_cache(plan.crops_dir(key)).content_hash() == cache.content_hash()
    assert tiny_data["crops"]["0.05"].content_hash() != tiny_data["crops"]["0.20"].content_hash()


def test_detection_crop_shows_the_box_region(tiny_data):
    """A detection crop is the box's region resized: compare with a direct crop of the source photo."""
    from PIL import Image

    cache, manifest = tiny_data["crops"]["0.20"], tiny_data["manifest"]
    row = cache.index.filter((pl.col("source") == "detection") & (pl.col("label") == "leopard")).row(0, named=True)
    path = manifest.filter(pl.col("image_id") == row["image_id"])["path"][0]
    photo = Image.open(path).convert("RGB")
    settings = _Settings(32, CFG.padding, True, 4, 10**8, True)
    rect = crop_pixels((row["x"], row["y"], row["w"], row["h"]), photo.width, photo.height, settings)
    expected = np.asarray(photo.resize((32, 32), Image.BILINEAR, box=rect)).astype(int)
    assert np.abs(cache.images[row["row"]].astype(int) - expected).mean() < 1


@pytest.mark.parametrize(
    ("box", "square", "expected"),
    [
        ((0.4, 0.4, 0.2, 0.1), False, (38.0, 39.0, 62.0, 51.0)),  # 20x10 box padded 10% each side: 24x12
        ((0.4, 0.4, 0.2, 0.1), True, (38.0, 33.0, 62.0, 57.0)),  # tightest square around the padded box
        ((0.0, 0.0, 0.2, 0.1), True, (0.0, 0.0, 24.0, 24.0)),  # shifted inside at the corner, still square
        ((0.0, 0.0, 1.0, 1.0), True, (0.0, 0.0, 100.0, 100.0)),  # larger than the frame: clamped
    ],
)
def test_crop_geometry(box, square, expected):
    settings = _Settings(32, 0.1, square, 8, 10**8, True)
    assert crop_pixels(box, 100, 100, settings) == pytest.approx(expected)


def test_boxes_below_min_size_are_skipped():
    assert crop_pixels((0.5, 0.5, 0.05, 0.5), 100, 100, _Settings(32, 0.1, True, 8, 10**8, True)) is None


def test_bad_inputs_are_quarantined_or_fall_back_and_every_image_is_counted(small_demo, tmp_path):
    root = tmp_path / "demo"
    shutil.copytree(small_demo, root)
    manifest = ingest_conservision(root)
    ids = manifest["image_id"].to_list()
    path_of = dict(manifest.select("image_id", "path").iter_rows())
    broken = {
        ids[0]: bad_images.truncated_jpeg,
        ids[1]: bad_images.not_an_image,
        ids[2]: lambda p: p.unlink(),
        ids[3]: lambda p: bad_images.huge_png(p, 2000, 1000),
    }
    odd_but_fine = {
        ids[4]: bad_images.cmyk_jpeg,
        ids[5]: bad_images.sixteen_bit_png,
        ids[6]: bad_images.rgba_png,
        ids[7]: bad_images.grayscale_jpeg,
        ids[8]: bad_images.exif_rotated_jpeg,
        ids[9]: bad_images.palette_png,
    }
    for image_id, write in {**broken, **odd_but_fine}.items():
        write(Path(path_of[image_id]))

    md = json.loads((root / "megadetector.json").read_text())
    rel_of = dict(manifest.select("image_id", "rel_path").iter_rows())
    entries = {e["file"]: e for e in md["images"]}
    bad_box, nan_conf = ids[10], ids[11]
    entries[rel_of[bad_box]].update(detections=[{"category": "1", "conf": 0.9, "bbox": [0.8, 0.8, 0.5, 0.5]}], failure=None)
    entries[rel_of[nan_conf]].update(detections=[{"category": "1", "conf": float("nan"), "bbox": [0.1, 0.1, 0.5, 0.5]}], failure=None)
    failed = ids[12]
    entries[rel_of[failed]].update(detections=None, failure="Failure image access")
    dropped = ids[13]
    del entries[rel_of[dropped]]
    md["images"] = list(entries.values())
    (root / "megadetector.json").write_text(json.dumps(md))

    detections = load_detections(root / "megadetector.json", manifest)
    summary = build_crop_cache(manifest, detections, 0.05, CFG, tmp_path / "crops", workers=2, max_pixels=1_000_000)
    cache = open_crop_cache(tmp_path / "crops")

    reasons = dict(cache.quarantine.select("image_id", "reason").iter_rows())
    assert set(reasons) == set(broken)
    assert reasons[ids[0]].startswith("truncated image data")
    assert reasons[ids[1]].startswith("not an image")
    assert reasons[ids[2]].startswith("missing file")
    assert reasons[ids[3]].startswith("decompression bomb")
    assert cache.quarantine.columns == ["image_id", "rel_path", "split", "reason"]

    sources = dict(cache.index.select("image_id", "source").iter_rows())
    assert set(odd_but_fine) <= set(sources)  # unusual formats still give crops
    for image_id in (bad_box, nan_conf, failed, dropped):
        assert sources[image_id] == "fallback"
    assert summary["n_problem_detections"] == 2
    assert summary["n_images"] == len(ids) == summary["n_used"] + summary["n_fallback_only"] + summary["n_quarantined"]
    assert summary["n_quarantined"] == 4 and len(sources) + 4 == len(ids)


def test_all_mode_keeps_every_box_and_workers_do_not_change_the_result(tiny_data, tmp_path):
    manifest, detections = tiny_data["manifest"], tiny_data["detections"]
    top_serial = build_crop_cache(manifest, detections, 0.05, CFG, tmp_path / "serial", workers=1)
    top_parallel = build_crop_cache(manifest, detections, 0.05, CFG, tmp_path / "parallel", workers=2)
    assert top_serial == top_parallel
    serial, parallel = open_crop_cache(tmp_path / "serial"), open_crop_cache(tmp_path / "parallel")
    assert serial.content_hash() == parallel.content_hash()
    assert np.array_equal(np.asarray(serial.images), np.asarray(parallel.images))

    every = build_crop_cache(manifest, detections, 0.05, CFG.model_copy(update={"mode": "all"}), tmp_path / "all", workers=2)
    assert every["n_detection_crops"] > top_serial["n_detection_crops"]
    assert every["n_used"] == top_serial["n_used"] and every["n_images"] == manifest.height
    per_image = open_crop_cache(tmp_path / "all").index.group_by("image_id").len()
    assert per_image["len"].max() > 1


def test_rebuild_replaces_the_cache_and_leaves_no_temp_folders(tiny_data, tmp_path):
    manifest, detections = tiny_data["manifest"], tiny_data["detections"]
    out = tmp_path / "crops" / "0.05"
    build_crop_cache(manifest, detections, 0.05, CFG, out, workers=1)
    (out / "stale.txt").write_text("from an older build")
    build_crop_cache(manifest.head(10), detections, 0.05, CFG, out, workers=1)
    assert not (out / "stale.txt").exists()
    assert open_crop_cache(out).summary["n_images"] == 10
    assert sorted(p.name for p in out.parent.iterdir()) == ["0.05"]


def test_opening_a_missing_cache_is_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="build it with build_crop_cache"):
        open_crop_cache(tmp_path / "nothing")
