"""Reading what the training stage left on disk for the ensemble: OOF/test tables, member facts and gates,
and whether a member's OOF covers what it should (every cropped training image once)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import polars as pl

from ens_assets.data.folds import read_folds
from ens_assets.plan import Plan
from ens_assets.training.checkpoint_store import CheckpointStore

NON_CLASS_COLUMNS = ("image_id", "fold", "label")
SMOKE_ONLY_OOF = "smoke only: fold 0's validation images, from the short smoke run (not an ensemble input)"
CV_OOF = "every training image once (k folds)"


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
    store = CheckpointStore(plan)
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
        info[key] = store.member_facts(key)
    return MemberOutputs(oof=oof, test=test, classes=classes or [], info=info, excluded=excluded,
                         test_labels=test_labels(plan))  # fmt: skip


def test_labels(plan: Plan) -> dict[str, str]:
    """Labels the manifest keeps for test images (sites held out by data.test_site_fraction / test_sites)."""
    if not plan.manifest_path.is_file():
        return {}
    manifest = pl.read_parquet(plan.manifest_path, columns=["image_id", "label", "split"])
    labelled = manifest.filter((pl.col("split") == "test") & pl.col("label").is_not_null())
    return dict(labelled.select("image_id", "label").iter_rows())


def image_sites(plan: Plan) -> dict[str, str] | None:
    """image_id -> site from the folds table (the bootstrap resamples sites); None when there is none."""
    if not plan.folds_path.is_file():
        return None
    folds = read_folds(plan)
    if "site" not in folds.columns or folds["site"].null_count():
        return None
    return dict(folds.select("image_id", pl.col("site").cast(pl.String)).iter_rows())


def member_table(plan: Plan, spec: dict, excluded: dict[str, str]) -> pl.DataFrame:
    """Every member of the plan: which gate it passed, its weight, or why it is not in the ensemble."""
    store = CheckpointStore(plan)
    weights = spec.get("weights", {})
    rows = []
    for m in plan.members:
        verdict = store.verdict(m.key)
        gate = "not run" if verdict is None else ("passed" if verdict.passed else "FAILED")
        if m.key in weights:
            why = ""
        elif verdict is not None and not verdict.passed:
            why = "smoke gate failed: " + "; ".join(verdict.reasons)
        else:
            why = excluded.get(m.key, "")
        rows.append({"member": m.key, "stage": m.stage, "smoke gate": gate,
                     "weight": float(weights[m.key]) if m.key in weights else None, "why not in": why})  # fmt: skip
    return pl.DataFrame(rows, schema={"member": pl.String, "stage": pl.String, "smoke gate": pl.String,
                                      "weight": pl.Float64, "why not in": pl.String})  # fmt: skip


@dataclass(frozen=True)
class OofCoverage:
    coverage: str  # what the OOF should cover at the member's stage
    expected: int
    duplicated: int
    missing: int
    extra: int

    @property
    def ok(self) -> bool:
        return self.duplicated == 0 and self.missing == 0 and self.extra == 0


def oof_coverage(plan: Plan, member_key: str) -> OofCoverage:
    """Whether a member's OOF table holds each cropped training image once (fold 0's at stage smoke)."""
    member = plan.member(member_key)
    oof = pl.read_parquet(plan.oof_path(member.key))
    # Quarantined images have no crop, so they cannot have a prediction; the rest must, once.
    cropped = CheckpointStore(plan).cropped_image_ids(member.threshold)
    folds = read_folds(plan).join(cropped, on="image_id")
    expected = folds if member.stage == "cv" else folds.filter(pl.col("fold") == 0)
    return OofCoverage(
        coverage=CV_OOF if member.stage == "cv" else SMOKE_ONLY_OOF,
        expected=expected.height,
        duplicated=oof.height - oof["image_id"].n_unique(),
        missing=expected.join(oof, on="image_id", how="anti").height,
        extra=oof.join(expected, on="image_id", how="anti").height,
    )
