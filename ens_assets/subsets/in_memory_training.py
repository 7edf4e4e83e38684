"""The subset-ensemble core's view of training: in-memory uint8 NHWC arrays and a `TrainFn` callable.

The core trains one model many times on different index subsets, so it takes the training routine as a
`TrainFn` (ens_assets.subsets.standard_loop wraps the project's epoch loop as one). Everything else here
is training's own: the model factory, normalisation, batching and prediction of ens_assets.training, with
the input checks the subset core adds.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from ens_assets.training import predict
from ens_assets.training.augment import model_mean_std, normalize, to_unit_float
from ens_assets.training.batching import batches
from ens_assets.training.models import create_member_model


class TrainFn(Protocol):
    """Trains `model` in place on uint8 NHWC images and integer labels; returns the trained model."""

    def __call__(
        self, model: torch.nn.Module, images_u8: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor,
        epochs: int, seed: int,
    ) -> torch.nn.Module: ...


def as_image_tensor(images_u8: np.ndarray | torch.Tensor, name: str = "images_u8") -> torch.Tensor:
    """Validate a uint8 (N, H, W, 3) array and return it as a CPU tensor without copying."""
    images = torch.from_numpy(np.ascontiguousarray(images_u8)) if isinstance(images_u8, np.ndarray) else images_u8
    if images.dtype != torch.uint8:
        raise ValueError(f"{name}: expected uint8 pixels 0-255, got {images.dtype}; convert with .astype(np.uint8) "
                         "before normalisation (normalisation happens per batch here)")
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"{name}: expected shape (N, H, W, 3) (NHWC, RGB), got {tuple(images.shape)}")
    return images


def as_label_tensor(labels: np.ndarray | torch.Tensor, num_images: int, num_classes: int | None = None,
                    name: str = "labels") -> torch.Tensor:
    """Validate integer class labels (N,) matching the image count; returns an int64 CPU tensor."""
    array = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name}: expected a 1-D integer array of class indices, got dtype {array.dtype} "
                         f"shape {array.shape}")
    if len(array) != num_images:
        raise ValueError(f"{name}: {len(array)} labels for {num_images} images; one label per image is required")
    if num_classes is not None and len(array):
        bad = np.flatnonzero((array < 0) | (array >= num_classes))
        if len(bad):
            raise ValueError(f"{name}[{int(bad[0])}] = {int(array[bad[0]])} is outside [0, {num_classes}); "
                             f"{len(bad)} labels are out of range; check num_classes or the label mapping")
    return torch.from_numpy(array.astype(np.int64))


def create_seeded_model(backbone: str, num_classes: int, seed: int, device: str | torch.device = "cpu") -> torch.nn.Module:
    """A randomly initialised member model (training's factory); the same (backbone, seed) always gives the same weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = create_member_model(backbone, num_classes, None)
    return model.to(device).eval()


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def to_model_input(model: torch.nn.Module, batch_u8: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC batch -> float NCHW normalised as training normalises for this model, on the model's device."""
    device = model_device(model)
    mean, std = model_mean_std(model, device)
    return normalize(to_unit_float(batch_u8.to(device, non_blocking=True)), mean, std)


def batch_indices(n: int, batch_size: int) -> list[torch.Tensor]:
    """Training's batching over 0..n-1 in order (a trailing batch of one joins the previous: BatchNorm needs two)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return batches(torch.arange(n), batch_size)


def predict_logits(model: torch.nn.Module, images_u8: np.ndarray | torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    """Eval-mode logits (N, C) on CPU through training's prediction path; leaves the model in eval mode."""
    images = as_image_tensor(images_u8)
    model.eval()
    if len(images) == 0:
        return torch.empty(0)
    return predict.predict_logits(model, images.numpy(), batch_size, model_device(model))


def mean_log_loss(model: torch.nn.Module, images_u8: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor,
                  batch_size: int = 128) -> float:
    """Mean multiclass cross-entropy (log loss) of the model on a held-out set."""
    images = as_image_tensor(images_u8)
    targets = as_label_tensor(labels, len(images))
    if len(images) == 0:
        raise ValueError("mean_log_loss: the held-out set is empty; give at least one validation image")
    return float(F.cross_entropy(predict_logits(model, images, batch_size), targets))
