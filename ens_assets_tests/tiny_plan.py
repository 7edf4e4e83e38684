"""The one tiny-plan factory of the tests: a params.yaml dict small enough for CI, changed per test.

`tiny_plan(**sections)` starts from TINY (a demo project of 64 train frames at 96x72, two thresholds, 32 px
crops, k = 2, two test_resnet members, one-epoch budgets) and merges each keyword into its section: dicts merge
key by key (recursively), any other value replaces, and None removes the key (the plan's default applies).
Each test file states only how its plan differs, so what a test depends on stays visible beside it.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

TINY: dict[str, Any] = {
    "data": {
        "layout": "demo",
        "root": "demo",
        "detections": "demo/megadetector.json",
        "demo": {"seed": 0, "train_images_per_class": 8, "test_images_per_class": 2, "train_sites": 6,
                 "test_sites": 2, "frame_width": 96, "frame_height": 72},
    },  # fmt: skip
    "crops": {"thresholds": [0.05, 0.2], "image_size": 32},
    "folds": {"k": 2, "seed": 0},
    "recipes": {"geo": {}, "mixup": {"mixup_alpha": 0.2, "cutmix_alpha": 1.0}},
    "training": {
        "batch_size": 16,
        "warmup_epochs": 0,
        "smoke": {"epochs": 1, "time_budget_s": 60, "patience": 1},
        "cv": {"epochs": 1, "time_budget_s": 60, "patience": 1},
    },
    "members": [
        {"backbone": "test_resnet", "threshold": 0.05, "recipe": "geo", "stage": "cv"},
        {"backbone": "test_resnet", "threshold": 0.2, "recipe": "geo", "stage": "cv"},
    ],
    "workdir": "work",
}

# One epoch on a few dozen crops proves the plumbing, not the learning: the smoke gate asks only for finite losses.
FINITE_LOSS_GATE = {"min_accuracy_over_chance": 0.0, "require_every_class_predicted": False, "require_loss_decrease": False}

# The recipes of the repository's params.yaml (flips, scale jitter, label smoothing; mixup/cutmix).
AUGMENTED_RECIPES = {
    "geo": {"hflip": 0.5, "scale": [0.6, 1.0], "label_smoothing": 0.1},
    "mixup": {"hflip": 0.5, "scale": [0.6, 1.0], "mixup_alpha": 0.2, "cutmix_alpha": 1.0, "mix_prob": 0.8},
}


def budget(epochs: int, time_budget_s: float = 60, patience: int | None = None) -> dict[str, Any]:
    """A smoke or cv budget; patience defaults to the epochs (no early stop before the last epoch)."""
    return {"epochs": epochs, "time_budget_s": time_budget_s, "patience": patience or epochs}


def member(threshold: float | None, recipe: str = "geo", stage: str = "cv", backbone: str = "test_resnet", **fields) -> dict:
    """One members entry; threshold None for a plan without detections."""
    entry = {"backbone": backbone, "threshold": threshold, "recipe": recipe, "stage": stage, **fields}
    return {k: v for k, v in entry.items() if v is not None}


def merged(base: dict, changes: dict) -> dict:
    """A deep copy of `base` with `changes` merged in: dicts recursively, None deletes, anything else replaces."""
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def tiny_plan(**sections: Any) -> dict[str, Any]:
    """A fresh tiny params dict: TINY with each section's changes merged in (see the module docstring)."""
    return merged(TINY, sections)


def write_params(folder: Path, params: dict[str, Any], name: str = "params.yaml") -> Path:
    """params as YAML in folder/name, in the order given; returns the path."""
    path = Path(folder) / name
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


# The session's shared demo project (conftest's tiny_params / tiny_data fixtures), at the repo's data/ paths.
SHARED_PROJECT = tiny_plan(
    data={"root": "data/demo", "detections": "data/demo/megadetector.json",
          "demo": {"train_images_per_class": 10, "test_images_per_class": 3}},
    # min_size_px 4: at 96x72 a rodent box is ~8 px wide; the default 8 would make every small animal a fallback.
    crops={"mode": "top", "square": True, "padding": 0.1, "min_size_px": 4},
    recipes=AUGMENTED_RECIPES,
    training={"smoke": budget(2, 120, 3), "cv": budget(2, 120, 3)},
    members=[member(0.05), member(0.2, "mixup", "smoke")],
)  # fmt: skip


def prepare_demo_data(plan, workers: int | None = None) -> dict[str, Any]:
    """The data and crops stages of a demo plan run with the data core in this process (when a test needs trained
    or cropped data but is not about those stages), written at the plan's conventional paths: the demo images,
    manifest, detections, folds, and one crop cache per threshold built at `plan.crop_settings` (the crop stage's
    settings: the cache size every member's input fits). `workers`: crop processes (None: the plan's).

    Returns what it made: demo_info, manifest, detections, folds, crop_summaries (by threshold key).
    """
    from ens_assets.atomic import write_parquet
    from ens_assets.data.crops import build_crop_cache
    from ens_assets.data.demo import generate_demo
    from ens_assets.data.detections import load_detections
    from ens_assets.data.folds import assign_folds
    from ens_assets.data.ingest import load_manifest

    demo_info = generate_demo(plan.data_root, plan.data.demo)
    manifest = load_manifest(plan)
    write_parquet(plan.manifest_path, manifest)
    detections = load_detections(plan.path(plan.data.detections), manifest)
    write_parquet(plan.detections_path, detections)
    crop_summaries = {
        key: build_crop_cache(manifest, detections, float(key), plan.crop_settings, plan.crops_dir(key), workers=workers)
        for key in plan.threshold_keys
    }
    folds = assign_folds(manifest, plan.folds.k, plan.folds.seed)
    write_parquet(plan.folds_path, folds)
    return {"demo_info": demo_info, "manifest": manifest, "detections": detections, "folds": folds,
            "crop_summaries": crop_summaries}  # fmt: skip
