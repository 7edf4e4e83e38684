"""Subset-ensemble training (Ro et al., CVPR-W 2023): base on k% -> n copies on difficulty strata -> merge.

One phase: train the base on a random k% subset for (about) half the phase's epochs; copy it n times;
copy j trains on a k% subset from difficulty stratum j (easy ... hard) for its share of the other half;
the copies are merged by parameter averaging (uniform, or a greedy soup), BatchNorm statistics are
recomputed on training crops, and the soup is kept only when it beats the base. With several phases the
merged model is the next phase's base, which keeps the copies from drifting apart far enough that their
average stops working. The result is one model with one model's inference cost.

Honesty: every choice (soup ingredients, soup vs base) is made on a *selection slice* held out of the
training split for that purpose. The validation split (the member's OOF fold) is only reported on; no
decision reads it, so the OOF predictions it is scored with are untouched by soup selection.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import torch

from ens_assets.data.folds import selection_split  # the one held-out split (soups here, early stopping in training)
from ens_assets.plan import SubsetEnsembleConfig
from ens_assets.subsets.difficulty import difficulty_scores
from ens_assets.subsets.in_memory_training import (
    TrainFn,
    as_image_tensor,
    as_label_tensor,
    create_seeded_model,
    mean_log_loss,
)
from ens_assets.subsets.soup import average_state_dicts, greedy_soup, recompute_batchnorm
from ens_assets.subsets.standard_loop import default_train_fn
from ens_assets.subsets.strata import random_subset, stratified_difficulty_subsets


def epoch_plan(cfg: SubsetEnsembleConfig) -> list[tuple[int, int]]:
    """(base_epochs, epochs_per_copy) for each phase; the sums never exceed cfg.total_epochs.

    Phases split the budget evenly (earlier phases take the remainder); in a phase the copies share
    half of it equally and the base gets the rest.
    """
    plan = []
    for phase in range(cfg.phases):
        budget = cfg.total_epochs // cfg.phases + (1 if phase < cfg.total_epochs % cfg.phases else 0)
        per_copy = (budget // 2) // cfg.copies
        plan.append((budget - per_copy * cfg.copies, per_copy))
    return plan


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
    selection_images: np.ndarray | torch.Tensor | None = None,
    selection_labels: np.ndarray | torch.Tensor | None = None,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train one subset-ensemble model; returns (merged model in eval mode, JSON-ready report).

    `scores`: difficulty scores of the training images (the frame `difficulty_scores` returns, or a
    1-D array in image order); computed here when None. `train_fn` defaults to the standard loop with
    its plainest recipe and cfg.batch_size (standard_loop.default_train_fn). `initial_model` (e.g. pretrained weights; left
    untouched) is the first base's starting point; default: a random init seeded with `seed`.
    `selection_images/labels`: the slice of the training split soups are chosen on; when None, a
    `cfg.selection_fraction` slice of the training images is held out here. `val_images/labels` (the
    OOF fold) are only reported on.
    """
    started = time.perf_counter()
    data, scores = _subset_data(train_images, train_labels, val_images, val_labels, selection_images, selection_labels,
                                scores, cfg, seed, num_classes)  # fmt: skip
    # The default picks each call's best epoch on the selection slice, like every other decision here.
    train = train_fn or default_train_fn(num_classes, data.select_images, data.select_labels, batch_size=cfg.batch_size)
    scores_started = time.perf_counter()
    if scores is None:
        scores = difficulty_scores(backbone, num_classes, data.images, data.labels, seeds=cfg.score_seeds,
                                   epochs=cfg.score_epochs, batch_size=cfg.batch_size, train_fn=train,
                                   grad_scope=cfg.grad_scope, device=device)
        scores_source = "computed"
    else:
        scores_source = "given"
    difficulty = aligned_scores(scores, len(data.images), cfg.score)
    scores_wall_s = time.perf_counter() - scores_started

    model = _starting_model(backbone, num_classes, seed, device, initial_model)
    scratch = copy.deepcopy(model)  # evaluates candidate soups without touching the base
    phases = [_run_phase(phase, epochs, model, scratch, data, difficulty, train, cfg, seed)
              for phase, epochs in enumerate(epoch_plan(cfg))]
    model.eval()
    report = {
        "strategy": "subset",
        "backbone": backbone,
        "num_classes": num_classes,
        "seed": seed,
        "config": cfg.model_dump(mode="json"),
        "num_train_images": len(data.images),
        "num_val_images": len(data.held_images),
        "num_selection_images": len(data.select_images),
        "scores_source": scores_source,
        "scores_wall_s": scores_wall_s,
        "phases": phases,
        "final_val_loss": phases[-1]["merged_val_loss"],
        "wall_s": time.perf_counter() - started,
    }
    return model, report


@dataclass
class _SubsetData:
    """The images one subset-ensemble run trains on, reports on (the OOF fold) and decides on (the selection slice)."""

    images: torch.Tensor
    labels: torch.Tensor
    held_images: torch.Tensor  # the validation split: reported on only, it drives no decision
    held_labels: torch.Tensor
    select_images: torch.Tensor
    select_labels: torch.Tensor
    bn_images: torch.Tensor  # training crops that recompute BatchNorm statistics of an average
    batch_size: int

    def val_loss(self, model: torch.nn.Module) -> float:
        return mean_log_loss(model, self.held_images, self.held_labels, self.batch_size)

    def selection_loss(self, model: torch.nn.Module) -> float:
        return mean_log_loss(model, self.select_images, self.select_labels, self.batch_size)


def _subset_data(train_images, train_labels, val_images, val_labels, selection_images, selection_labels, scores,
                 cfg: SubsetEnsembleConfig, seed: int, num_classes: int) -> tuple[_SubsetData, Any]:  # fmt: skip
    """Checked tensors, with a selection slice held out of the training images when none is given (and the
    given scores cut to the images kept for training)."""
    images = as_image_tensor(train_images, "train_images")
    labels = as_label_tensor(train_labels, len(images), num_classes, "train_labels")
    held_images = as_image_tensor(val_images, "val_images")
    held_labels = as_label_tensor(val_labels, len(held_images), num_classes, "val_labels")
    if len(held_images) == 0:
        raise ValueError("val_images is empty; the subset ensemble reports its losses on a validation split")
    if selection_images is None:
        keep, chosen = selection_split(labels.numpy(), cfg.selection_fraction, seed)
        if scores is not None:
            scores = aligned_scores(scores, len(images), cfg.score)[keep]
        select_images, select_labels = images[chosen], labels[chosen]
        images, labels = images[keep], labels[keep]
    else:
        select_images = as_image_tensor(selection_images, "selection_images")
        select_labels = as_label_tensor(selection_labels, len(select_images), num_classes, "selection_labels")
    if len(select_images) == 0:
        raise ValueError("the selection slice is empty; soups are chosen on held-out training images")
    bn_rows = np.random.default_rng(_derived_seed(seed, 0, 99)).permutation(len(images))[:cfg.bn_images]
    data = _SubsetData(images, labels, held_images, held_labels, select_images, select_labels,
                       images[np.sort(bn_rows)], cfg.batch_size)  # fmt: skip
    return data, scores


def _starting_model(backbone: str, num_classes: int, seed: int, device, initial_model: torch.nn.Module | None):
    """The first base: a copy of `initial_model` (left untouched), else a random init seeded with `seed`."""
    if initial_model is None:
        return create_seeded_model(backbone, num_classes, seed, device)
    if getattr(initial_model, "num_classes", num_classes) != num_classes:
        raise ValueError(f"initial_model has {initial_model.num_classes} outputs but num_classes={num_classes}; "
                         "create it with the member's class count")
    return copy.deepcopy(initial_model).to(device)


def _run_phase(phase: int, epochs: tuple[int, int], model: torch.nn.Module, scratch: torch.nn.Module,
               data: _SubsetData, difficulty: np.ndarray, train: TrainFn, cfg: SubsetEnsembleConfig,
               seed: int) -> dict[str, Any]:  # fmt: skip
    """One phase, in place on `model`: base on a random subset, copies on difficulty strata, merge (or keep the
    base when no soup beats it on the selection slice). Returns the phase's report."""
    base_epochs, copy_epochs = epochs
    phase_started = time.perf_counter()
    strata_labels = data.labels.numpy() if cfg.class_balanced else None

    def selection_loss_of_soup(state) -> float:
        """A candidate soup as it would be kept: averaged weights with recomputed BatchNorm statistics."""
        scratch.load_state_dict(state)
        recompute_batchnorm(scratch, data.bn_images, cfg.batch_size)
        return data.selection_loss(scratch)

    base_subset = random_subset(len(data.images), cfg.fraction, _derived_seed(seed, phase, 0), strata_labels)
    trained_base = train(model, data.images[base_subset], data.labels[base_subset], base_epochs, _derived_seed(seed, phase, 0))
    if trained_base is not model:
        model.load_state_dict(trained_base.state_dict())
    base_val_loss, base_selection_loss = data.val_loss(model), data.selection_loss(model)
    base_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    copy_subsets = stratified_difficulty_subsets(difficulty, cfg.copies, cfg.fraction, _derived_seed(seed, phase, 1),
                                                 strata_labels)  # fmt: skip
    copy_states, copy_val_losses, copy_selection_losses = [], [], []
    for j, subset in enumerate(copy_subsets):
        trained = train(copy.deepcopy(model), data.images[subset], data.labels[subset], copy_epochs,
                        _derived_seed(seed, phase, 2 + j))  # fmt: skip
        copy_states.append({k: v.detach().clone() for k, v in trained.state_dict().items()})
        copy_val_losses.append(data.val_loss(trained))
        copy_selection_losses.append(data.selection_loss(trained))
        del trained
    if cfg.merge == "uniform":
        merged, accepted = average_state_dicts(copy_states), list(range(cfg.copies))
    else:
        merged, accepted = greedy_soup(copy_states, selection_loss_of_soup, own_losses=copy_selection_losses)
    model.load_state_dict(merged)
    # A single accepted copy is that copy's own weights (its statistics are right); an average needs new ones.
    bn_recomputed = len(accepted) > 1 and recompute_batchnorm(model, data.bn_images, cfg.batch_size)
    soup_selection_loss = data.selection_loss(model)
    fallback = not soup_selection_loss < base_selection_loss
    if fallback:  # no soup beats the base on the selection slice: keep the base
        model.load_state_dict(base_state)
    return {
        "phase": phase,
        "base_epochs": base_epochs,
        "copy_epochs": copy_epochs,
        "base_subset_size": len(base_subset),
        "copy_subset_sizes": [len(s) for s in copy_subsets],
        f"copy_subset_mean_{cfg.score}": [float(difficulty[s].mean()) for s in copy_subsets],
        "base_val_loss": base_val_loss,
        "copy_val_losses": copy_val_losses,
        "merged_val_loss": data.val_loss(model),
        "accepted_copies": accepted,
        "base_selection_loss": base_selection_loss,
        "copy_selection_losses": copy_selection_losses,
        "soup_selection_loss": soup_selection_loss,
        "fallback_to_base": fallback,
        "bn_recomputed": bool(bn_recomputed),
        "wall_s": time.perf_counter() - phase_started,
    }


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


def _derived_seed(seed: int, phase: int, role: int) -> int:
    """Independent, reproducible seed per (run seed, phase, role): 0 base, 1 strata, 2+j copy j."""
    return int(np.random.SeedSequence([seed, phase, role]).generate_state(1)[0])
