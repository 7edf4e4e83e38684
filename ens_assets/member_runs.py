"""One checkpoint partition of a plan member, trained by the member's strategy.

The layer above training and subsets: it opens the fold (ens_assets.training.run), skips a fresh checkpoint,
trains with the standard epoch loop or the subset-ensemble trainer (ens_assets.subsets.member_training) as
the member's `strategy` says, then evaluates and records the checkpoint the same way for both. What the
Dagster layer's checkpoints asset calls.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from ens_assets.mlflow_store import Tracking
from ens_assets.plan import Plan
from ens_assets.subsets.member_training import train_subset_fold
from ens_assets.training.run import (
    CheckpointResult,
    evaluate_trained,
    fold_arrays,
    fresh_result,
    open_fold,
    record_checkpoint,
    train_standard,
)


def train_member_fold(
    plan: Plan, member_key: str, fold: int | str, *, log: Callable[[str], Any] = print, tracking: Tracking | None = None
) -> CheckpointResult:
    """Train (or skip when fresh) one checkpoint partition: train on the other folds' crops (the best epoch chosen
    on a slice held out of them), predict and score the held-out fold once with those weights, save them and log
    an MLflow run to `tracking` (default: mlflow_store.resolve_tracking(plan))."""
    run = open_fold(plan, member_key, fold)
    skipped = fresh_result(run, log)
    if skipped is not None:
        return skipped
    started_unix = time.time()  # the MLflow run's start: its duration is the training's
    arrays = fold_arrays(run, log)
    if run.member.strategy == "subset":
        outcome, strategy = train_subset_fold(run, arrays, log)
    else:
        outcome, strategy = train_standard(run, arrays, log), None
    model, evaluation = evaluate_trained(run, outcome)
    return record_checkpoint(run, outcome, evaluation, model, started_unix=started_unix, strategy=strategy, log=log,
                             tracking=tracking)
