"""A tiny trained project for the inference tests: demo data, two cv members x two folds, one epoch, 16-24 px.

Built once per session (fixture `trained` in this folder's conftest); read-only for the tests, which
refit the combiner into their own folders.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from ens_assets_tests.tiny_plan import budget, member, prepare_demo_data, tiny_plan
from ens_assets_tests.tracking_store import new_tracking_store

PREDICT_PARAMS = tiny_plan(
    data={"root": "data/demo", "detections": "data/demo/megadetector.json",
          "demo": {"seed": 1, "train_images_per_class": 6, "test_images_per_class": 3, "train_sites": 4}},
    crops={"mode": "top", "min_size_px": 4, "image_size": 24},
    recipes={"geo": {"hflip": 0.5, "scale": [0.6, 1.0]}, "mixup": None},
    training={"smoke": budget(1, 60, 2), "cv": budget(1, 60, 2)},
    members=[
        member(0.05),
        # A smaller input than the crop cache's: its crops are resized down, as in training.
        member(0.2, image_size=16),
    ],
    ensemble={"bootstrap_replicates": 20},
    tracking={"experiment": "ens-assets-predict-tests", "default_store": "mlruns.db"},
)  # fmt: skip


@dataclass
class TrainedProject:
    params: Path
    plan: object  # ens_assets.plan.Plan
    tracking_uri: str


def build_trained_project(base: Path) -> TrainedProject:
    """Data stage, every checkpoint, OOF and test predictions of PREDICT_PARAMS under base (no ensemble yet)."""
    params = base / "params.yaml"
    params.write_text(yaml.safe_dump(PREDICT_PARAMS, sort_keys=False))
    uri = new_tracking_store(base / "mlruns.db")  # the plan's own default store (tracking.default_store)
    with _environ("MLFLOW_TRACKING_URI", uri):
        plan = _train_everything(params)
    return TrainedProject(params, plan, uri)


@contextmanager
def _environ(name: str, value: str):
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def _train_everything(params: Path):
    from ens_assets.member_runs import train_member_fold
    from ens_assets.plan import load_plan
    from ens_assets.training.run import predict_member_oof, predict_member_test

    plan = load_plan(params)
    prepare_demo_data(plan, workers=1)
    for member_key in plan.member_keys:
        for fold in plan.prediction_folds(member_key):  # the k folds (the smoke run predicts nothing)
            train_member_fold(plan, member_key, fold, log=lambda _: None)
        predict_member_oof(plan, member_key)
        predict_member_test(plan, member_key)
    return plan


def fit_ensemble(plan, method: str, out_dir: Path, result: list | None = None) -> Path:
    """Fit `method` on the members' OOF into out_dir (spec.json, submission.csv); return out_dir (and append the
    EnsembleResult to `result` when given)."""
    from ens_assets.ensemble.build import build_ensemble
    from ens_assets.member_outputs import collect_member_outputs

    outputs = collect_member_outputs(plan)
    cfg = plan.ensemble.model_copy(update={"method": method})
    built = build_ensemble(outputs.oof, outputs.test, outputs.classes, outputs.info, cfg, out_dir,
                           compare_methods=[method], test_labels=outputs.test_labels)
    if result is not None:
        result.append(built)
    return out_dir
