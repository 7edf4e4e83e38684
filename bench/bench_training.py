"""Training throughput of the platform's epoch loop (lcnet_050, 64 px, batch 64).

Run: .venv/bin/python -m bench.bench_training [--images 1024 --epochs 2]
Prints training images/s (augmentation + forward + backward + optimizer step; the last epoch, so the
first pays the warm-up), all measured in this run on the same model and batch size:
- platform loop (in-memory uint8 crops, batched tensor augmentation, timm optimizer/scheduler/loss)
  vs a plain PyTorch loop over the same pre-normalised in-memory tensors (goal >= 0.95x);
- platform loop vs a plain timm-style loop decoding JPEG crops from an ImageFolder every epoch with
  torchvision transforms and a DataLoader (goal >= 1.5x).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from ens_assets.plan import Budget, Recipe, TrainingConfig
from ens_assets.training.loop import fit
from ens_assets.training.models import create_member_model

BACKBONE, SIZE, BATCH, CLASSES = "lcnet_050", 64, 64, 8


def _crops(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, CLASSES, n)
    images = rng.integers(0, 120, (n, SIZE, SIZE, 3), dtype=np.uint8)
    images[np.arange(n), :, :, labels % 3] += 100
    return images, labels


def _model() -> nn.Module:
    torch.manual_seed(0)
    return create_member_model(BACKBONE, CLASSES, None)


def platform_loop(images, labels, epochs: int) -> float:
    outcome = fit(
        _model(), images, labels, images[:BATCH], labels[:BATCH], num_classes=CLASSES,
        recipe=Recipe(hflip=0.5, scale=(0.6, 1.0), label_smoothing=0.1),
        config=TrainingConfig(batch_size=BATCH, warmup_epochs=0), budget=Budget(epochs=epochs, patience=epochs),
        seed=0, out_dir=None, device=torch.device("cpu"), log=lambda _: None,
    )  # fmt: skip
    return outcome.history[-1]["images_per_second"]


def plain_tensor_loop(images, labels, epochs: int) -> float:
    model = _model().train()
    mean, std = torch.tensor(model.pretrained_cfg["mean"]), torch.tensor(model.pretrained_cfg["std"])
    x_all = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    y_all = torch.from_numpy(labels).long()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    criterion = nn.CrossEntropyLoss()
    rate = 0.0
    for _ in range(epochs):
        start, seen = time.perf_counter(), 0
        for idx in torch.randperm(len(y_all)).split(BATCH):
            loss = criterion(model(x_all[idx]), y_all[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += len(idx)
        rate = seen / (time.perf_counter() - start)
    return rate


def write_imagefolder(images, labels, root: Path) -> None:
    for i, (image, label) in enumerate(zip(images, labels)):
        folder = root / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:05d}.jpg", quality=90)


def imagefolder_loop(images, labels, epochs: int, root: Path, workers: int) -> float:
    from torchvision import datasets, transforms

    model = _model().train()
    transform = transforms.Compose([
        transforms.RandomResizedCrop(SIZE, scale=(0.6, 1.0)), transforms.RandomHorizontalFlip(),
        transforms.ToTensor(), transforms.Normalize(model.pretrained_cfg["mean"], model.pretrained_cfg["std"]),
    ])  # fmt: skip
    loader = torch.utils.data.DataLoader(
        datasets.ImageFolder(root, transform=transform), batch_size=BATCH, shuffle=True,
        num_workers=workers, persistent_workers=workers > 0,
    )  # fmt: skip
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    rate = 0.0
    for _ in range(epochs):
        start, seen = time.perf_counter(), 0
        for x, y in loader:
            loss = criterion(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += len(y)
        rate = seen / (time.perf_counter() - start)
    return rate


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    images, labels = _crops(args.images)
    print(
        f"{BACKBONE} {SIZE}px batch {BATCH}, {args.images} crops, {args.epochs} epochs, torch threads "
        f"{torch.get_num_threads()}; best of {args.repeats} interleaved repeats (robust to other load on the machine)"
    )
    platform = plain = folder = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        write_imagefolder(images, labels, Path(tmp))
        for _ in range(args.repeats):
            platform = max(platform, platform_loop(images, labels, args.epochs))
            plain = max(plain, plain_tensor_loop(images, labels, args.epochs))
            folder = max(folder, imagefolder_loop(images, labels, args.epochs, Path(tmp), args.workers))
    print(f"platform loop (in-memory uint8 + batched augmentation): {platform:8.0f} img/s")
    print(f"plain PyTorch loop (pre-normalised tensors, no aug):    {plain:8.0f} img/s")
    print(f"ImageFolder JPEG + torchvision transforms ({args.workers} workers): {folder:8.0f} img/s")
    print(f"ratio platform / plain tensor loop: {platform / plain:.2f}x (goal >= 0.95x)")
    print(f"ratio platform / ImageFolder loop:  {platform / folder:.2f}x (goal >= 1.5x)")


if __name__ == "__main__":
    main()
