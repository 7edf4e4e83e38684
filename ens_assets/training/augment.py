"""Batched tensor augmentation: one affine resample per batch instead of PIL transforms per sample.

Random-resized-crop, horizontal flip and the crop's placement become one per-image axis-aligned
sampling grid applied with a single `grid_sample` call; colour jitter is three broadcast multiplies. Every
random number comes from the caller's `torch.Generator`, so a batch is reproducible from its seed.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ens_assets.plan import Recipe

_ASPECT_RANGE = (3 / 4, 4 / 3)  # torchvision RandomResizedCrop's default ratio range


def to_unit_float(batch_u8: torch.Tensor) -> torch.Tensor:
    """uint8 N x H x W x 3 or N x 3 x H x W -> float N x 3 x H x W in [0, 1]."""
    if batch_u8.shape[1] != 3 and batch_u8.shape[-1] == 3:
        batch_u8 = batch_u8.permute(0, 3, 1, 2)
    return batch_u8.float().div_(255.0)


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Subtract the backbone's mean and divide by its std, per channel."""
    return (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)


def model_mean_std(model: torch.nn.Module, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The normalisation the timm backbone's pretrained_cfg gives (timm resolve_data_config; ImageNet's
    when it declares none): pretrained weights only see inputs scaled as they were trained on."""
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=model)
    return torch.tensor(cfg["mean"], device=device), torch.tensor(cfg["std"], device=device)


def resize_crops(images_u8: np.ndarray, size: int, chunk: int = 512) -> np.ndarray:
    """uint8 N x S x S x 3 -> N x size x size x 3 (antialiased bilinear): a member's size from the shared cache."""
    if images_u8.shape[1] == size and images_u8.shape[2] == size:
        return images_u8
    out = np.empty((len(images_u8), size, size, 3), dtype=np.uint8)
    for start in range(0, len(images_u8), chunk):
        x = torch.from_numpy(np.ascontiguousarray(images_u8[start : start + chunk])).permute(0, 3, 1, 2).float()
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[start : start + chunk] = x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return out


def augment_batch(x: torch.Tensor, recipe: Recipe, generator: torch.Generator) -> torch.Tensor:
    """Augment a float N x 3 x H x W batch in [0, 1] (before normalisation) as the recipe says."""
    n, _, height, width = x.shape
    scale_x, scale_y, shift_x, shift_y = (t.to(x.device, x.dtype) for t in _crop_and_flip_params(n, recipe, generator))
    # The transform is axis-aligned, so the sampling grid is separable: build it by broadcasting
    # (about 3x cheaper than affine_grid's batched matmul at 64 px) and resample once.
    base_x = (torch.arange(width, device=x.device, dtype=x.dtype) * 2 + 1) / width - 1
    base_y = (torch.arange(height, device=x.device, dtype=x.dtype) * 2 + 1) / height - 1
    grid_x = (scale_x[:, None] * base_x + shift_x[:, None])[:, None, :].expand(n, height, width)
    grid_y = (scale_y[:, None] * base_y + shift_y[:, None])[:, :, None].expand(n, height, width)
    grid = torch.stack([grid_x, grid_y], dim=-1)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if recipe.color_jitter > 0:
        x = _color_jitter(x, recipe.color_jitter, generator)
    return x


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=generator) * (high - low) + low


def _crop_and_flip_params(n: int, recipe: Recipe, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Per-image x/y scale (negative x = mirrored) and shift in grid_sample's [-1, 1] coordinates."""
    area = _uniform(n, recipe.scale[0], recipe.scale[1], generator)
    log_ratio = _uniform(n, math.log(_ASPECT_RANGE[0]), math.log(_ASPECT_RANGE[1]), generator)
    ratio = torch.exp(log_ratio)
    # Crop width/height as fractions of the image side; clamp so the crop stays inside the image.
    width = torch.sqrt(area * ratio).clamp(max=1.0)
    height = torch.sqrt(area / ratio).clamp(max=1.0)
    # Crop centre anywhere the crop still fits: offset in [-(1 - size), 1 - size].
    shift_x = (torch.rand(n, generator=generator) * 2 - 1) * (1 - width)
    shift_y = (torch.rand(n, generator=generator) * 2 - 1) * (1 - height)
    flip = torch.where(torch.rand(n, generator=generator) < recipe.hflip, -1.0, 1.0)
    return width * flip, height, shift_x, shift_y


def _color_jitter(x: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Brightness, contrast and saturation factors drawn per image from [1 - s, 1 + s]."""
    n = x.shape[0]

    def factors() -> torch.Tensor:
        return _uniform(n, max(0.0, 1 - strength), 1 + strength, generator).to(x.device, x.dtype).view(n, 1, 1, 1)

    x = x * factors()
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * factors() + mean
    gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    x = (x - gray) * factors() + gray
    return x.clamp_(0.0, 1.0)
