"""The training stage's entry points: train one (member, fold) checkpoint, predict OOF and test.

What the Dagster layer calls. Everything here reads the plan, the crop cache of the member's
threshold and the folds table, and writes only under plan.work (atomically).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import polars as pl
import torch

from ens_assets import mlflow_store
from ens_assets.atomic import write_parquet
from ens_assets.code_version import code_version
from ens_assets.plan import SMOKE_FOLD, Member, Plan, PlanError, stable_hash, threshold_key
from ens_assets.training.checkpoint import discard_recovery, load_checkpoint, read_sidecar, save_checkpoint
from ens_assets.training.augment import resize_crops
from ens_assets.training.device import select_device
from ens_assets.training.loop import train_member_model
from ens_assets.training.metrics import per_class_metrics, probability_metrics, write_confusion_matrix
from ens_assets.training.models import count_parameters, create_member_model, flops_per_image
from ens_assets.training.predict import per_image_mean, predict_proba

RECOVERY_SUBDIR = "recovery"


@dataclass
class CheckpointResult:
    member: str
    fold: str
    checkpoint_dir: Path
    skipped: bool  # True: the saved checkpoint was fresh, nothing was trained
    fingerprint: str
    metrics: dict[str, Any] = field(default_factory=dict)
    mlflow_run_id: str | None = None
    mlflow_url: str | None = None


@dataclass
class _FoldInputs:
    """A member's crops joined to the folds table (train split) and its test crops."""

    images: np.ndarray  # the crop cache's uint8 memmap, N x S x S x 3
    train_crops: pl.DataFrame  # row, image_id, label, fold (one row per crop of a training image)
    test_crops: pl.DataFrame  # row, image_id
    classes: list[str]
    crops_hash: str
    folds_hash: str
    images_without_crops: int  # training images the crop stage quarantined (no crop at this threshold)
    image_size: int  # the member's input size; the cache may hold larger crops (the largest any member needs)

    def gather(self, rows: pl.Series) -> np.ndarray:
        """The crops of `rows`, at the member's input size."""
        return resize_crops(np.ascontiguousarray(self.images[rows.to_numpy()]), self.image_size)


# --- fingerprints ---------------------------------------------------------------------------------
def checkpoint_spec(plan: Plan, member: Member | str, fold: int | str) -> dict[str, Any]:
    """What determines one checkpoint: the member's spec at the budget of this fold partition.

    The member's stage is left out (the smoke budget is the smoke partition's, the cv budget the fold
    partitions'), so promoting a member from smoke to cv does not invalidate its smoke checkpoint.
    """
    spec = {k: v for k, v in plan.member_spec(member).items() if k not in ("stage", "budget")}
    return {**spec, "budget": plan.budget_for_fold(fold, member).model_dump(mode="json"), "fold": str(fold)}


# What trains a checkpoint is the code this module runs. MLflow logging does not change a checkpoint, and the
# subset-ensemble trainer runs only for subset members, so an edit to either retrains nothing else.
TRAINING_CODE_ROOT = "ens_assets.training.run"
_REPORTING_ONLY = ("ens_assets.mlflow_store",)
_SUBSET_TRAINER = "ens_assets.subsets.member_training"


def training_code_version(member: Member) -> str:
    """Hash of the project sources that train this member's checkpoints (see ens_assets.code_version)."""
    skip = _REPORTING_ONLY if member.strategy == "subset" else (*_REPORTING_ONLY, _SUBSET_TRAINER)
    return code_version([TRAINING_CODE_ROOT], skip)


def fingerprint(plan: Plan, member: Member | str, fold: int | str, crops_hash: str, folds_hash: str) -> str:
    m = plan.member(member) if isinstance(member, str) else member
    return stable_hash(
        {"spec": stable_hash(checkpoint_spec(plan, m, fold)), "crops": crops_hash, "folds": folds_hash, "fold": str(fold),
         "code": training_code_version(m)}
    )  # fmt: skip


def _folds_hash(folds: pl.DataFrame) -> str:
    ordered = folds.select("image_id", "fold").sort("image_id")
    digest = hashlib.sha256()
    for image_id, fold in ordered.iter_rows():
        digest.update(f"{image_id}\t{fold}\n".encode())
    return digest.hexdigest()[:16]


# --- inputs ---------------------------------------------------------------------------------------
def _member_and_fold(plan: Plan, member_key: str, fold: int | str) -> tuple[Member, str]:
    member = plan.member(member_key)
    fold_key = str(fold)
    allowed = plan.checkpoint_folds(member)
    if fold_key not in allowed:
        if member.stage != "cv" and fold_key in plan.fold_keys:
            raise PlanError(
                f"{member_key} is at stage 'smoke', which trains only partition '{SMOKE_FOLD}' (fold 0's split at the "
                f"smoke budget). To train fold {fold_key}, once its smoke run passed, promote it to stage: cv in params.yaml"
            )
        raise PlanError(f"{member_key}: fold '{fold_key}' is not a checkpoint partition of this member; use one of {allowed}")
    return member, fold_key


def _held_out_fold(fold_key: str) -> int:
    """The fold a checkpoint partition validates on: the smoke run uses fold 0's split."""
    return 0 if fold_key == SMOKE_FOLD else int(fold_key)


def _load_inputs(plan: Plan, member: Member) -> _FoldInputs:
    from ens_assets.data.crops import open_crop_cache  # the data stage's module

    crops_dir = plan.crops_dir(threshold_key(member.threshold))
    if not plan.folds_path.is_file():
        raise FileNotFoundError(f"{plan.folds_path}: no folds table; materialize the folds asset first")
    if not crops_dir.is_dir():
        raise FileNotFoundError(f"{crops_dir}: no crop cache for threshold {threshold_key(member.threshold)}; materialize crops first")
    cache = open_crop_cache(crops_dir)
    folds = pl.read_parquet(plan.folds_path)
    missing = {"image_id", "label", "fold"} - set(folds.columns)
    if missing:
        raise ValueError(f"{plan.folds_path}: missing columns {sorted(missing)}; rebuild the folds asset")
    index = cache.index
    train_index = index.filter(pl.col("split") == "train").select("row", "image_id")
    train_crops = train_index.join(folds.select("image_id", "label", "fold"), on="image_id", how="inner").sort("row")
    unfolded = train_index.join(folds, on="image_id", how="anti")
    if unfolded.height:
        raise ValueError(
            f"{crops_dir}: {unfolded['image_id'].n_unique()} training images have crops but no fold in {plan.folds_path} "
            f"(e.g. {unfolded['image_id'].head(3).to_list()}); the crops and folds are from different manifests: rebuild folds"
        )
    without_crops = folds.join(train_index, on="image_id", how="anti").height
    test_crops = index.filter(pl.col("split") == "test").select("row", "image_id").sort("row")
    return _FoldInputs(
        images=cache.images,
        train_crops=train_crops,
        test_crops=test_crops,
        classes=sorted(folds["label"].cast(pl.Utf8).unique().to_list()),
        crops_hash=str(cache.content_hash()),
        folds_hash=_folds_hash(folds),
        images_without_crops=without_crops,
        image_size=plan.image_size(member),
    )


def _label_indices(labels: pl.Series, classes: list[str]) -> np.ndarray:
    lookup = {c: i for i, c in enumerate(classes)}
    return np.array([lookup[str(v)] for v in labels.to_list()], dtype=np.int64)


# --- training -------------------------------------------------------------------------------------
def checkpoint_is_fresh(plan: Plan, member_key: str, fold: int | str) -> bool:
    """Whether the saved checkpoint was trained from exactly the current spec, crops and folds."""
    member, fold_key = _member_and_fold(plan, member_key, fold)
    sidecar = read_sidecar(plan.checkpoint_dir(member.key, fold_key))
    if sidecar is None:
        return False
    try:
        inputs = _load_inputs(plan, member)
    except (FileNotFoundError, ValueError):
        return False
    return sidecar.get("fingerprint") == fingerprint(plan, member, fold_key, inputs.crops_hash, inputs.folds_hash)


def train_member_fold(
    plan: Plan, member_key: str, fold: int | str, *, log: Callable[[str], Any] = print,
    tracking: mlflow_store.Tracking | None = None,
) -> CheckpointResult:
    """Train (or skip when fresh) one checkpoint partition: train on the other folds' crops, validate
    on the held-out fold's, save the lowest-validation-loss weights and log an MLflow run to `tracking`
    (default: mlflow_store.resolve_tracking(plan))."""
    member, fold_key = _member_and_fold(plan, member_key, fold)
    out_dir = plan.checkpoint_dir(member.key, fold_key)
    inputs = _load_inputs(plan, member)
    print_ = fingerprint(plan, member, fold_key, inputs.crops_hash, inputs.folds_hash)

    sidecar = read_sidecar(out_dir)
    if sidecar is not None and sidecar.get("fingerprint") == print_:
        log(f"{member.key} fold {fold_key}: checkpoint is fresh ({print_}); skipping training")
        return CheckpointResult(
            member=member.key, fold=fold_key, checkpoint_dir=out_dir, skipped=True, fingerprint=print_,
            metrics=sidecar.get("metrics", {}), mlflow_run_id=sidecar.get("mlflow_run_id"), mlflow_url=sidecar.get("mlflow_url"),
        )  # fmt: skip

    started_unix = time.time()  # the MLflow run's start: its duration is the training's
    held_out = _held_out_fold(fold_key)
    train_part = inputs.train_crops.filter(pl.col("fold") != held_out)
    val_part = inputs.train_crops.filter(pl.col("fold") == held_out)
    if train_part.height < 2 or val_part.height < 2:
        raise ValueError(
            f"{member.key} fold {fold_key}: {train_part.height} training and {val_part.height} validation crops; "
            "each side needs at least 2. Use fewer folds or more data"
        )
    config = plan.training_config(member)
    budget = plan.budget_for_fold(fold_key, member)
    classes = inputs.classes
    log(
        f"{member.key} fold {fold_key}: {train_part.height} training crops, {val_part.height} validation crops, "
        f"{len(classes)} classes, budget {budget.epochs} epochs / {budget.time_budget_s:.0f}s"
    )
    fold_arrays = (
        inputs.gather(train_part["row"]), _label_indices(train_part["label"], classes),
        inputs.gather(val_part["row"]), _label_indices(val_part["label"], classes),
    )  # fmt: skip
    if member.strategy == "subset":
        # Same inputs and outputs as the standard loop; its extra metrics/artifacts/sidecar come in outcome.extra.
        from ens_assets.subsets.member_training import train_subset_member, write_scored_images

        data_key = stable_hash([inputs.crops_hash, inputs.folds_hash, fold_key])
        outcome = train_subset_member(plan, member, fold_key, *fold_arrays, classes, out_dir=out_dir, data_key=data_key,
                                      log=log, train_groups=train_part["image_id"].to_numpy())
        write_scored_images(out_dir, train_part[outcome.extra.pop("scored_rows").tolist()])
    else:
        outcome = train_member_model(
            member.backbone, len(classes), *fold_arrays,
            recipe=plan.recipes[member.recipe], config=config, budget=budget, seed=config.seed,
            out_dir=out_dir / RECOVERY_SUBDIR, pretrained=member.pretrained, base_dir=Path(plan.base_dir),
            resume_token=print_, log=log,
        )  # fmt: skip

    device = select_device()
    model = create_member_model(member.backbone, len(classes), None)
    model.load_state_dict(outcome.best_state)
    model.to(device)
    crop_probs = predict_proba(model, inputs.gather(val_part["row"]), config.batch_size * 2, device)
    image_ids, probs = per_image_mean(val_part, crop_probs)
    labels_by_image = dict(val_part.select("image_id", "label").unique().iter_rows())
    y_true = _label_indices(pl.Series([labels_by_image[i] for i in image_ids]), classes)
    y_pred = probs.argmax(axis=1)
    image_metrics = probability_metrics(y_true, probs, classes)

    metrics: dict[str, Any] = {
        "val_loss": image_metrics["log_loss"],
        "val_acc": image_metrics["accuracy"],
        "best_epoch": outcome.best_epoch,
        "best_val_loss_crops": outcome.best_val_loss,
        "epochs_run": outcome.epochs_run,
        "stopped_reason": outcome.stopped_reason,
        "resumed_from_epoch": outcome.resumed_from_epoch,
        "images_per_second": outcome.images_per_second,
        "wall_seconds": outcome.wall_seconds,
        "train_seconds": outcome.train_seconds,
        "peak_memory_mb": outcome.peak_memory_mb,
        "flops_per_image": flops_per_image(model, inputs.image_size),
        "image_size": inputs.image_size,
        "param_count": count_parameters(model),
        "n_train_crops": train_part.height,
        "n_val_crops": val_part.height,
        "n_val_images": len(image_ids),
        "images_without_crops": inputs.images_without_crops,
        **per_class_metrics(y_true, y_pred, classes),
        **outcome.extra.get("metrics", {}),
    }
    from ens_assets.promotion import evaluate_smoke

    verdict = evaluate_smoke(outcome.history, y_true, y_pred, classes, plan.promotion)
    confusion_json, confusion_png = write_confusion_matrix(out_dir, y_true, y_pred, classes)
    spec = checkpoint_spec(plan, member, fold_key)
    tracked = mlflow_store.log_checkpoint_run(
        tracking or mlflow_store.resolve_tracking(plan),
        tags={"member": member.key, "backbone": member.backbone, "threshold": threshold_key(member.threshold),
              "recipe": member.recipe, "fold": fold_key, "stage": member.stage, "strategy": member.strategy,
              "fingerprint": print_},
        params=spec, history=outcome.history, metrics=metrics,
        artifacts=[confusion_json, confusion_png, *outcome.extra.get("artifacts", [])],
        run_name=f"{member.key}|{fold_key}", started_unix=started_unix,
    )  # fmt: skip
    save_checkpoint(
        out_dir,
        outcome.best_state,
        {
            "fingerprint": print_,
            "code_version": training_code_version(member),
            "member": member.key,
            "fold": fold_key,
            "held_out_fold": held_out,
            "member_spec": plan.member_spec(member),
            "checkpoint_spec": spec,
            "backbone": member.backbone,
            "classes": classes,
            "epoch": outcome.best_epoch,
            "metrics": metrics,
            "history": outcome.history,
            "smoke_verdict": verdict.to_dict(),
            "mlflow_run_id": tracked.run_id,
            "mlflow_url": tracked.url,
            "created_unix": time.time(),
            **outcome.extra.get("sidecar", {}),
        },
    )
    discard_recovery(out_dir / RECOVERY_SUBDIR)
    log(f"{member.key} fold {fold_key}: val log loss {metrics['val_loss']:.4f}, accuracy {metrics['val_acc']:.3f} ({outcome.stopped_reason})")
    return CheckpointResult(
        member=member.key, fold=fold_key, checkpoint_dir=out_dir, skipped=False, fingerprint=print_,
        metrics=metrics, mlflow_run_id=tracked.run_id, mlflow_url=tracked.url,
    )  # fmt: skip


# --- prediction -----------------------------------------------------------------------------------
def _fresh_checkpoint_model(plan: Plan, member: Member, fold_key: str, inputs: _FoldInputs, device: torch.device):
    directory = plan.checkpoint_dir(member.key, fold_key)
    state_dict, sidecar = load_checkpoint(directory)
    expected = fingerprint(plan, member, fold_key, inputs.crops_hash, inputs.folds_hash)
    if sidecar.get("fingerprint") != expected:
        raise ValueError(
            f"{directory}: checkpoint is stale (trained from other settings, crops or folds than the plan's now); "
            f"re-materialize checkpoint partition {member.key}|{fold_key} before predicting"
        )
    model = create_member_model(member.backbone, len(sidecar["classes"]), None)
    model.load_state_dict(state_dict)
    return model.to(device), sidecar["classes"]


def predict_member_oof(plan: Plan, member_key: str) -> pl.DataFrame:
    """Out-of-fold probabilities: each training image once, predicted by the checkpoint that held it out.

    Columns image_id, fold, label, then one float column per class (the checkpoint's class order).
    Written to plan.oof_path(member).
    """
    member = plan.member(member_key)
    inputs = _load_inputs(plan, member)
    device = select_device()
    batch_size = plan.training_config(member).batch_size * 2
    frames, classes = [], None
    for fold_key in plan.prediction_folds(member):
        model, fold_classes = _fresh_checkpoint_model(plan, member, fold_key, inputs, device)
        if classes is not None and fold_classes != classes:
            raise ValueError(f"{member.key}: fold {fold_key} was trained on classes {fold_classes}, other folds on {classes}; retrain")
        classes = fold_classes
        held_out = _held_out_fold(fold_key)
        part = inputs.train_crops.filter(pl.col("fold") == held_out)
        image_ids, probs = per_image_mean(part, predict_proba(model, inputs.gather(part["row"]), batch_size, device))
        labels = part.select("image_id", "label").unique(subset="image_id")
        frame = pl.DataFrame({"image_id": image_ids, "fold": np.full(len(image_ids), held_out, dtype=np.int64)})
        frame = frame.join(labels, on="image_id", how="left").with_columns(pl.col("label").cast(pl.Utf8))
        frames.append(pl.concat([frame, pl.DataFrame(probs, schema=classes)], how="horizontal"))
    oof = pl.concat(frames).sort("image_id")
    write_parquet(plan.oof_path(member.key), oof)
    return oof


def predict_member_test(plan: Plan, member_key: str) -> pl.DataFrame:
    """Test-split probabilities per image averaged over the member's checkpoints; image_id + class columns.

    Written to plan.test_predictions_path(member).
    """
    member = plan.member(member_key)
    inputs = _load_inputs(plan, member)
    device = select_device()
    batch_size = plan.training_config(member).batch_size * 2
    test_images = inputs.gather(inputs.test_crops["row"])
    total, classes = None, None
    fold_keys = plan.prediction_folds(member)
    for fold_key in fold_keys:
        # Loaded even when there is nothing to predict: a stale checkpoint is an error either way.
        model, fold_classes = _fresh_checkpoint_model(plan, member, fold_key, inputs, device)
        if classes is not None and fold_classes != classes:
            raise ValueError(f"{member.key}: fold {fold_key} was trained on classes {fold_classes}, other folds on {classes}; retrain")
        classes = fold_classes
        if inputs.test_crops.height == 0:
            continue  # no test split (every image labelled and used for folds): an empty table, not an error
        probs = predict_proba(model, test_images, batch_size, device).astype(np.float64)
        total = probs if total is None else total + probs
    if total is None:
        image_ids, probs = np.array([], dtype=str), np.zeros((0, len(classes)), dtype=np.float32)
    else:
        image_ids, probs = per_image_mean(inputs.test_crops, (total / len(fold_keys)).astype(np.float32))
    frame = pl.concat(
        [pl.DataFrame({"image_id": image_ids}, schema={"image_id": pl.String}),
         pl.DataFrame(probs, schema={c: pl.Float32 for c in classes})],
        how="horizontal",
    )
    frame = pl.concat([frame, _class_prior_rows(plan, frame["image_id"], classes)]).sort("image_id")
    write_parquet(plan.test_predictions_path(member.key), frame)
    return frame


def _class_prior_rows(plan: Plan, predicted: pl.Series, classes: list[str]) -> pl.DataFrame:
    """Test images with no crop (quarantined: unreadable) still need a row in a submission: they get the
    training class frequencies, the best guess without pixels, so no test image is silently dropped."""
    manifest = pl.read_parquet(plan.manifest_path)
    missing = manifest.filter((pl.col("split") == "test") & ~pl.col("image_id").is_in(predicted.implode()))["image_id"]
    labels = manifest.filter(pl.col("split") == "train")["label"].to_list()
    prior = np.array([labels.count(c) for c in classes], dtype=np.float64) + 1.0
    prior = (prior / prior.sum()).astype(np.float32)
    rows = np.tile(prior, (len(missing), 1))
    return pl.concat(
        [pl.DataFrame({"image_id": missing}), pl.DataFrame(rows, schema=classes, orient="row")], how="horizontal"
    )


def oof_summary(oof_df: pl.DataFrame, classes: list[str]) -> dict[str, float]:
    """log_loss (sklearn, labels = all classes), accuracy and recall_<class> of an OOF table."""
    lookup = {c: i for i, c in enumerate(classes)}
    unknown = set(oof_df["label"].cast(pl.Utf8).unique().to_list()) - set(lookup)
    if unknown:
        raise ValueError(f"OOF labels {sorted(unknown)} are not among the class columns {classes}")
    y_true = np.array([lookup[v] for v in oof_df["label"].cast(pl.Utf8).to_list()])
    probs = oof_df.select(classes).to_numpy()
    return {**probability_metrics(y_true, probs, classes), "n_images": float(oof_df.height)}
