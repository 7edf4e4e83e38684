"""Adapter: the project's standard epoch loop (`ens_assets.training.loop.fit`) as a subset `TrainFn`.

With it, base and copies train with the member's augmentation recipe, optimizer, scheduler, EMA and
mixed precision instead of the plain default trainer. `fit` keeps the lowest-validation-loss epoch's
weights; the copy continues from those, which still descend from the shared base, so averaging holds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch

from ens_assets.plan import Budget, Recipe, TrainingConfig
from ens_assets.subsets.in_memory_training import TrainFn

if TYPE_CHECKING:
    from ens_assets.training.loop import TrainOutcome

# Budget.time_budget_s must be > 0; a call after the budget is spent still trains its first epoch.
_SPENT = 1e-6


def standard_loop_train_fn(
    num_classes: int, val_images: np.ndarray, val_labels: np.ndarray, *, recipe: Recipe, config: TrainingConfig,
    time_budget_s: float = 600.0, device: torch.device | None = None, log: Callable[[str], Any] = lambda _: None,
    on_outcome: Callable[["TrainOutcome"], Any] | None = None,
) -> TrainFn:
    """A TrainFn running `fit` for `epochs` epochs (no early stopping) per call, no recovery files.

    `time_budget_s` is shared by all calls of the returned TrainFn (a member's whole subset run):
    each call gets what earlier calls left; once it is spent, every later call trains a single epoch
    (`fit` checks the clock between epochs), so every base and copy still exists and the merge runs.
    `on_outcome` receives each call's `TrainOutcome` (history, timings) in call order.
    """
    from ens_assets.training.loop import fit  # deferred: pulls in the whole training stack

    spent = 0.0

    def train(model: torch.nn.Module, images_u8, labels, epochs: int, seed: int) -> torch.nn.Module:
        nonlocal spent
        if epochs == 0:  # e.g. difficulty scores at initialisation (score_epochs: 0)
            return model.eval()
        images = images_u8.numpy() if isinstance(images_u8, torch.Tensor) else np.asarray(images_u8)
        targets = labels.numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
        budget = Budget(epochs=epochs, time_budget_s=max(time_budget_s - spent, _SPENT), patience=epochs)
        outcome = fit(model, images, targets, val_images, val_labels, num_classes=num_classes, recipe=recipe,
                      config=config, budget=budget, seed=seed, out_dir=None, device=device, log=log)
        spent += outcome.wall_seconds
        if on_outcome is not None:
            on_outcome(outcome)
        model.load_state_dict(outcome.best_state)
        return model.eval()

    return train
