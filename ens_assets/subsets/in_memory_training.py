"""Training and evaluation over in-memory uint8 NHWC image arrays.

The subset-ensemble core needs to train one model many times on different index subsets, so it works
on arrays already in memory and takes the training routine as a `TrainFn` callable. The small plain
cross-entropy trainer here is the default; the project's standard loop can be swapped in later by
passing any callable with the same signature.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.optim import create_optimizer_v2

if TYPE_CHECKING:
    from ens_assets.plan import TrainingConfig


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
    """A randomly initialised timm model; the same (backbone, seed) always gives the same weights."""
    import timm  # deferred: slow import, and only the training paths need it

    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2 for a classifier, got {num_classes}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        try:
            model = timm.create_model(backbone, pretrained=False, num_classes=num_classes)
        except RuntimeError as exc:
            if "Unknown model" not in str(exc):
                raise
            raise ValueError(f"backbone '{backbone}' is not a timm model; pick a name from timm.list_models()") from None
    return model.to(device).eval()


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def to_model_input(model: torch.nn.Module, batch_u8: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC batch -> float NCHW normalised with the model's own mean/std, on the model's device."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean = torch.tensor(cfg.get("mean", IMAGENET_DEFAULT_MEAN), dtype=torch.float32)
    std = torch.tensor(cfg.get("std", IMAGENET_DEFAULT_STD), dtype=torch.float32)
    device = model_device(model)
    x = batch_u8.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
    return x.sub_(mean.to(device).view(1, 3, 1, 1)).div_(std.to(device).view(1, 3, 1, 1))


def batch_slices(n: int, batch_size: int) -> list[slice]:
    """Contiguous batches; a trailing batch of one joins the previous one (BatchNorm cannot train on 1)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    starts = list(range(0, n, batch_size))
    if len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    return [slice(s, starts[i + 1] if i + 1 < len(starts) else n) for i, s in enumerate(starts)]


@torch.no_grad()
def predict_logits(model: torch.nn.Module, images_u8: np.ndarray | torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    """Eval-mode logits (N, C) on CPU; leaves the model in eval mode."""
    images = as_image_tensor(images_u8)
    model.eval()
    out = [model(to_model_input(model, images[s])).float().cpu() for s in batch_slices(len(images), batch_size)]
    return torch.cat(out) if out else torch.empty(0)


def mean_log_loss(model: torch.nn.Module, images_u8: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor,
                  batch_size: int = 128) -> float:
    """Mean multiclass cross-entropy (log loss) of the model on a held-out set."""
    images = as_image_tensor(images_u8)
    targets = as_label_tensor(labels, len(images))
    if len(images) == 0:
        raise ValueError("mean_log_loss: the held-out set is empty; give at least one validation image")
    return float(F.cross_entropy(predict_logits(model, images, batch_size), targets))


def cross_entropy_train_fn(
    model: torch.nn.Module, images_u8: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, epochs: int,
    seed: int, *, batch_size: int = 64, opt: str = "adamw", lr: float = 3e-3, weight_decay: float = 0.05,
) -> torch.nn.Module:
    """Default `TrainFn`: timm optimizer, plain cross-entropy, seeded shuffling, no augmentation.

    A fresh optimizer per call is deliberate: subset copies must not share optimizer state with the base.
    """
    images = as_image_tensor(images_u8)
    targets = as_label_tensor(labels, len(images))
    if len(images) < 2:
        raise ValueError(f"cannot train on {len(images)} image(s); BatchNorm needs at least 2 per batch")
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    device = model_device(model)
    optimizer = create_optimizer_v2(model, opt=opt, lr=lr, weight_decay=weight_decay)
    shuffler = torch.Generator().manual_seed(int(seed))
    model.train()
    # Seed dropout/drop-path too, without disturbing the caller's global RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        for _ in range(epochs):
            order = torch.randperm(len(images), generator=shuffler)
            for part in batch_slices(len(images), batch_size):
                idx = order[part]
                loss = F.cross_entropy(model(to_model_input(model, images[idx])), targets[idx].to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    model.eval()
    return model


def train_fn_from_config(training: "TrainingConfig") -> TrainFn:
    """The default trainer with the plan's optimizer settings (opt, lr, weight_decay, batch_size)."""
    return functools.partial(cross_entropy_train_fn, batch_size=training.batch_size, opt=training.opt,
                             lr=training.lr, weight_decay=training.weight_decay)
