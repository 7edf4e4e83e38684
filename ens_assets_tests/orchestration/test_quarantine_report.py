"""Quarantine where people look: after the data and crops stages the CLI prints quarantined rows and images
by reason with the path of the full list, and the classes with fewer images than folds; the crops metadata
in Dagster shows the first quarantined images with their reasons."""

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

import dagster as dg

from ens_assets.cli import StageRunner
from ens_assets_tests.data import bad_images
from ens_assets_tests.instance_home import make_dagster_home

pytestmark = pytest.mark.slow


def _photo(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (45, 61, 3), dtype=np.uint8)).save(path, quality=90)


def test_cli_prints_quarantine_by_reason_and_small_classes(tmp_path, monkeypatch):
    home = make_dagster_home(tmp_path)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    root = tmp_path / "traps"
    root.mkdir()
    rows = ["filepath,label"]
    for i in range(16):
        label = ("civet", "hog")[i % 2]
        _photo(root / f"img{i:02d}.jpg", i)
        rows.append(f"img{i:02d}.jpg,{label}")
    _photo(root / "lonely.jpg", 99)
    rows.append("lonely.jpg,leopard")  # one image, three folds
    bad_images.truncated_jpeg(root / "cut.jpg")
    rows.append("cut.jpg,civet")
    bad_images.not_an_image(root / "notes.jpg")
    rows.append("notes.jpg,hog")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    params = {
        "data": {"layout": "zamba", "root": "traps", "detections": None},
        "crops": {"image_size": 32},
        "folds": {"k": 3},
        "members": [{"backbone": "test_resnet", "recipe": "geo", "stage": "smoke"}],
        "workdir": "work",
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))

    lines: list[str] = []
    runner = StageRunner(tmp_path / "params.yaml", out=lines.append)
    assert runner.run(("data", "crops")) == 0, "\n".join(lines)
    text = "\n".join(lines)
    key = runner.plan.threshold_keys[0]
    full_list = runner.plan.crops_dir(key) / "quarantine.parquet"
    assert "quarantined 2 of" in text and f"(full list: {full_list})" in text, text
    assert "truncated image data" in text and "not an image" in text
    assert any("fewer images than folds.k = 3" in line and "leopard" in line for line in lines), text

    materialization = runner.instance.get_latest_materialization_event(dg.AssetKey("crops"))
    examples = materialization.asset_materialization.metadata["quarantine_examples"].value
    assert "cut.jpg" in examples and "truncated image data" in examples
