"""How a trained checkpoint is judged: its validation fold's predictions per image, scored, and its smoke gate."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import polars as pl
import torch
from torch import nn

from ens_assets.plan import PromotionConfig
from ens_assets.training.metrics import per_class_metrics, probability_metrics
from ens_assets.training.predict import per_image_mean, predict_proba
from ens_assets.training.smoke_gate import SmokeVerdict, evaluate_smoke


@dataclass
class FoldEvaluation:
    """A checkpoint's best weights on its validation fold, per image (crop probabilities averaged). The fold chose
    nothing: the weights' epoch was picked on the early-stopping slice of the training images."""

    image_ids: np.ndarray
    y_true: np.ndarray  # class indices
    y_pred: np.ndarray
    image_metrics: dict[str, float]  # log_loss, accuracy, recall_<class>
    per_class: dict[str, float]  # precision_/recall_/f1_<class>
    verdict: SmokeVerdict


def label_indices(labels: pl.Series, classes: list[str]) -> np.ndarray:
    lookup = {c: i for i, c in enumerate(classes)}
    return np.array([lookup[str(v)] for v in labels.to_list()], dtype=np.int64)


def evaluate_fold(
    model: nn.Module,
    val_images: np.ndarray,
    val_crops: pl.DataFrame,
    classes: list[str],
    history: Sequence[dict[str, float]],
    promotion: PromotionConfig,
    *,
    batch_size: int,
    device: torch.device,
) -> FoldEvaluation:
    """Predict the validation crops (`val_crops`: image_id, label per row of `val_images`), average them per
    image, score them and judge the smoke gate."""
    crop_probs = predict_proba(model, val_images, batch_size, device)
    image_ids, probs = per_image_mean(val_crops, crop_probs)
    labels_by_image = dict(val_crops.select("image_id", "label").unique().iter_rows())
    y_true = label_indices(pl.Series([labels_by_image[i] for i in image_ids]), classes)
    y_pred = probs.argmax(axis=1)
    return FoldEvaluation(
        image_ids=image_ids,
        y_true=y_true,
        y_pred=y_pred,
        image_metrics=probability_metrics(y_true, probs, classes),
        per_class=per_class_metrics(y_true, y_pred, classes),
        verdict=evaluate_smoke(history, y_true, y_pred, classes, promotion),
    )
