"""Inference on in-memory uint8 crops and the crop -> image reduction (mean of an image's crops)."""

from __future__ import annotations

import numpy as np
import polars as pl
import torch
from torch import nn

from ens_assets.training.augment import model_mean_std, normalize, to_unit_float
from ens_assets.training.device import autocast_context, memory_format, place_batch


def predict_logits(model: nn.Module, images_u8: np.ndarray | torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    """float32 logits (N x classes, on CPU) for uint8 N x S x S x 3 images, in eval mode."""
    if len(images_u8) == 0:
        raise ValueError("predict: no images given (0 crops); check the crop cache and split selection")
    was_training = model.training
    model.eval()
    mean, std = model_mean_std(model, device)
    outputs = []
    try:
        with torch.inference_mode():
            for start in range(0, len(images_u8), batch_size):
                batch = torch.as_tensor(np.ascontiguousarray(images_u8[start : start + batch_size]))
                x = normalize(to_unit_float(place_batch(batch, device)), mean, std)
                x = x.contiguous(memory_format=memory_format())
                with autocast_context(device):
                    logits = model(x)
                outputs.append(logits.float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(outputs)


def predict_proba(model: nn.Module, images_u8: np.ndarray, batch_size: int, device: torch.device) -> np.ndarray:
    """Softmax probabilities, N x classes float32."""
    return torch.softmax(predict_logits(model, images_u8, batch_size, device), dim=1).numpy()


def per_image_mean(index_df: pl.DataFrame, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Average crop probabilities per image.

    index_df: one row per crop, aligned with `probs` rows, with an `image_id` column. Returns
    (image_ids in order of first appearance, probs per image).
    """
    if index_df.height != len(probs):
        raise ValueError(f"per_image_mean: {index_df.height} index rows but {len(probs)} probability rows; they must align")
    ids = index_df["image_id"].to_numpy()
    unique_ids, first_row, inverse = np.unique(ids, return_index=True, return_inverse=True)
    sums = np.zeros((len(unique_ids), probs.shape[1]), dtype=np.float64)
    np.add.at(sums, inverse, probs)
    means = sums / np.bincount(inverse, minlength=len(unique_ids))[:, None]
    order = np.argsort(first_row, kind="stable")
    return unique_ids[order], means[order].astype(np.float32)
