"""Tiny synthetic camera-trap stand-ins: colour-coded classes a CNN separates in a few epochs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

BACKBONE = "test_resnet"  # timm's ~0.4M-parameter test model: CPU-fast, random init only
_COLOURS = np.array([[220, 40, 40], [40, 220, 40], [40, 40, 220]])


def colour_images(per_class: int, seed: int, size: int = 32, noise: float = 40.0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 NHWC images whose class is their dominant colour, plus pixel noise."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(_COLOURS)), per_class)
    pixels = _COLOURS[labels][:, None, None, :] + rng.normal(0, noise, (len(labels), size, size, 3))
    return np.clip(pixels, 0, 255).astype(np.uint8), labels


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """These models are tiny: with other test processes on the 2 cores, two OpenMP threads that spin
    waiting for each other made this area ~6x slower than one thread (108 s vs 17 s, measured)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def separable_with_flips() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """72 separable images; 6 of them carry a wrong label (the planted hard examples)."""
    images, labels = colour_images(per_class=24, seed=0)
    flipped = np.random.default_rng(1).choice(len(labels), size=6, replace=False)
    noisy = labels.copy()
    noisy[flipped] = (labels[flipped] + 1) % 3
    return images, noisy, flipped


@pytest.fixture(scope="session")
def train_val() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    train_images, train_labels = colour_images(per_class=20, seed=2, noise=60.0)
    val_images, val_labels = colour_images(per_class=8, seed=3, noise=60.0)
    return train_images, train_labels, val_images, val_labels
