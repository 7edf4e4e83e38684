"""The training stage's steps for one (member, fold) checkpoint, and the OOF and test predictions.

A checkpoint is opened (inputs and fingerprint), trained (the standard loop here, or a strategy above this
layer), evaluated and recorded. The standard loop chooses its best epoch on an early-stopping slice of the
fold's training images (`early_stopping_split`); the held-out fold (the OOF rows) is predicted once, with the
chosen weights, and only scored; ens_assets.member_runs chains the steps and picks the trainer. Everything here reads the plan, the crop cache of the member's
threshold and the folds table, and writes only under plan.work (atomically).
"""

from __future__ import annotations

import functools
import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import polars as pl
import torch
from torch import nn

from ens_assets import mlflow_store
from ens_assets.atomic import write_parquet
from ens_assets.code_version import code_version
from ens_assets.data.folds import HoldoutError, classes_short_in_slice, selection_split
from ens_assets.plan import SMOKE_FOLD, Member, Plan, PlanError, stable_hash, threshold_key
from ens_assets.training.checkpoint import discard_recovery
from ens_assets.training.checkpoint_store import CheckpointStore, same_classes
from ens_assets.training.augment import resize_crops
from ens_assets.training.device import select_device
from ens_assets.training.evaluation import FoldEvaluation, evaluate_fold, label_indices
from ens_assets.training.loop import TrainOutcome, train_member_model
from ens_assets.training.metrics import probability_metrics, write_confusion_matrix
from ens_assets.training.models import count_parameters, create_member_model, flops_per_image
from ens_assets.training.predict import per_image_mean, predict_proba

RECOVERY_SUBDIR = "recovery"
EARLY_STOPPING_IMAGES_FILE = "early_stopping_images.parquet"  # the training images that chose the best epoch


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
    train_crops: pl.DataFrame  # row, image_id, label, fold, group (one row per crop of a training image)
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


# What trains a checkpoint is the code ens_assets.member_runs runs (a name, not an import: member_runs sits a
# layer above). MLflow logging does not change a checkpoint, and the subset-ensemble trainer runs only for
# subset members, so an edit to either retrains nothing else.
TRAINING_CODE_ROOT = "ens_assets.member_runs"
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
    train_crops = train_index.join(folds.select("image_id", "label", "fold", _group_column(folds)), on="image_id",
                                   how="inner").sort("row")  # fmt: skip
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


def _group_column(folds: pl.DataFrame) -> pl.Expr:
    """The folds table's groups (site, sequence, burst or image: what folds.group_by chose); a table written
    before the column existed is grouped by site."""
    if "group" in folds.columns:
        return pl.col("group").cast(pl.Utf8)
    if "site" in folds.columns:
        return pl.col("site").cast(pl.Utf8).fill_null("unknown").alias("group")
    return pl.col("image_id").cast(pl.Utf8).alias("group")


# --- training: open the fold, train, evaluate, record (ens_assets.member_runs picks the trainer) ---------
@dataclass
class FoldArrays:
    """A fold's crops at the member's input size with class-index labels: the trainers' inputs."""

    train_images: np.ndarray
    train_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray


@dataclass
class FoldRun:
    """One checkpoint partition about to be trained: the member, its fold's inputs and their fingerprint."""

    plan: Plan
    member: Member
    fold_key: str
    inputs: _FoldInputs
    fingerprint: str

    @property
    def out_dir(self) -> Path:
        return self.plan.checkpoint_dir(self.member.key, self.fold_key)

    @property
    def held_out(self) -> int:
        return _held_out_fold(self.fold_key)

    @functools.cached_property
    def train_crops(self) -> pl.DataFrame:
        return self.inputs.train_crops.filter(pl.col("fold") != self.held_out)

    @functools.cached_property
    def val_crops(self) -> pl.DataFrame:
        return self.inputs.train_crops.filter(pl.col("fold") == self.held_out)

    @property
    def label(self) -> str:
        return f"{self.member.key} fold {self.fold_key}"


@dataclass
class StrategyRecord:
    """What a strategy adds to a checkpoint's record beside the standard one (the subset ensemble's report)."""

    metrics: dict[str, float] = field(default_factory=dict)
    artifacts: list[Path] = field(default_factory=list)
    sidecar: dict[str, Any] = field(default_factory=dict)


def checkpoint_is_fresh(plan: Plan, member_key: str, fold: int | str) -> bool:
    """Whether the saved checkpoint was trained from exactly the current spec, crops and folds."""
    member, fold_key = _member_and_fold(plan, member_key, fold)
    store = CheckpointStore(plan)
    if store.sidecar(member.key, fold_key) is None:
        return False
    try:
        inputs = _load_inputs(plan, member)
    except (FileNotFoundError, ValueError):
        return False
    expected = fingerprint(plan, member, fold_key, inputs.crops_hash, inputs.folds_hash)
    return store.fresh_sidecar(member.key, fold_key, expected) is not None


def open_fold(plan: Plan, member_key: str, fold: int | str) -> FoldRun:
    """The partition's member, inputs and fingerprint; a fold the member may not train is a PlanError."""
    member, fold_key = _member_and_fold(plan, member_key, fold)
    inputs = _load_inputs(plan, member)
    return FoldRun(plan, member, fold_key, inputs, fingerprint(plan, member, fold_key, inputs.crops_hash, inputs.folds_hash))


def fresh_result(run: FoldRun, log: Callable[[str], Any] = print) -> CheckpointResult | None:
    """The saved checkpoint's result when it is fresh (nothing to train), else None."""
    sidecar = CheckpointStore(run.plan).fresh_sidecar(run.member.key, run.fold_key, run.fingerprint)
    if sidecar is None:
        return None
    log(f"{run.label}: checkpoint is fresh ({run.fingerprint}); skipping training")
    return CheckpointResult(
        member=run.member.key, fold=run.fold_key, checkpoint_dir=run.out_dir, skipped=True, fingerprint=run.fingerprint,
        metrics=sidecar.get("metrics", {}), mlflow_run_id=sidecar.get("mlflow_run_id"), mlflow_url=sidecar.get("mlflow_url"),
    )  # fmt: skip


def fold_arrays(run: FoldRun, log: Callable[[str], Any] = print) -> FoldArrays:
    """The fold's training and validation crops as arrays; each side needs at least two crops."""
    train_part, val_part, classes = run.train_crops, run.val_crops, run.inputs.classes
    if train_part.height < 2 or val_part.height < 2:
        raise ValueError(
            f"{run.label}: {train_part.height} training and {val_part.height} validation crops; "
            "each side needs at least 2. Use fewer folds or more data"
        )
    budget = run.plan.budget_for_fold(run.fold_key, run.member)
    log(
        f"{run.label}: {train_part.height} training crops, {val_part.height} validation crops, "
        f"{len(classes)} classes, budget {budget.epochs} epochs / {budget.time_budget_s:.0f}s"
    )
    return FoldArrays(
        run.inputs.gather(train_part["row"]), label_indices(train_part["label"], classes),
        run.inputs.gather(val_part["row"]), label_indices(val_part["label"], classes),
    )  # fmt: skip


@dataclass
class EarlyStoppingSplit:
    """Which of a fold's training crops train and which choose the best epoch (positions in run.train_crops)."""

    train_rows: np.ndarray
    select_rows: np.ndarray  # empty: no slice could be carved (record["reason"] says why); the last epoch is kept
    record: dict[str, Any]  # what the sidecar and the MLflow params keep: the slice's size and fraction, or the reason


def early_stopping_split(run: FoldRun, log: Callable[[str], Any] = print) -> EarlyStoppingSplit:
    """A class-stratified slice of about training.early_stopping_fraction of the fold's training images, whole
    folds-table groups (no site, sequence or burst on both sides), with at least early_stopping_min_per_class
    images of every class it can hold (a class at a single site cannot be both held out and trained on: it is
    named in the record). Never the held-out fold. When no slice leaves every class in training, every training
    image trains, the last epoch is kept and the reason is logged and recorded."""
    config = run.plan.training_config(run.member)
    fraction, minimum = config.early_stopping_fraction, config.early_stopping_min_per_class
    images = run.train_crops.unique("image_id", keep="first", maintain_order=True)
    labels, groups = images["label"].cast(pl.Utf8).to_numpy(), images["group"].to_numpy()
    record: dict[str, Any] = {"fraction": fraction, "min_per_class": minimum, "training_images": images.height}
    try:
        _, chosen = selection_split(labels, fraction, config.seed, groups, min_per_class=minimum)
    except HoldoutError as err:
        reason = (f"{err}; trained on all {images.height} training images for the whole budget and kept the last "
                  "epoch (no early stopping; the held-out fold chooses nothing)")
        log(f"{run.label}: no early-stopping slice: {reason}")
        (run.out_dir / EARLY_STOPPING_IMAGES_FILE).unlink(missing_ok=True)  # an earlier run's slice chose nothing here
        rows = np.arange(run.train_crops.height)
        return EarlyStoppingSplit(rows, rows[:0], {**record, "rows": "none: last epoch kept", "images": 0, "crops": 0,
                                                  "reason": reason})  # fmt: skip
    chosen_images = images[chosen.tolist()]
    selected = run.train_crops["image_id"].is_in(chosen_images["image_id"].implode()).to_numpy()
    short = classes_short_in_slice(labels, chosen, minimum)
    write_parquet(run.out_dir / EARLY_STOPPING_IMAGES_FILE, chosen_images.select("image_id", "label", "group"))
    record.update(rows="early-stopping slice of the training images", images=chosen_images.height,
                  images_file=EARLY_STOPPING_IMAGES_FILE,
                  crops=int(selected.sum()), groups=chosen_images["group"].n_unique(),
                  held_out_fraction=round(chosen_images.height / images.height, 4),
                  reason=_short_classes_reason(short, labels, groups, minimum))  # fmt: skip
    log(f"{run.label}: best epoch chosen on {record['images']} training images ({record['held_out_fraction']:.0%}, "
        f"{record['groups']} group(s)) held out for early stopping; the held-out fold is only predicted"
        + (f". {record['reason']}" if short else ""))
    return EarlyStoppingSplit(np.flatnonzero(~selected), np.flatnonzero(selected), record)


def _short_classes_reason(short: list, labels: np.ndarray, groups: np.ndarray, minimum: int) -> str | None:
    if not short:
        return None
    counts = ", ".join(f"{c} ({(labels == c).sum()} images in {len(set(groups[labels == c]))} group(s))" for c in short)
    return (f"classes with fewer than {minimum} image(s) in the early-stopping slice: {counts}; the slice holding the "
            "most classes lacks them (too few images or groups to hold some out and still train on them): they train "
            "but do not weigh in the epoch choice")


def train_standard(run: FoldRun, arrays: FoldArrays, log: Callable[[str], Any] = print) -> TrainOutcome:
    """The standard strategy: the member's backbone trained by the epoch loop, resumable per epoch, its best
    epoch chosen on the early-stopping slice (`early_stopping_split`), never on `arrays.val_*` (the OOF fold)."""
    plan, member = run.plan, run.member
    config = plan.training_config(member)
    split = early_stopping_split(run, log)
    has_slice = len(split.select_rows) > 0
    outcome = train_member_model(
        member.backbone, len(run.inputs.classes),
        arrays.train_images[split.train_rows], arrays.train_labels[split.train_rows],
        arrays.train_images[split.select_rows] if has_slice else None,
        arrays.train_labels[split.select_rows] if has_slice else None,
        recipe=plan.recipes[member.recipe], config=config, budget=plan.budget_for_fold(run.fold_key, member),
        seed=config.seed, out_dir=run.out_dir / RECOVERY_SUBDIR, pretrained=member.pretrained,
        base_dir=Path(plan.base_dir), resume_token=run.fingerprint, log=log,
    )  # fmt: skip
    outcome.selection = split.record
    return outcome


def evaluate_trained(run: FoldRun, outcome: TrainOutcome) -> tuple[nn.Module, FoldEvaluation]:
    """The best weights as a model, and their per-image scores and smoke verdict on the validation fold."""
    device = select_device()
    model = create_member_model(run.member.backbone, len(run.inputs.classes), None)
    model.load_state_dict(outcome.best_state)
    model.to(device)
    evaluation = evaluate_fold(
        model, run.inputs.gather(run.val_crops["row"]), run.val_crops, run.inputs.classes, outcome.history,
        run.plan.promotion, batch_size=run.plan.training_config(run.member).batch_size * 2, device=device,
    )  # fmt: skip
    return model, evaluation


def checkpoint_metrics(run: FoldRun, outcome: TrainOutcome, evaluation: FoldEvaluation, model: nn.Module) -> dict[str, Any]:
    """What a checkpoint records and logs: validation (OOF fold) scores per image, the run's costs and the data's
    sizes. best_epoch was chosen on the early-stopping slice (its crop loss: early_stopping_loss_crops)."""
    held_out = outcome.selection.get("crops", 0)
    selection_loss = {"early_stopping_loss_crops": outcome.best_val_loss} if held_out else {}
    return {
        "val_loss": evaluation.image_metrics["log_loss"],
        "val_acc": evaluation.image_metrics["accuracy"],
        "best_epoch": outcome.best_epoch,
        **selection_loss,
        "epochs_run": outcome.epochs_run,
        "stopped_reason": outcome.stopped_reason,
        "resumed_from_epoch": outcome.resumed_from_epoch,
        "images_per_second": outcome.images_per_second,
        "wall_seconds": outcome.wall_seconds,
        "train_seconds": outcome.train_seconds,
        "peak_memory_mb": outcome.peak_memory_mb,
        "flops_per_image": flops_per_image(model, run.inputs.image_size),
        "image_size": run.inputs.image_size,
        "param_count": count_parameters(model),
        "n_train_crops": run.train_crops.height - held_out,  # crops the weights trained on
        "n_early_stopping_crops": held_out,
        "n_val_crops": run.val_crops.height,
        "n_val_images": len(evaluation.image_ids),
        "images_without_crops": run.inputs.images_without_crops,
        **evaluation.per_class,
    }


def record_checkpoint(
    run: FoldRun,
    outcome: TrainOutcome,
    evaluation: FoldEvaluation,
    model: nn.Module,
    *,
    started_unix: float,
    strategy: StrategyRecord | None = None,
    log: Callable[[str], Any] = print,
    tracking: mlflow_store.Tracking | None = None,
) -> CheckpointResult:
    """Log the MLflow run to `tracking` (default: mlflow_store.resolve_tracking(plan)), then save the weights and
    their sidecar through the checkpoint store (the sidecar last: it marks a whole checkpoint)."""
    plan, member, fold_key, strategy = run.plan, run.member, run.fold_key, strategy or StrategyRecord()
    metrics = {**checkpoint_metrics(run, outcome, evaluation, model), **strategy.metrics}
    confusion_json, confusion_png = write_confusion_matrix(run.out_dir, evaluation.y_true, evaluation.y_pred, run.inputs.classes)
    spec = checkpoint_spec(plan, member, fold_key)
    tracked = mlflow_store.log_checkpoint_run(
        tracking or mlflow_store.resolve_tracking(plan),
        tags={"member": member.key, "backbone": member.backbone, "threshold": threshold_key(member.threshold),
              "recipe": member.recipe, "fold": fold_key, "stage": member.stage, "strategy": member.strategy,
              "fingerprint": run.fingerprint},
        params={**spec, **({"early_stopping": outcome.selection} if outcome.selection else {})},
        history=outcome.history, metrics=metrics,
        artifacts=[confusion_json, confusion_png, *strategy.artifacts,
                   *([run.out_dir / outcome.selection["images_file"]] if outcome.selection.get("images_file") else [])],
        run_name=f"{member.key}|{fold_key}", started_unix=started_unix,
    )  # fmt: skip
    sidecar = {
        "fingerprint": run.fingerprint,
        "code_version": training_code_version(member),
        "member": member.key,
        "fold": fold_key,
        "held_out_fold": run.held_out,
        "member_spec": plan.member_spec(member),
        "checkpoint_spec": spec,
        "backbone": member.backbone,
        "classes": run.inputs.classes,
        "epoch": outcome.best_epoch,
        **({"early_stopping": outcome.selection} if outcome.selection else {}),
        "metrics": metrics,
        "history": outcome.history,
        "smoke_verdict": evaluation.verdict.to_dict(),
        "mlflow_run_id": tracked.run_id,
        "mlflow_url": tracked.url,
        "created_unix": time.time(),
        **strategy.sidecar,
    }
    CheckpointStore(plan).save(member.key, fold_key, outcome.best_state, sidecar)
    discard_recovery(run.out_dir / RECOVERY_SUBDIR)
    log(f"{run.label}: val log loss {metrics['val_loss']:.4f}, accuracy {metrics['val_acc']:.3f} ({outcome.stopped_reason})")
    return CheckpointResult(
        member=member.key, fold=fold_key, checkpoint_dir=run.out_dir, skipped=False, fingerprint=run.fingerprint,
        metrics=metrics, mlflow_run_id=tracked.run_id, mlflow_url=tracked.url,
    )  # fmt: skip


# --- prediction -----------------------------------------------------------------------------------
def _fresh_checkpoint_model(plan: Plan, member: Member, fold_key: str, inputs: _FoldInputs, device: torch.device):
    expected = fingerprint(plan, member, fold_key, inputs.crops_hash, inputs.folds_hash)
    state_dict, sidecar = CheckpointStore(plan).load(member.key, fold_key, fingerprint=expected)  # stale: an error
    model = create_member_model(member.backbone, len(sidecar["classes"]), None)
    model.load_state_dict(state_dict)
    return model.to(device), sidecar["classes"]


def _checkpoint_models(plan: Plan, member: Member, inputs: _FoldInputs, device: torch.device) -> Iterator[tuple[str, nn.Module, list[str]]]:
    """(fold, model, classes) of each of the member's fresh checkpoints; every fold must share one class order."""
    first = None
    for fold_key in plan.prediction_folds(member):
        model, fold_classes = _fresh_checkpoint_model(plan, member, fold_key, inputs, device)
        first = first or (fold_key, fold_classes)
        yield fold_key, model, same_classes(member.key, [first, (fold_key, fold_classes)])


def predict_member_oof(plan: Plan, member_key: str) -> pl.DataFrame:
    """Out-of-fold probabilities: each training image once, predicted by the checkpoint that held it out.

    Columns image_id, fold, label, then one float column per class (the checkpoint's class order).
    Written to plan.oof_path(member).
    """
    member = plan.member(member_key)
    inputs = _load_inputs(plan, member)
    device = select_device()
    batch_size = plan.training_config(member).batch_size * 2
    frames = []
    for fold_key, model, classes in _checkpoint_models(plan, member, inputs, device):
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
    # Loaded even when there is nothing to predict: a stale checkpoint is an error either way.
    for _, model, classes in _checkpoint_models(plan, member, inputs, device):
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
