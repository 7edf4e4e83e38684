import json
import shutil
from pathlib import Path

import polars as pl
import pytest

from ens_assets.data.ingest import (
    MANIFEST_SCHEMA,
    ManifestError,
    class_names,
    ingest_coco,
    ingest_conservision,
    ingest_imagefolder,
    ingest_zamba,
    load_manifest,
    manifest_summary,
)
from ens_assets.plan import CLASSES_CONSERVISION, plan_from_dict

from ens_assets_tests.data.small_datasets import demo_labels

MEMBERS = [{"backbone": "test_resnet", "threshold": 0.05, "recipe": "geo"}]


def _copy_demo(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_csv(path: Path, edit) -> None:
    lines = path.read_text().splitlines()
    path.write_text("\n".join(edit(lines)) + "\n")


def _train_images(root: Path) -> list[tuple[str, str, str]]:
    """(image id, class, site) of the demo's train images."""
    labels = demo_labels(root)
    features = pl.read_csv(root / "train_features.csv")
    return [(i, labels[i], s) for i, s in features.select("id", "site").iter_rows()]


def _check_schema(manifest: pl.DataFrame, root: Path) -> None:
    assert manifest.schema == MANIFEST_SCHEMA
    for path, rel in manifest.select("path", "rel_path").iter_rows():
        assert Path(path).is_absolute() and Path(path) == root.resolve() / rel and "\\" not in rel


def test_conservision_layout(small_demo):
    manifest = ingest_conservision(small_demo)
    _check_schema(manifest, small_demo)
    train, test = manifest.filter(pl.col("split") == "train"), manifest.filter(pl.col("split") == "test")
    assert train.height == 32 and test.height == 8
    assert test["label"].null_count() == 8 and train["label"].null_count() == 0
    assert class_names(manifest) == sorted(CLASSES_CONSERVISION)
    labels = demo_labels(small_demo)
    assert all(labels[i] == lab for i, lab in train.select("image_id", "label").iter_rows())


def test_load_manifest_dispatches_on_the_plan(small_demo, tmp_path):
    plan = plan_from_dict({"data": {"layout": "demo", "root": str(small_demo)}, "members": MEMBERS}, tmp_path, check_backbones=False)
    manifest = load_manifest(plan)
    assert manifest.height == 40
    summary = manifest_summary(manifest)
    assert summary["n_images"] == 40 and summary["n_per_split"] == {"test": 8, "train": 32}
    assert sum(summary["per_split"]["train"].values()) == 32
    assert summary["per_split"]["test"] == {"(unlabelled)": 8}
    assert set(summary["per_site"]) == set(manifest["site"])


def test_zamba_layout_with_and_without_site(small_demo, tmp_path):
    root = _copy_demo(small_demo, tmp_path / "zamba")
    rows = _train_images(root)
    lines = ["filepath,label,site"] + [f"images/{i}.jpg,{c},{s}" for i, c, s in rows]
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    manifest = ingest_zamba(root)
    _check_schema(manifest, root)
    assert manifest.height == len(rows) and set(manifest["split"]) == {"train"}
    assert manifest["image_id"].to_list() == [f"images/{i}.jpg" for i, _, _ in rows]
    assert set(manifest["site"]) == {s for _, _, s in rows}

    (root / "nosite.csv").write_text("\n".join(["filepath,label"] + [f"images/{i}.jpg,{c}" for i, c, _ in rows]) + "\n")
    assert set(ingest_zamba(root, "nosite.csv")["site"]) == {"unknown"}


def test_imagefolder_layout_class_and_optional_site_folders(small_demo, tmp_path):
    root = tmp_path / "folder"
    rows = _train_images(small_demo)
    for n, (i, c, s) in enumerate(rows):
        target = root / c / s if n % 2 else root / c  # both depths are allowed
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(small_demo / "images" / f"{i}.jpg", target / f"{i}.jpg")
    (root / "README.txt").write_text("files beside the class folders are ignored")
    (root / "rodent" / ".DS_Store").write_bytes(b"hidden files are ignored")
    manifest = ingest_imagefolder(root)
    _check_schema(manifest, root)
    assert manifest.height == len(rows)
    by_id = {Path(r).stem: (lab, site) for r, lab, site in manifest.select("rel_path", "label", "site").iter_rows()}
    for n, (i, c, s) in enumerate(rows):
        assert by_id[i] == (c, s if n % 2 else "unknown")

    (root / "rodent" / "S01" / "deeper").mkdir(parents=True)
    (root / "rodent" / "S01" / "deeper" / "x.jpg").write_bytes(b"")
    with pytest.raises(ManifestError, match="nested too deep"):
        ingest_imagefolder(root)


def _coco(root: Path, rows, extra_annotations=()):
    categories = [{"id": 0, "name": "empty"}] + [{"id": n + 1, "name": c} for n, c in enumerate(CLASSES_CONSERVISION) if c != "blank"]
    ids = {c["name"]: c["id"] for c in categories}
    images, annotations = [], []
    for n, (i, c, s) in enumerate(rows):
        images.append({"id": n, "file_name": f"images/{i}.jpg", "location": s, "width": 64, "height": 48})
        annotations.append({"id": f"a{n}", "image_id": n, "category_id": ids["empty" if c == "blank" else c]})
    data = {"info": {}, "images": images, "categories": categories, "annotations": annotations + list(extra_annotations)}
    (root / "cct.json").write_text(json.dumps(data))


def test_coco_camera_traps_layout(small_demo, tmp_path):
    root = _copy_demo(small_demo, tmp_path / "coco")
    rows = _train_images(root)
    _coco(root, rows)
    manifest = ingest_coco(root, "cct.json")
    _check_schema(manifest, root)
    assert manifest["label"].to_list() == [c for _, c, _ in rows]  # category 0 "empty" -> "blank"
    assert manifest["site"].to_list() == [s for _, _, s in rows]

    _coco(root, rows, extra_annotations=[{"id": "bad", "image_id": 0, "category_id": 99}])
    with pytest.raises(ManifestError, match=r"annotations\[\d+\] \(id bad\) has unknown category_id 99"):
        ingest_coco(root, "cct.json")


def test_test_site_fraction_holds_out_whole_sites(small_demo, tmp_path):
    root = _copy_demo(small_demo, tmp_path / "zamba")
    rows = _train_images(root)
    (root / "labels.csv").write_text("\n".join(["filepath,label,site"] + [f"images/{i}.jpg,{c},{s}" for i, c, s in rows]) + "\n")
    raw = {"data": {"layout": "zamba", "root": str(root), "test_site_fraction": 0.3}, "members": [{"backbone": "test_resnet", "recipe": "geo"}]}
    manifest = load_manifest(plan_from_dict(raw, tmp_path, check_backbones=False))
    test_sites = set(manifest.filter(pl.col("split") == "test")["site"])
    train_sites = set(manifest.filter(pl.col("split") == "train")["site"])
    assert len(test_sites) == 1 and test_sites.isdisjoint(train_sites)
    # Held-out sites keep their labels: they give each member and combiner a test score.
    assert manifest.filter(pl.col("split") == "test")["label"].null_count() == 0

    (root / "nosite.csv").write_text("\n".join(["filepath,label"] + [f"images/{i}.jpg,{c}" for i, c, _ in rows]) + "\n")
    raw["data"]["labels_file"] = "nosite.csv"
    with pytest.raises(ManifestError, match="would leave no training site"):
        load_manifest(plan_from_dict(raw, tmp_path, check_backbones=False))


# --- bad manifests: a ManifestError naming the file, the row and the fix ------------------------


def test_unknown_label_in_one_hot_columns(small_demo, tmp_path):
    root = _copy_demo(small_demo, tmp_path / "d")
    _edit_csv(root / "train_labels.csv", lambda lines: [lines[0] + ",unicorn"] + [line + ",0" for line in lines[1:]])
    with pytest.raises(ManifestError, match=r"train_labels.csv: unknown label column\(s\) \['unicorn'\]"):
        ingest_conservision(root)


def test_one_hot_row_without_exactly_one_class(small_demo, tmp_path):
    root = _copy_demo(small_demo, tmp_path / "d")
    _edit_csv(root / "train_labels.csv", lambda lines: [lines[0], lines[1].rsplit(",", 8)[0] + ",1" * 8, *lines[2:]])
    with pytest.raises(ManifestError, match=r"train_labels.csv row 2 \(id ZJ\d+\): one-hot row has 8 ones"):
        ingest_conservision(root)


def test_empty_label_in_zamba_csv(small_demo, tmp_path):
    root = _copy_demo(small_demo, tmp_path / "d")
    (root / "labels.csv").write_text("filepath,label\nimages/a.jpg,rodent\nimages/b.jpg,\n")
    with pytest.raises(ManifestError, match=r"labels.csv row 3: empty label"):
        ingest_zamba(root)


def test_duplicate_id(small_demo, tmp_path):
    root = _copy_demo(small_demo, tmp_path / "d")
    first_train_id = (root / "train_features.csv").read_text().splitlines()[1].split(",")[0]
    _edit_csv(root / "test_features.csv", lambda lines: [lines[0], f"{first_train_id},images/x.jpg,S04", *lines[1:]])
    with pytest.raises(ManifestError, match=rf"test_features.csv row 2 \(id {first_train_id}\): duplicate image id .*first seen at .*train_features.csv row 2"):
        ingest_conservision(root)


def test_path_escaping_the_data_root(small_demo, tmp_path):
    root = _copy_demo(small_demo, tmp_path / "d")
    _edit_csv(root / "test_features.csv", lambda lines: [lines[0], "ZZ1,../../etc/passwd,S04", *lines[1:]])
    with pytest.raises(ManifestError, match=r"test_features.csv row 2 \(id ZZ1\): path '../../etc/passwd' escapes the data root"):
        ingest_conservision(root)
    (root / "labels.csv").write_text("filepath,label\n/etc/hosts,rodent\n")
    with pytest.raises(ManifestError, match=r"labels.csv row 2: path '/etc/hosts' escapes the data root"):
        ingest_zamba(root)


def test_missing_required_column(small_demo, tmp_path):
    root = _copy_demo(small_demo, tmp_path / "d")
    _edit_csv(root / "train_features.csv", lambda lines: [line.rsplit(",", 1)[0] for line in lines])
    with pytest.raises(ManifestError, match=r"train_features.csv: missing required column\(s\) \['site'\]"):
        ingest_conservision(root)


def test_missing_image_file_is_not_a_manifest_error(small_demo, tmp_path):
    root = _copy_demo(small_demo, tmp_path / "d")
    first = sorted((root / "images").iterdir())[0]
    first.unlink()
    manifest = ingest_conservision(root)
    assert manifest.height == 40 and manifest.filter(pl.col("path") == str(first)).height == 1


def test_labels_in_nfc_find_a_file_named_in_nfd(tmp_path):
    import unicodedata

    from .exif_photos import write_photo

    nfd = unicodedata.normalize("NFD", "Forêt/chevreuil_été.jpg")
    write_photo(tmp_path / nfd, 0)
    (tmp_path / "labels.csv").write_text(f"filepath,label\n{unicodedata.normalize('NFC', 'Forêt/chevreuil_été.jpg')},deer\n")
    manifest = ingest_zamba(tmp_path)
    assert Path(manifest["path"][0]).is_file()
