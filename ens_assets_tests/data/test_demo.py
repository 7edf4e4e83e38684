import json

import polars as pl
import pytest

from ens_assets.data.demo import GENERATOR_VERSION, generate_demo
from ens_assets.plan import CLASSES_CONSERVISION, DemoConfig

from ens_assets_tests.data.small_datasets import SMALL_DEMO, demo_labels


def _file_bytes(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_files_and_other_seed_differs(small_demo, tmp_path):
    again = tmp_path / "again"
    generate_demo(again, SMALL_DEMO)
    assert _file_bytes(again) == _file_bytes(small_demo)

    other = tmp_path / "other"
    generate_demo(other, SMALL_DEMO.model_copy(update={"seed": SMALL_DEMO.seed + 1}))
    a, b = _file_bytes(small_demo), _file_bytes(other)
    assert a["megadetector.json"] != b["megadetector.json"]
    assert sum(a[k] != b[k] for k in a if k.startswith("images/") and k in b) > 0


def test_layout_counts_sites_and_info(small_demo):
    train = pl.read_csv(small_demo / "train_features.csv")
    test = pl.read_csv(small_demo / "test_features.csv")
    labels = pl.read_csv(small_demo / "train_labels.csv")
    assert train.columns == ["id", "filepath", "site"] and test.columns == ["id", "filepath", "site"]
    assert labels.columns == ["id", *CLASSES_CONSERVISION]
    assert train.height == 8 * SMALL_DEMO.train_images_per_class and test.height == 8 * SMALL_DEMO.test_images_per_class
    assert labels.select(pl.sum_horizontal(pl.exclude("id"))).to_series().to_list() == [1] * train.height
    assert set(train["site"]).isdisjoint(set(test["site"]))
    assert set(train["site"]) <= {"S01", "S02", "S03"} and set(test["site"]) == {"S04"}
    for rel in train["filepath"].to_list() + test["filepath"].to_list():
        assert rel.startswith("images/") and (small_demo / rel).is_file()
    info = json.loads((small_demo / "demo_info.json").read_text())
    assert info["seed"] == SMALL_DEMO.seed and info["generator_version"] == GENERATOR_VERSION
    assert info["cfg"] == SMALL_DEMO.model_dump(mode="json")
    assert info["counts"]["train_images"] == train.height


def test_megadetector_json_shape_and_failures(small_demo):
    md = json.loads((small_demo / "megadetector.json").read_text())
    assert md["info"]["format_version"] == "1.4"
    assert md["detection_categories"]["1"] == "animal"
    assert len(md["images"]) == 40
    failures = [e for e in md["images"] if e.get("failure")]
    assert len(failures) >= 1 and all(e["detections"] is None for e in failures)
    for entry in md["images"]:
        for det in entry.get("detections") or []:
            x, y, w, h = det["bbox"]
            assert 0 <= x <= 1 and 0 <= y <= 1 and x + w <= 1.0001 and y + h <= 1.0001
            assert det["conf"] >= 0.005


def test_idempotent_and_regenerates_on_config_change(small_demo, tmp_path):
    root = tmp_path / "demo"
    generate_demo(root, SMALL_DEMO)
    marker = root / "images" / "marker.txt"
    marker.write_text("untouched")  # survives only if the second call does nothing
    generate_demo(root, SMALL_DEMO)
    assert marker.is_file()
    generate_demo(root, SMALL_DEMO.model_copy(update={"test_images_per_class": 2}))
    assert not marker.is_file()
    assert pl.read_csv(root / "test_features.csv").height == 16
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left behind


def test_refuses_to_overwrite_a_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "precious.jpg").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="not a demo folder"):
        generate_demo(tmp_path / "mine", SMALL_DEMO)
    assert (tmp_path / "mine" / "precious.jpg").is_file()


def test_simulated_detector_is_weaker_on_small_animals(tmp_path):
    """The threshold lever at the source: rodents/birds sit in 0.05-0.2 far more often than big animals."""
    root = tmp_path / "demo"
    cfg = DemoConfig(seed=1, train_images_per_class=25, test_images_per_class=1, train_sites=4, test_sites=1)
    generate_demo(root, cfg)
    labels = demo_labels(root)
    md = json.loads((root / "megadetector.json").read_text())
    best = {}
    for entry in md["images"]:
        image_id = entry["file"].split("/")[-1].removesuffix(".jpg")
        confs = [d["conf"] for d in entry.get("detections") or [] if d["category"] == "1"]
        best[image_id] = max(confs, default=0.0)

    def share_in_band(classes):
        ids = [i for i, c in labels.items() if c in classes]
        return sum(0.05 <= best[i] < 0.2 for i in ids) / len(ids)

    assert share_in_band({"rodent", "bird"}) > 0.25
    assert share_in_band({"leopard", "hog"}) < 0.15
    blank_noise = [best[i] for i, c in labels.items() if c == "blank" and best[i] > 0]
    assert blank_noise and max(blank_noise) <= 0.15
