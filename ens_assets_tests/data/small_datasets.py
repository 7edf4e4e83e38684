"""Helpers of the data-core tests: a small demo's settings and writers of tiny datasets."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from ens_assets.plan import DemoConfig

SMALL_DEMO = DemoConfig(
    seed=3, train_images_per_class=4, test_images_per_class=1, train_sites=3, test_sites=1, frame_width=64, frame_height=48
)


def demo_labels(root: Path) -> dict[str, str]:
    """image id -> class, read back from the demo's one-hot labels."""
    with open(root / "train_labels.csv") as fh:
        return {row.pop("id"): next(k for k, v in row.items() if v == "1") for row in csv.DictReader(fh)}


def write_md_json(path: Path, images: list[dict], version: str = "1.4") -> Path:
    path.write_text(
        json.dumps(
            {
                "info": {"format_version": version, "detector": "test"},
                "detection_categories": {"1": "animal", "2": "person", "3": "vehicle"},
                "images": images,
            }
        )
    )
    return path
