"""Subset-ensemble training (Ro et al., CVPR-W 2023): base on k% -> n copies on difficulty strata -> merge.

One phase: train the base on a random k% subset for (about) half the phase's epochs; copy it n times;
copy j trains on a k% subset from difficulty stratum j (easy ... hard) for its share of the other half;
the copies are merged by parameter averaging (uniform, or a greedy soup judged on the validation
split). With several phases the merged model is the next phase's base, which keeps the copies from
drifting apart far enough that their average stops working. The result is one model with one
model's inference cost.
"""

from __future__ import annotations

import copy
import functools
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from ens_assets.atomic import atomic_path, write_json, write_parquet
from ens_assets.subsets.config import SubsetEnsembleConfig, epoch_plan
from ens_assets.subsets.difficulty import difficulty_scores
from ens_assets.subsets.in_memory_training import (
    TrainFn,
    as_image_tensor,
    as_label_tensor,
    create_seeded_model,
    cross_entropy_train_fn,
    mean_log_loss,
)
from ens_assets.subsets.soup import average_state_dicts, greedy_soup
from ens_assets.subsets.strata import random_subset, stratified_difficulty_subsets


def train_subset_ensemble(
    backbone: str,
    num_classes: int,
    train_images: np.ndarray | torch.Tensor,
    train_labels: np.ndarray | torch.Tensor,
    val_images: np.ndarray | torch.Tensor,
    val_labels: np.ndarray | torch.Tensor,
    cfg: SubsetEnsembleConfig,
    seed: int,
    train_fn: TrainFn | None = None,
    scores: pl.DataFrame | np.ndarray | None = None,
    *,
    initial_model: torch.nn.Module | None = None,
    device: str | torch.device = "cpu",
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train one subset-ensemble model; returns (merged model in eval mode, JSON-ready report).

    `scores`: difficulty scores of the training images (the frame `difficulty_scores` returns, or a
    1-D array in image order); computed here when None. `train_fn` defaults to the plain
    cross-entropy trainer with cfg.batch_size. `initial_model` (e.g. pretrained weights; left
    untouched) is the first base's starting point; default: a random init seeded with `seed`.
    """
    started = time.perf_counter()
    images = as_image_tensor(train_images, "train_images")
    labels = as_label_tensor(train_labels, len(images), num_classes, "train_labels")
    held_images = as_image_tensor(val_images, "val_images")
    held_labels = as_label_tensor(val_labels, len(held_images), num_classes, "val_labels")
    if len(held_images) == 0:
        raise ValueError("val_images is empty; the subset ensemble judges copies on a validation split")
    train = train_fn or functools.partial(cross_entropy_train_fn, batch_size=cfg.batch_size)
    strata_labels = labels.numpy() if cfg.class_balanced else None

    scores_started = time.perf_counter()
    if scores is None:
        scores = difficulty_scores(backbone, num_classes, images, labels, seeds=cfg.score_seeds,
                                   epochs=cfg.score_epochs, batch_size=cfg.batch_size, train_fn=train,
                                   grad_scope=cfg.grad_scope, device=device)
        scores_source = "computed"
    else:
        scores_source = "given"
    difficulty = aligned_scores(scores, len(images), cfg.score)
    scores_wall_s = time.perf_counter() - scores_started

    def val_loss(model: torch.nn.Module) -> float:
        return mean_log_loss(model, held_images, held_labels, cfg.batch_size)

    if initial_model is None:
        model = create_seeded_model(backbone, num_classes, seed, device)
    else:
        if getattr(initial_model, "num_classes", num_classes) != num_classes:
            raise ValueError(f"initial_model has {initial_model.num_classes} outputs but num_classes={num_classes}; "
                             "create it with the member's class count")
        model = copy.deepcopy(initial_model).to(device)
    scratch = copy.deepcopy(model)  # evaluates candidate soups without touching the base

    def val_loss_of_state(state) -> float:
        scratch.load_state_dict(state)
        return val_loss(scratch)

    phases = []
    for phase, (base_epochs, copy_epochs) in enumerate(epoch_plan(cfg)):
        phase_started = time.perf_counter()
        base_subset = random_subset(len(images), cfg.fraction, _derived_seed(seed, phase, 0), strata_labels)
        model = train(model, images[base_subset], labels[base_subset], base_epochs, _derived_seed(seed, phase, 0))
        base_val_loss = val_loss(model)
        copy_subsets = stratified_difficulty_subsets(difficulty, cfg.copies, cfg.fraction,
                                                     _derived_seed(seed, phase, 1), strata_labels)
        copy_states, copy_val_losses = [], []
        for j, subset in enumerate(copy_subsets):
            copy_seed = _derived_seed(seed, phase, 2 + j)
            trained = train(copy.deepcopy(model), images[subset], labels[subset], copy_epochs, copy_seed)
            copy_states.append({k: v.detach().clone() for k, v in trained.state_dict().items()})
            copy_val_losses.append(val_loss(trained))
            del trained
        if cfg.merge == "uniform":
            merged, accepted = average_state_dicts(copy_states), list(range(cfg.copies))
        else:
            merged, accepted = greedy_soup(copy_states, val_loss_of_state, own_losses=copy_val_losses)
        model.load_state_dict(merged)
        phases.append({
            "phase": phase,
            "base_epochs": base_epochs,
            "copy_epochs": copy_epochs,
            "base_subset_size": len(base_subset),
            "copy_subset_sizes": [len(s) for s in copy_subsets],
            f"copy_subset_mean_{cfg.score}": [float(difficulty[s].mean()) for s in copy_subsets],
            "base_val_loss": base_val_loss,
            "copy_val_losses": copy_val_losses,
            "merged_val_loss": val_loss(model),
            "accepted_copies": accepted,
            "wall_s": time.perf_counter() - phase_started,
        })
    model.eval()
    report = {
        "strategy": "subset",
        "backbone": backbone,
        "num_classes": num_classes,
        "seed": seed,
        "config": cfg.model_dump(mode="json"),
        "num_train_images": len(images),
        "num_val_images": len(held_images),
        "scores_source": scores_source,
        "scores_wall_s": scores_wall_s,
        "phases": phases,
        "final_val_loss": phases[-1]["merged_val_loss"],
        "wall_s": time.perf_counter() - started,
    }
    return model, report


def aligned_scores(scores: pl.DataFrame | np.ndarray, num_images: int, column: str) -> np.ndarray:
    """Difficulty score per training image in image order, from a scores frame or a 1-D array."""
    if isinstance(scores, pl.DataFrame):
        if "index" not in scores.columns or column not in scores.columns:
            raise ValueError(f"scores frame needs columns 'index' and '{column}', has {scores.columns}; "
                             "pass the frame difficulty_scores returned")
        index = scores["index"].to_numpy()
        if len(index) != num_images or not np.array_equal(np.sort(index), np.arange(num_images)):
            raise ValueError(f"scores frame covers {len(index)} rows but there are {num_images} training images; "
                             "scores must be computed on exactly these training images (index 0..N-1)")
        values = np.empty(num_images)
        values[index] = scores[column].to_numpy()
        return values
    values = np.asarray(scores, dtype=np.float64)
    if values.shape != (num_images,):
        raise ValueError(f"scores has shape {values.shape}; expected ({num_images},), one per training image")
    return values


def write_subset_ensemble(out_dir: str | Path, model: torch.nn.Module, report: dict[str, Any],
                          scores: pl.DataFrame | None = None) -> dict[str, Path]:
    """Write model.safetensors, report.json (and scores.parquet) atomically into out_dir."""
    from safetensors.torch import save_model

    out = Path(out_dir)
    paths = {"weights": out / "model.safetensors", "report": out / "report.json"}
    with atomic_path(paths["weights"], suffix=".safetensors") as tmp:
        save_model(model, str(tmp))
    write_json(paths["report"], report)
    if scores is not None:
        paths["scores"] = write_parquet(out / "scores.parquet", scores)
    return paths


def _derived_seed(seed: int, phase: int, role: int) -> int:
    """Independent, reproducible seed per (run seed, phase, role): 0 base, 1 strata, 2+j copy j."""
    return int(np.random.SeedSequence([seed, phase, role]).generate_state(1)[0])
