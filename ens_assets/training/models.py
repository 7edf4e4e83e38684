"""The member model factory (timm) and its cost figures: parameter count and FLOPs per image."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import timm
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


class ModelError(ValueError):
    """A backbone or weights source that cannot be built; the message names it and the fix."""


def create_member_model(
    backbone: str,
    num_classes: int,
    pretrained: str | None,
    base_dir: Path | None = None,
) -> nn.Module:
    """Build a timm classifier with `num_classes` outputs.

    pretrained: None = random init; a path to a local weights file (.safetensors / .pth, relative to
    `base_dir`) loaded through timm's own pretrained machinery, so a classifier head of another size is
    dropped and re-initialised as timm does; "cache" = the weights already in the local Hugging Face
    cache (never downloaded: no network is touched).
    """
    if not timm.is_model(backbone):
        near = timm.list_models(f"*{backbone.split('_')[0]}*")[:8]
        raise ModelError(f"backbone '{backbone}' is not a timm model; use a name from timm.list_models(), similar: {near}")
    if num_classes < 2:
        raise ModelError(f"num_classes = {num_classes}: a classifier needs at least two classes")
    if pretrained is None:
        return timm.create_model(backbone, pretrained=False, num_classes=num_classes)
    weights = _cached_weights_file(backbone) if pretrained == "cache" else _local_weights_file(pretrained, base_dir)
    try:
        return timm.create_model(
            backbone, pretrained=True, num_classes=num_classes, pretrained_cfg_overlay=dict(file=str(weights))
        )
    except (RuntimeError, KeyError, ValueError, OSError) as exc:
        raise ModelError(
            f"weights file {weights} does not fit backbone '{backbone}': {str(exc).splitlines()[0]}. "
            "Give weights saved from the same timm architecture"
        ) from None


def _local_weights_file(pretrained: str, base_dir: Path | None) -> Path:
    path = Path(pretrained)
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    if not path.is_file():
        raise ModelError(
            f"pretrained weights file {path} does not exist; give a local .safetensors/.pth file, "
            "'cache' for the local Hugging Face cache, or nothing for random init"
        )
    return path


def _cached_weights_file(backbone: str) -> Path:
    """The backbone's default pretrained weights from the local HF cache, without any network call."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from huggingface_hub import try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(backbone)
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if repo:
        for filename in ("model.safetensors", "pytorch_model.bin"):
            found = try_to_load_from_cache(repo, filename)
            if isinstance(found, str):
                return Path(found)
    raise ModelError(
        f"pretrained: cache was asked for '{backbone}' but its weights ({repo or 'no Hugging Face id'}) are "
        "not in the local Hugging Face cache. This platform never downloads weights: copy the file in "
        "(huggingface-cli download on a connected machine) or set pretrained to a local weights file"
    )


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flops_per_image(model: nn.Module, image_size: int) -> int:
    """Forward-pass FLOPs for one 3 x image_size x image_size image (FlopCounterMode counts a multiply-add as 2)."""
    probe = copy.deepcopy(model).to("cpu", memory_format=torch.contiguous_format).eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        probe(torch.zeros(1, 3, image_size, image_size))
    return int(counter.get_total_flops())
