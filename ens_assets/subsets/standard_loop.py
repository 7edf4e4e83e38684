"""The subset core's one trainer: the project's standard epoch loop (`ens_assets.training.loop.fit`) as a `TrainFn`.

Base and copies train with the member's augmentation recipe, optimizer, scheduler, EMA and mixed
precision. `fit` keeps the lowest-validation-loss epoch's weights; the copy continues from those, which
still descend from the shared base, so averaging holds. `default_train_fn` is the same loop with the
lightest recipe, for callers that bring no plan (difficulty scores and subset ensembles used on their own).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from ens_assets.plan import Budget, Recipe, TrainingConfig
from ens_assets.subsets.in_memory_training import TrainFn, model_device
from ens_assets.training.loop import TrainOutcome, fit

# Budget.time_budget_s must be > 0; a call after the budget is spent still trains its first epoch.
_SPENT = 1e-6


def standard_loop_train_fn(
    num_classes: int, val_images: np.ndarray, val_labels: np.ndarray, *, recipe: Recipe, config: TrainingConfig,
    time_budget_s: float = 600.0, device: torch.device | None = None, log: Callable[[str], Any] = lambda _: None,
    on_outcome: Callable[[TrainOutcome], Any] | None = None,
) -> TrainFn:
    """A TrainFn running `fit` for `epochs` epochs (no early stopping) per call, no recovery files.

    `time_budget_s` is shared by all calls of the returned TrainFn (a member's whole subset run):
    each call gets what earlier calls left; once it is spent, every later call trains a single epoch
    (`fit` checks the clock between epochs), so every base and copy still exists and the merge runs.
    `on_outcome` receives each call's `TrainOutcome` (history, timings) in call order.
    """
    spent = 0.0

    def train(model: torch.nn.Module, images_u8, labels, epochs: int, seed: int) -> torch.nn.Module:
        nonlocal spent
        if epochs == 0:  # e.g. difficulty scores at initialisation (score_epochs: 0)
            return model.eval()
        images = images_u8.numpy() if isinstance(images_u8, torch.Tensor) else np.asarray(images_u8)
        targets = labels.numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
        budget = Budget(epochs=epochs, time_budget_s=max(time_budget_s - spent, _SPENT), patience=epochs)
        outcome = fit(model, images, targets, val_images, val_labels, num_classes=num_classes, recipe=recipe,
                      config=config, budget=budget, seed=seed, out_dir=None, device=device or model_device(model), log=log)
        spent += outcome.wall_seconds
        if on_outcome is not None:
            on_outcome(outcome)
        model.load_state_dict(outcome.best_state)
        return model.eval()

    return train


# The lightest augmentation the loop has (no flips, full-area crops, hard labels), cosine without warm-up:
# a plain trainer for difficulty scores and soups when no plan recipe is given.
PLAIN_RECIPE = Recipe(hflip=0.0, scale=(1.0, 1.0), label_smoothing=0.0)


def default_train_fn(num_classes: int, val_images: np.ndarray | torch.Tensor, val_labels: np.ndarray | torch.Tensor,
                     *, batch_size: int = 64) -> TrainFn:  # fmt: skip
    """The standard loop with PLAIN_RECIPE and the plan's default optimizer (AdamW, lr 3e-3), no time budget;
    each call keeps its lowest-loss epoch on `val_images` (pass held-out training images, never the OOF fold)."""
    images = val_images.numpy() if isinstance(val_images, torch.Tensor) else np.asarray(val_images)
    labels = val_labels.numpy() if isinstance(val_labels, torch.Tensor) else np.asarray(val_labels)
    config = TrainingConfig(batch_size=batch_size, warmup_epochs=0)
    return standard_loop_train_fn(num_classes, images, labels, recipe=PLAIN_RECIPE, config=config, time_budget_s=1e9)
