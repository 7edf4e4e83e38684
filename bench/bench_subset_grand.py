"""GraNd per-example gradient norms: torch.func vmap(grad) vs one backward pass per example.

Baseline (measured in the same run): the naive loop, one forward+backward per image. Prints the
speed-up of the vmap path ("full" scope: all parameters) and of the "last_layer" approximation, plus
how closely each agrees with the baseline (rank correlation for the approximation).

Run: .venv/bin/python -m bench.bench_subset_grand
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

from ens_assets.subsets.difficulty import score_model
from ens_assets.subsets.in_memory_training import create_seeded_model, to_model_input
from ens_assets.subsets.standard_loop import default_train_fn

CASES = [("test_resnet", 32, 96), ("lcnet_050", 64, 48)]  # (backbone, image size, images)


def naive_grad_norms(model: torch.nn.Module, images_u8: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    model.eval()
    norms = []
    for i in range(len(images_u8)):
        model.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(to_model_input(model, images_u8[i : i + 1])), labels[i : i + 1])
        loss.backward()
        norms.append(torch.sqrt(sum(p.grad.pow(2).sum() for p in model.parameters() if p.grad is not None)).item())
    return np.array(norms)


def _colour_classes(rng: np.random.Generator, n: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """4 colour-coded classes with pixel noise and 10% flipped labels: easy, hard and mislabelled images."""
    colours = np.array([[220, 40, 40], [40, 220, 40], [40, 40, 220], [200, 200, 40]])
    labels = rng.integers(0, 4, n)
    pixels = colours[labels][:, None, None, :] + rng.normal(0, 60, (n, size, size, 3))
    flipped = rng.random(n) < 0.1
    labels[flipped] = (labels[flipped] + 1) % 4
    return torch.from_numpy(np.clip(pixels, 0, 255).astype(np.uint8)), torch.from_numpy(labels)


def _timed(fn, repeats: int = 2):
    best, result = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - started)
    return best, result


def main() -> None:
    # One thread: on the shared 2-core box two spinning OpenMP threads make timings swing several-fold.
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    for backbone, size, n in CASES:
        images, labels = _colour_classes(rng, n, size)
        model = default_train_fn(4, images, labels)(create_seeded_model(backbone, 4, seed=0), images, labels, 3, 0)
        params = sum(p.numel() for p in model.parameters())
        t_naive, naive = _timed(lambda: naive_grad_norms(model, images, labels), repeats=1)
        t_full, (_, full) = _timed(lambda: score_model(model, images, labels, batch_size=64, grad_scope="full"))
        t_last, (_, last) = _timed(lambda: score_model(model, images, labels, batch_size=64, grad_scope="last_layer"))
        print(f"{backbone} ({params / 1e6:.2f}M params, {n} images {size}px, {torch.get_num_threads()} threads)")
        print(f"  naive loop (baseline)    {t_naive:7.3f} s   1.00x")
        print(f"  vmap(grad) full          {t_full:7.3f} s   {t_naive / t_full:5.2f}x faster   "
              f"max rel diff vs baseline {np.max(np.abs(full - naive) / naive):.1e}")
        print(f"  vmap(grad) last layer    {t_last:7.3f} s   {t_naive / t_last:5.2f}x faster   "
              f"Spearman vs baseline {spearmanr(last, naive).statistic:.3f}")


if __name__ == "__main__":
    main()
