"""Training tests' tiny projects: a crop cache + folds table written directly in the crop stage's format (no demo
rendering or detector, so these tests stay fast and independent of the data stage; read through the data
stage's real `open_crop_cache`), and private copies of the session's shared demo project.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl

from ens_assets.plan import Plan, plan_from_dict
from ens_assets_tests.tiny_plan import AUGMENTED_RECIPES, SHARED_PROJECT, budget, member, merged, tiny_plan

CLASSES = ["bird", "hog", "leopard", "rodent"]
IMAGE_SIZE = 32
SITES = [f"S{i}" for i in range(6)]
TRACKING = {"experiment": "ens-assets-tests", "default_store": "mlruns.db"}


def _class_image(label: int, rng: np.random.Generator) -> np.ndarray:
    """A learnable pattern: class-specific colour and stripe orientation plus noise."""
    base = np.array([[200, 60, 60], [60, 200, 60], [60, 60, 200], [200, 200, 60]][label], dtype=np.float64)
    grid = np.arange(IMAGE_SIZE)
    stripes = ((grid[:, None] if label % 2 else grid[None, :]) // 4 % 2) * 40.0
    image = base[None, None, :] + stripes[..., None] + rng.normal(0, 25, (IMAGE_SIZE, IMAGE_SIZE, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def write_tiny_crop_cache(out_dir: Path, folds_path: Path, seed: int = 0) -> None:
    """48 train images over 6 sites (some with two crops, as crop mode 'all' gives), 12 test images."""
    rng = np.random.default_rng(seed)
    images, index_rows, fold_rows = [], [], []
    for n in range(60):
        split = "train" if n < 48 else "test"
        label = n % len(CLASSES)
        site = SITES[(n // 4) % len(SITES)] if split == "train" else "T0"
        image_id = f"img{n:03d}"
        for crop in range(2 if n % 5 == 0 else 1):
            index_rows.append(dict(row=len(images), image_id=image_id, label=CLASSES[label] if split == "train" else None,
                                   site=site, split=split, source="detection", conf=0.9 - 0.1 * crop,
                                   x=0.1, y=0.1, w=0.5, h=0.5))  # fmt: skip
            images.append(_class_image(label, rng))
        if split == "train":
            fold_rows.append(dict(image_id=image_id, site=site, label=CLASSES[label], fold=SITES.index(site) % 3))
    out_dir.mkdir(parents=True, exist_ok=True)
    np.save(out_dir / "images.npy", np.stack(images))
    pl.DataFrame(index_rows).write_parquet(out_dir / "index.parquet")
    pl.DataFrame(schema={"image_id": pl.String, "rel_path": pl.String, "split": pl.String, "reason": pl.String}).write_parquet(
        out_dir / "quarantine.parquet"
    )
    (out_dir / "summary.json").write_text(json.dumps({"n_images": 60, "n_crops": len(images), "seed": seed}))
    folds_path.parent.mkdir(parents=True, exist_ok=True)
    pl.DataFrame(fold_rows).write_parquet(folds_path)


def tiny_plan_dict(**training_overrides) -> dict:
    """The plan of the written crop cache (no data section: nothing reads the frames); k = 3 as its folds table."""
    return tiny_plan(
        data=None,
        crops={"image_size": IMAGE_SIZE},
        folds={"k": 3},
        recipes=AUGMENTED_RECIPES,
        training={"lr": 0.01, "seed": 0, "smoke": budget(1, 60, 2), "cv": budget(2, 60, 2), **training_overrides},
        members=[member(0.05), member(0.2, "mixup", "smoke")],
        tracking=TRACKING,
    )


def make_tiny_plan(base_dir: Path, raw: dict | None = None) -> Plan:
    plan = plan_from_dict(raw or tiny_plan_dict(), base_dir)
    for key in plan.threshold_keys:
        if not (plan.crops_dir(key) / "index.parquet").is_file():
            write_tiny_crop_cache(plan.crops_dir(key), plan.folds_path)
    return plan


def copy_tiny_project(tiny_data: dict, base_dir: Path, **training_overrides) -> Plan:
    """A private copy of the shared tiny demo's manifest, crops and folds under base_dir, with the same plan.

    Training tests write checkpoints and edit the plan, so they never touch the shared session project.
    """
    source: Plan = tiny_data["plan"]
    raw = merged(SHARED_PROJECT, {"data": None, "training": training_overrides, "tracking": TRACKING})
    plan = plan_from_dict(raw, base_dir)
    for key in source.threshold_keys:
        shutil.copytree(source.crops_dir(key), plan.crops_dir(key))
    shutil.copy2(source.folds_path, plan.folds_path)
    shutil.copy2(source.manifest_path, plan.manifest_path)
    return plan
