"""One checkpoint partition (member x fold) of a `strategy: subset` plan member.

`ens_assets.member_runs.train_member_fold` calls `train_subset_fold` instead of the standard loop when a
member's strategy is "subset"; it returns the same `TrainOutcome` the standard loop does, so the
checkpoint, sidecar, smoke verdict, MLflow run and OOF/test predictions work unchanged. The extra
pieces (per-phase metrics, report, score plot) travel in a `StrategyRecord`.

Budget: the cv folds train the member's `subset` config as written (total_epochs over its phases).
The smoke partition proves the pipeline at a reduced cost: one phase, with total epochs = the smoke
budget's epochs, raised to the minimum that gives the base and each copy one epoch, and never more
than one phase of the full config (see `effective_subset_config`). The fold's `time_budget_s` is
shared by all training calls of the run (base and copies); difficulty scoring is not counted in it.

Difficulty scores are computed once per member x fold and cached in the checkpoint folder
(difficulty_scores.parquet + difficulty_scores.json holding the key they were computed for), so
changing copies/phases/epochs/merge reuses them. There is no per-epoch recovery: a killed run
restarts its training from the first base, keeping the cached scores.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import polars as pl
import torch

from ens_assets.atomic import write_bytes, write_json, write_parquet
from ens_assets.data.folds import selection_split
from ens_assets.plan import SMOKE_FOLD, Budget, Member, Plan, SubsetEnsembleConfig, stable_hash
from ens_assets.subsets.difficulty import difficulty_scores, score_distribution_png
from ens_assets.subsets.standard_loop import standard_loop_train_fn
from ens_assets.subsets.strategy import epoch_plan, train_subset_ensemble
from ens_assets.training.device import select_device
from ens_assets.training.loop import TrainOutcome
from ens_assets.training.models import create_member_model
from ens_assets.training.run import FoldArrays, FoldRun, StrategyRecord

SCORES_FILE = "difficulty_scores.parquet"
SCORES_KEY_FILE = "difficulty_scores.json"
SCORES_PLOT_FILE = "difficulty_scores.png"
REPORT_FILE = "subset_report.json"


def effective_subset_config(cfg: SubsetEnsembleConfig, fold_key: str, smoke_budget: Budget) -> SubsetEnsembleConfig:
    """The config a checkpoint partition trains with: as written for cv folds, one short phase for smoke."""
    if str(fold_key) != SMOKE_FOLD:
        return cfg
    one_phase = cfg.total_epochs // cfg.phases
    total = min(one_phase, max(smoke_budget.epochs, 2 * cfg.copies))
    return SubsetEnsembleConfig.model_validate({**cfg.model_dump(), "phases": 1, "total_epochs": total})


@dataclass
class SubsetMemberOutcome:
    """A subset member's merged model as a `TrainOutcome`, what it adds to the checkpoint's record, and
    which training crops were trained and scored (the indices outside the selection slice)."""

    outcome: TrainOutcome
    record: StrategyRecord
    scored_rows: np.ndarray


def train_subset_fold(run: FoldRun, arrays: FoldArrays, log: Callable[[str], Any] = print) -> tuple[TrainOutcome, StrategyRecord]:
    """The subset strategy for one opened checkpoint partition; records which crops its scores belong to."""
    inputs = run.inputs
    trained = train_subset_member(
        run.plan, run.member, run.fold_key, arrays.train_images, arrays.train_labels, arrays.val_images,
        arrays.val_labels, inputs.classes, out_dir=run.out_dir,
        data_key=stable_hash([inputs.crops_hash, inputs.folds_hash, run.fold_key]), log=log,
        train_groups=run.train_crops["image_id"].to_numpy(),
    )  # fmt: skip
    write_scored_images(run.out_dir, run.train_crops[trained.scored_rows.tolist()])
    return trained.outcome, trained.record


def train_subset_member(
    plan: Plan,
    member: Member,
    fold_key: str,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    val_images: np.ndarray,
    val_labels: np.ndarray,
    classes: list[str],
    *,
    out_dir: str | Path,
    data_key: str,
    device: torch.device | None = None,
    log: Callable[[str], Any] = print,
    train_groups: np.ndarray | None = None,
) -> SubsetMemberOutcome:
    """Train one subset-ensemble checkpoint on a fold's crops; its merged model as a `TrainOutcome`.

    `data_key` identifies the training images (crops, folds, fold) for the difficulty-score cache.
    A `subset.selection_fraction` slice of the training crops (whole images, by `train_groups`) is held
    out: soups, the soup-vs-base fallback and the copies' best epochs are chosen on it, never on the
    validation fold (`val_images`, the member's OOF rows), which is only predicted and reported.
    The record holds the per-phase val losses (flat floats), the score plot and report (MLflow artifacts)
    and the report and effective config (checkpoint.json).
    """
    if member.subset is None:
        raise ValueError(f"{member.key}: strategy '{member.strategy}' has no subset settings; add a 'subset:' block")
    started = time.perf_counter()
    out = Path(out_dir)
    device = device or select_device()
    cfg = effective_subset_config(member.subset, fold_key, plan.training.smoke)
    budget = plan.budget_for_fold(fold_key, member)
    config = plan.training_config(member)
    recipe = plan.recipes[member.recipe]
    num_classes = len(classes)
    all_labels = np.asarray(train_labels, dtype=np.int64)
    keep, chosen = selection_split(all_labels, cfg.selection_fraction, config.seed, train_groups)
    select_images, select_labels = np.ascontiguousarray(train_images[chosen]), all_labels[chosen]
    train_images, labels = np.ascontiguousarray(train_images[keep]), all_labels[keep]

    def trainer(on_outcome=None):
        # Best epochs are chosen on the selection slice too: the OOF fold stays out of every decision.
        return standard_loop_train_fn(num_classes, select_images, select_labels, recipe=recipe, config=config,
                                      time_budget_s=budget.time_budget_s, device=device, on_outcome=on_outcome)

    scores, scores_cached, scores_wall_s = _difficulty_scores(member, fold_key, cfg, recipe, config, train_images, labels,
                                                              num_classes, out, data_key, trainer(), device, log)  # fmt: skip
    plot = write_bytes(out / SCORES_PLOT_FILE, score_distribution_png(scores, classes, labels))

    outcomes: list[TrainOutcome] = []
    initial = create_member_model(member.backbone, num_classes, member.pretrained, Path(plan.base_dir)) \
        if member.pretrained else None  # fmt: skip
    log(f"{member.key} fold {fold_key}: subset ensemble k={cfg.fraction} n={cfg.copies} phases={cfg.phases} "
        f"total_epochs={cfg.total_epochs} merge={cfg.merge} (epochs per phase: {epoch_plan(cfg)})")
    model, report = train_subset_ensemble(
        member.backbone, num_classes, train_images, labels, val_images, val_labels, cfg, seed=config.seed,
        train_fn=trainer(outcomes.append), scores=scores, initial_model=initial, device=device,
        selection_images=select_images, selection_labels=select_labels,
    )  # fmt: skip
    report = {**report, "fold": fold_key, "scores_cached": scores_cached, "scores_wall_s": scores_wall_s}
    report_path = write_json(out / REPORT_FILE, report)
    _log_phases(f"{member.key} fold {fold_key}", report, log)
    outcome = _merged_outcome(model, report, subset_history(cfg, outcomes), outcomes, started)
    record = StrategyRecord(
        metrics=subset_metrics(report),
        artifacts=[plot, report_path],
        sidecar={"strategy": "subset", "subset_config": cfg.model_dump(mode="json"), "subset_report": report},
    )
    return SubsetMemberOutcome(outcome, record, keep)


def _difficulty_scores(member: Member, fold_key: str, cfg: SubsetEnsembleConfig, recipe, config, images: np.ndarray,
                       labels: np.ndarray, num_classes: int, out: Path, data_key: str, train_fn, device,
                       log) -> tuple[pl.DataFrame, bool, float]:  # fmt: skip
    """The fold's difficulty scores from the checkpoint folder's cache when computed for these settings, else
    computed and cached; (scores, whether cached, seconds)."""
    score_key = stable_hash({
        "data": data_key, "backbone": member.backbone, "num_classes": num_classes, "num_images": len(labels),
        "score": {k: cfg.model_dump(mode="json")[k] for k in ("score_seeds", "score_epochs", "grad_scope", "batch_size",
                                                               "selection_fraction")},
        "recipe": recipe.model_dump(mode="json"), "training": config.model_dump(mode="json", exclude={"smoke", "cv"}),
    })  # fmt: skip
    started = time.perf_counter()
    scores = read_cached_scores(out, score_key, len(labels))
    if scores is not None:
        return scores, True, time.perf_counter() - started
    log(f"{member.key} fold {fold_key}: scoring {len(labels)} training crops ({cfg.score}, seeds {list(cfg.score_seeds)})")
    scores = difficulty_scores(member.backbone, num_classes, images, labels, seeds=cfg.score_seeds,
                               epochs=cfg.score_epochs, batch_size=cfg.batch_size, train_fn=train_fn,
                               grad_scope=cfg.grad_scope, device=device)
    write_cached_scores(out, score_key, scores)
    return scores, False, time.perf_counter() - started


def _log_phases(label: str, report: dict[str, Any], log) -> None:
    for phase in report["phases"]:
        log(f"{label} phase {phase['phase']}: base {phase['base_val_loss']:.4f}, copies "
            f"{[round(v, 4) for v in phase['copy_val_losses']]}, merged {phase['merged_val_loss']:.4f} "
            f"(accepted {phase['accepted_copies']} on the selection slice"
            f"{'; no soup beat the base, kept the base' if phase['fallback_to_base'] else ''})")


def _merged_outcome(model: torch.nn.Module, report: dict[str, Any], history: list[dict[str, Any]],
                    outcomes: list[TrainOutcome], started: float) -> TrainOutcome:  # fmt: skip
    """The merged model as one TrainOutcome: every training call's epochs in one history, their costs summed."""
    train_seconds = sum(o.train_seconds for o in outcomes)
    images_trained = sum(o.images_per_second * o.train_seconds for o in outcomes)
    return TrainOutcome(
        best_state={k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()},
        best_epoch=len(history) - 1,
        best_val_loss=float(report["final_val_loss"]),
        history=history,
        epochs_run=len(history),
        stopped_reason="time_budget" if any(o.stopped_reason == "time_budget" for o in outcomes) else "completed",
        wall_seconds=time.perf_counter() - started,
        train_seconds=train_seconds,
        images_per_second=images_trained / train_seconds if train_seconds else 0.0,
        peak_memory_mb=max((o.peak_memory_mb for o in outcomes), default=0.0),
    )


def subset_history(cfg: SubsetEnsembleConfig, outcomes: list[TrainOutcome]) -> list[dict[str, Any]]:
    """Every epoch trained, in order (phase p: base, then copy 0..n-1), numbered 0..N-1 across the run.

    Records keep the standard loop's fields (train_loss, val_loss, ...) plus `phase` and `part`, so the
    smoke verdict and the MLflow per-epoch curves read them as they read a standard member's history.
    """
    parts = [(phase, part) for phase in range(cfg.phases) for part in ["base", *(f"copy{j}" for j in range(cfg.copies))]]
    if len(parts) != len(outcomes):
        raise RuntimeError(f"subset run made {len(outcomes)} training calls; its epoch plan expects {len(parts)}")
    history: list[dict[str, Any]] = []
    for (phase, part), outcome in zip(parts, outcomes):
        for record in outcome.history:
            history.append({**record, "epoch": len(history), "part_epoch": record["epoch"], "phase": phase, "part": part})
    return history


def subset_metrics(report: dict[str, Any]) -> dict[str, float]:
    """Flat per-phase metrics (crop-level validation log loss of base, copies and merged model)."""
    metrics: dict[str, float] = {
        "subset_phases": float(len(report["phases"])),
        "subset_scores_cached": float(report["scores_cached"]),
        "subset_scores_wall_s": float(report["scores_wall_s"]),
        "subset_final_val_loss_crops": float(report["final_val_loss"]),
        "subset_selection_crops": float(report.get("num_selection_images", 0)),
    }
    for phase in report["phases"]:
        prefix = f"subset_p{phase['phase']}"
        metrics[f"{prefix}_base_val_loss_crops"] = float(phase["base_val_loss"])
        metrics[f"{prefix}_merged_val_loss_crops"] = float(phase["merged_val_loss"])
        metrics[f"{prefix}_accepted_copies"] = float(len(phase["accepted_copies"]))
        metrics[f"{prefix}_fallback_to_base"] = float(phase["fallback_to_base"])
        metrics[f"{prefix}_soup_selection_loss_crops"] = float(phase["soup_selection_loss"])
        for j, loss in enumerate(phase["copy_val_losses"]):
            metrics[f"{prefix}_copy{j}_val_loss_crops"] = float(loss)
    return metrics


def read_cached_scores(directory: Path, key: str, num_images: int) -> pl.DataFrame | None:
    """The cached score table when it was computed for `key` and covers `num_images` rows, else None."""
    key_file, table = directory / SCORES_KEY_FILE, directory / SCORES_FILE
    if not key_file.is_file() or not table.is_file():
        return None
    try:
        if json.loads(key_file.read_text()).get("key") != key:
            return None
        scores = pl.read_parquet(table)
    except (ValueError, OSError, pl.exceptions.PolarsError):  # an unreadable cache only costs a recompute
        return None
    return scores if scores.height == num_images else None


def write_cached_scores(directory: Path, key: str, scores: pl.DataFrame) -> None:
    """Table first, key last: the key file vouches only for a complete table computed for that key."""
    (directory / SCORES_KEY_FILE).unlink(missing_ok=True)
    write_parquet(directory / SCORES_FILE, scores)
    write_json(directory / SCORES_KEY_FILE, {"key": key, "rows": scores.height})


SCORED_IMAGES_FILE = "difficulty_scores_images.parquet"


def write_scored_images(out_dir: Path, train_crops: pl.DataFrame) -> None:
    """Which image each row of the cached score table is (the fold's training crops, in training order)."""
    write_parquet(Path(out_dir) / SCORED_IMAGES_FILE, train_crops.select("image_id", "label"))


def member_difficulty_table(checkpoint_dirs: dict[str, Path]) -> pl.DataFrame:
    """Per training image and checkpoint partition: mean EL2N and GraNd over the image's crops.

    Columns: image_id, label, fold, el2n, grand. Partitions without cached scores are left out.
    """
    frames = []
    for fold, directory in checkpoint_dirs.items():
        scores_path, images_path = directory / SCORES_FILE, directory / SCORED_IMAGES_FILE
        if not scores_path.is_file() or not images_path.is_file():
            continue
        scores = pl.read_parquet(scores_path).sort("index").select("el2n", "grand")
        images = pl.read_parquet(images_path)
        if images.height != scores.height:
            raise ValueError(f"{directory}: {scores.height} scores for {images.height} training crops; retrain the partition")
        frames.append(
            pl.concat([images, scores], how="horizontal")
            .group_by("image_id", "label")
            .agg(pl.col("el2n").mean(), pl.col("grand").mean())
            .with_columns(pl.lit(fold).alias("fold"))
        )
    if not frames:
        return pl.DataFrame(schema={"image_id": pl.String, "label": pl.String, "fold": pl.String,
                                    "el2n": pl.Float64, "grand": pl.Float64})  # fmt: skip
    return pl.concat(frames).select("image_id", "label", "fold", "el2n", "grand").sort("fold", "image_id")
