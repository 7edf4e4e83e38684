"""Fixtures of the subset tests (their images: ens_assets_tests/subsets/colour_images.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ens_assets_tests.subsets.colour_images import colour_images


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
