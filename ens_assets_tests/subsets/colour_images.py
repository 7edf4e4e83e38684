"""Tiny synthetic camera-trap stand-ins: colour-coded classes a CNN separates in a few epochs."""

from __future__ import annotations

import numpy as np

BACKBONE = "test_resnet"  # timm's ~0.4M-parameter test model: CPU-fast, random init only
_COLOURS = np.array([[220, 40, 40], [40, 220, 40], [40, 40, 220]])


def colour_images(per_class: int, seed: int, size: int = 32, noise: float = 40.0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 NHWC images whose class is their dominant colour, plus pixel noise."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(_COLOURS)), per_class)
    pixels = _COLOURS[labels][:, None, None, :] + rng.normal(0, noise, (len(labels), size, size, 3))
    return np.clip(pixels, 0, 255).astype(np.uint8), labels
