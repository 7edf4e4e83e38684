"""Reading what the training stage left on disk for the ensemble: OOF/test tables and member facts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import polars as pl

from ens_assets.plan import Plan
from ens_assets.training.checkpoint import read_sidecar

NON_CLASS_COLUMNS = ("image_id", "fold", "label")


@dataclass
class MemberOutputs:
    oof: dict[str, pl.DataFrame]
    test: dict[str, pl.DataFrame]
    classes: list[str]
    info: dict[str, dict[str, Any]]  # flops_per_image, param_count, mlflow_run_ids per member
    excluded: dict[str, str] = field(default_factory=dict)  # member -> why it is not in the ensemble
    # image_id -> label of labelled test images (held-out sites); empty when the test split is unlabelled or absent
    test_labels: dict[str, str] = field(default_factory=dict)


def collect_member_outputs(plan: Plan) -> MemberOutputs:
    """Members at stage cv with OOF and test tables join the ensemble; every other member is listed with why."""
    oof: dict[str, pl.DataFrame] = {}
    test: dict[str, pl.DataFrame] = {}
    info: dict[str, dict[str, Any]] = {}
    excluded: dict[str, str] = {}
    classes: list[str] | None = None
    for member in plan.members:
        key = member.key
        if member.stage != "cv":
            excluded[key] = "stage smoke: its OOF covers fold 0 only; promote it to cv to join the ensemble"
            continue
        oof_path, test_path = plan.oof_path(key), plan.test_predictions_path(key)
        if not oof_path.is_file() or not test_path.is_file():
            excluded[key] = "no OOF/test predictions yet: materialize oof_predictions and test_predictions"
            continue
        frame = pl.read_parquet(oof_path)
        member_classes = [c for c in frame.columns if c not in NON_CLASS_COLUMNS]
        if classes is None:
            classes = member_classes
        elif member_classes != classes:
            excluded[key] = f"class columns {member_classes} differ from the other members' {classes}"
            continue
        oof[key], test[key] = frame, pl.read_parquet(test_path)
        info[key] = _member_facts(plan, key)
    return MemberOutputs(oof=oof, test=test, classes=classes or [], info=info, excluded=excluded,
                         test_labels=test_labels(plan))


def test_labels(plan: Plan) -> dict[str, str]:
    """Labels the manifest keeps for test images (sites held out by data.test_site_fraction / test_sites)."""
    if not plan.manifest_path.is_file():
        return {}
    manifest = pl.read_parquet(plan.manifest_path, columns=["image_id", "label", "split"])
    labelled = manifest.filter((pl.col("split") == "test") & pl.col("label").is_not_null())
    return dict(labelled.select("image_id", "label").iter_rows())


def _member_facts(plan: Plan, member: str) -> dict[str, Any]:
    facts: dict[str, Any] = {"mlflow_run_ids": []}
    for fold in plan.prediction_folds(member):
        stored = read_sidecar(plan.checkpoint_dir(member, fold))
        if stored is None:
            continue
        metrics = stored.get("metrics", {})
        for name in ("flops_per_image", "param_count"):
            if name in metrics:
                facts[name] = int(metrics[name])
        if stored.get("mlflow_run_id"):
            facts["mlflow_run_ids"].append(stored["mlflow_run_id"])
    facts.setdefault("flops_per_image", 0)
    facts.setdefault("param_count", 0)
    # Test predictions average every prediction checkpoint (k fold models at cv): that is the inference cost.
    facts["models_at_inference"] = len(plan.prediction_folds(member))
    facts["inference_flops_per_image"] = facts["flops_per_image"] * facts["models_at_inference"]
    facts["mlflow_run_id"] = facts["mlflow_run_ids"][0] if facts["mlflow_run_ids"] else None
    return facts


def checkpoints_complete(plan: Plan, member: str) -> bool:
    """Whether every checkpoint the member's predictions need exists."""
    return all(read_sidecar(plan.checkpoint_dir(member, f)) is not None for f in plan.prediction_folds(member))


def member_cost(plan: Plan, member: str) -> float:
    """FLOPs per image recorded by the member's checkpoints; inf until measured, so an untried
    backbone (possibly heavy) is scheduled after the members known to be cheap."""
    for fold in plan.checkpoint_folds(member):
        flops = (read_sidecar(plan.checkpoint_dir(member, fold)) or {}).get("metrics", {}).get("flops_per_image")
        if flops:
            return float(flops)
    return float("inf")
