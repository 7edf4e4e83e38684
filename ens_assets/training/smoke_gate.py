"""The smoke gate: whether a member's short fold-0 run earned it a k-fold run ("earn your long runs").

Judged when a checkpoint is evaluated (ens_assets.training.evaluation) and stored in its sidecar;
ens_assets.promotion reads the stored verdicts to gate and promote members. Torch-free, so reading a
verdict stays light.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from ens_assets.plan import PromotionConfig


@dataclass
class SmokeVerdict:
    passed: bool
    checks: dict[str, bool]
    reasons: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)



def evaluate_smoke(
    history: Sequence[dict[str, float]],
    val_labels: np.ndarray,
    val_predictions: np.ndarray,
    classes: Sequence[str],
    cfg: PromotionConfig,
) -> SmokeVerdict:
    """Judge a smoke checkpoint from its per-epoch history and its validation predictions (class indices)."""
    reasons: list[str] = []
    checks: dict[str, bool] = {}
    losses = [float(e[k]) for e in history for k in ("train_loss", "select_loss", "val_loss") if k in e]
    checks["no_nan"] = bool(losses) and all(math.isfinite(v) for v in losses)
    if not checks["no_nan"]:
        reasons.append("a loss was NaN/inf (or no epoch finished): lower the learning rate or check the crops")

    train_losses = [float(e["train_loss"]) for e in history if "train_loss" in e]
    went_down = len(train_losses) >= 2 and min(train_losses[1:]) < train_losses[0]
    checks["loss_went_down"] = went_down or not cfg.require_loss_decrease
    if not checks["loss_went_down"]:
        shown = ", ".join(f"{v:.4g}" for v in train_losses)  # 4 digits: a reason is read, not parsed
        reasons.append(f"training loss never went below its first epoch ({shown}): the model is not learning")

    n_classes = len(classes)
    accuracy = float(np.mean(val_labels == val_predictions)) if len(val_labels) else 0.0
    needed = cfg.min_accuracy_over_chance / n_classes
    checks["above_chance"] = accuracy >= needed
    if not checks["above_chance"]:
        reasons.append(f"validation accuracy {accuracy:.3f} is below {needed:.3f} ({cfg.min_accuracy_over_chance}x chance)")

    never = [classes[c] for c in range(n_classes) if not np.any(val_predictions == c)]
    checks["every_class_predicted"] = not never or not cfg.require_every_class_predicted
    if not checks["every_class_predicted"]:
        reasons.append(f"classes never predicted on the validation fold: {never} (collapsed onto few classes)")

    return SmokeVerdict(
        passed=all(checks.values()),
        checks=checks,
        reasons=reasons,
        metrics={"val_accuracy": accuracy, "accuracy_needed": needed, "classes_never_predicted": float(len(never))},
    )
