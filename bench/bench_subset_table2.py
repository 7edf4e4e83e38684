"""Subset ensembles vs single models at one epoch budget (Ro et al., CVPR-W 2023, Table 2) on the demo data.

Run: .venv/bin/python -m bench.bench_subset_table2 [--backbone test_resnet --epochs 30 --fraction 0.3 --seeds 0 1 2]

Default backbone test_resnet, batch 16: lcnet_050 from random init barely leaves chance on these ~300
crops (measured: full data 1.79 log loss / 0.33 accuracy at 30 epochs, batch 16; at chance with batch 64).

Demo data (ens_assets.data.demo, default size unless --per-class), MegaDetector crops at 0.05, 64 px,
fold 0 of the plan's StratifiedGroupKFold split as validation. Every method trains with the project's
standard epoch loop (recipe 'geo', adamw, cosine) for the same total number of epochs:

- full data (baseline): one model on all training crops
- no-ensemble subset: one model on a random k% subset for the whole budget
- subset ensemble n=2 / n=4: base on k% -> n copies on difficulty strata -> greedy soup (one phase)

Honest selection: a 15% slice of fold 0's training crops (whole images, stratified) is held out once; every
method trains on the rest and picks its best epoch on the slice, and the soups choose their ingredients and
the soup-vs-base fallback on it, with BatchNorm statistics recomputed after averaging. Fold 0's validation
crops are only scored. Each ensemble row also prints its base model's validation score ("soup beats base").

The difficulty scores (EL2N, one seed, one epoch) are computed once and shared by both ensembles; their
time is printed separately and included in the ensembles' wall time. Each method is one MLflow run in
experiment "ens-assets-subset-table2" ($MLFLOW_TRACKING_URI, else sqlite in .bench/subset_table2/).
Wall-time ratios are against the full-data run of the same seed, measured in this run.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch
from sklearn.metrics import accuracy_score, log_loss

from ens_assets.plan import Budget, Recipe, TrainingConfig, plan_from_dict
from ens_assets.plan import SubsetEnsembleConfig
from ens_assets.subsets.difficulty import difficulty_scores
from ens_assets.subsets.in_memory_training import predict_logits
from ens_assets.subsets.standard_loop import standard_loop_train_fn
from ens_assets.subsets.strata import random_subset, subset_size
from ens_assets.subsets.strategy import selection_split, train_subset_ensemble
from ens_assets.training.models import create_member_model

WORKDIR = Path(__file__).resolve().parent.parent / ".bench" / "subset_table2"
EXPERIMENT = "ens-assets-subset-table2"
THRESHOLD = 0.05


def prepare_fold0(per_class: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """(train images, train labels, val images, val labels, classes) of fold 0, built once under .bench/."""
    from ens_assets.atomic import write_parquet
    from ens_assets.data.crops import build_crop_cache, open_crop_cache
    from ens_assets.data.demo import generate_demo
    from ens_assets.data.detections import load_detections
    from ens_assets.data.folds import assign_folds
    from ens_assets.data.ingest import load_manifest

    demo = {} if per_class is None else {"train_images_per_class": per_class, "test_images_per_class": 2}
    plan = plan_from_dict({
        "data": {"layout": "demo", "root": "demo", "detections": "demo/megadetector.json", "demo": demo},
        "crops": {"thresholds": [THRESHOLD], "image_size": 64},
        "members": [{"backbone": "lcnet_050", "threshold": THRESHOLD, "recipe": "geo"}],
        "workdir": "work",
    }, WORKDIR / f"demo_{per_class or 'default'}", check_backbones=False)  # fmt: skip
    generate_demo(plan.data_root, plan.data.demo)
    crops_dir = plan.crops_dir(THRESHOLD)
    if not (crops_dir / "summary.json").is_file() or not plan.folds_path.is_file():
        manifest = load_manifest(plan)
        detections = load_detections(plan.path(plan.data.detections), manifest)
        build_crop_cache(manifest, detections, THRESHOLD, plan.crops, crops_dir)
        write_parquet(plan.folds_path, assign_folds(manifest, plan.folds.k, plan.folds.seed))
    cache = open_crop_cache(crops_dir)
    folds = pl.read_parquet(plan.folds_path)
    crops = cache.index.filter(pl.col("split") == "train").join(folds.select("image_id", "label", "fold"), on="image_id")
    classes = sorted(crops["label"].unique().to_list())
    lookup = {c: i for i, c in enumerate(classes)}

    def part(frame: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        frame = frame.sort("row")
        labels = np.array([lookup[v] for v in frame["label"].to_list()], dtype=np.int64)
        return np.ascontiguousarray(cache.images[frame["row"].to_numpy()]), labels

    train = crops.filter(pl.col("fold") != 0).sort("row")
    return (*part(train), *part(crops.filter(pl.col("fold") == 0)), classes, train["image_id"].to_numpy())


def evaluate(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray, num_classes: int) -> tuple[float, float]:
    probs = predict_logits(model, images).double().softmax(dim=1).numpy()  # float64: sums to 1 for sklearn
    return float(log_loss(labels, probs, labels=list(range(num_classes)))), float(accuracy_score(labels, probs.argmax(1)))


def tracking_client():
    import mlflow

    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{WORKDIR / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(
        EXPERIMENT, artifact_location=(WORKDIR / "mlartifacts").resolve().as_uri() if uri.startswith("sqlite") else None)
    return client, experiment_id, uri


def log_run(client, experiment_id: str, name: str, params: dict, metrics: dict) -> None:
    run = client.create_run(experiment_id, run_name=name, tags={"method": name})
    for key, value in params.items():
        client.log_param(run.info.run_id, key, str(value))
    for key, value in metrics.items():
        client.log_metric(run.info.run_id, key, float(value))
    client.set_terminated(run.info.run_id)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="test_resnet")
    parser.add_argument("--epochs", type=int, default=30, help="total epoch budget of every method")
    parser.add_argument("--fraction", type=float, default=0.3, help="k: share of the training crops per subset")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--per-class", type=int, default=None, help="demo training images per class (default: demo default)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: stable timings on a shared box)")
    args = parser.parse_args(argv if argv is not None else [])
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()

    all_x, all_y, val_x, val_y, classes, image_ids = prepare_fold0(args.per_class)
    num_classes = len(classes)
    keep, chosen = selection_split(all_y, SubsetEnsembleConfig().selection_fraction, 0, image_ids)
    train_x, train_y = np.ascontiguousarray(all_x[keep]), all_y[keep]
    select_x, select_y = np.ascontiguousarray(all_x[chosen]), all_y[chosen]
    recipe = Recipe(hflip=0.5, scale=(0.6, 1.0), label_smoothing=0.1)
    config = TrainingConfig(batch_size=args.batch_size, warmup_epochs=0)
    device = torch.device("cpu")
    client, experiment_id, uri = tracking_client()
    k_size = subset_size(len(train_y), args.fraction)
    print(f"{args.backbone}, {len(train_y)} training / {len(val_y)} validation crops (fold 0), {num_classes} classes, "
          f"+ {len(select_y)} selection crops, 64 px, k={args.fraction} ({k_size} crops), {args.epochs} epochs per method, {args.threads} torch thread(s), "
          f"load average before {load_before[0]:.2f}")

    def trainer():
        return standard_loop_train_fn(num_classes, select_x, select_y, recipe=recipe, config=config, time_budget_s=1e9,
                                      device=device)

    def seeded_model(seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)
        return create_member_model(args.backbone, num_classes, None)

    rows = []
    for seed in args.seeds:
        results: dict[str, dict] = {}

        def record(name: str, model, wall: float, images_trained: int, extra_params: dict) -> None:
            loss, acc = evaluate(model, val_x, val_y, num_classes)
            results[name] = {"val_log_loss": loss, "val_acc": acc, "wall_s": wall, "images_trained": images_trained}
            log_run(client, experiment_id, name,
                    {"backbone": args.backbone, "seed": seed, "total_epochs": args.epochs, "fraction": args.fraction,
                     "n_train": len(train_y), "n_val": len(val_y), **extra_params}, results[name])  # fmt: skip

        started = time.perf_counter()
        model = trainer()(seeded_model(seed), train_x, train_y, args.epochs, seed)
        record("full data", model, time.perf_counter() - started, args.epochs * len(train_y), {"method": "full"})

        started = time.perf_counter()
        subset = random_subset(len(train_y), args.fraction, seed, train_y)
        model = trainer()(seeded_model(seed), train_x[subset], train_y[subset], args.epochs, seed)
        record("subset, no ensemble", model, time.perf_counter() - started, args.epochs * len(subset), {"method": "subset_single"})

        started = time.perf_counter()
        scores = difficulty_scores(args.backbone, num_classes, train_x, train_y, seeds=(seed,), epochs=1,
                                   batch_size=64, train_fn=trainer(), device=device)
        scores_wall = time.perf_counter() - started
        for copies in (2, 4):
            cfg = SubsetEnsembleConfig(fraction=args.fraction, copies=copies, phases=1, total_epochs=args.epochs,
                                       merge="greedy", score="el2n", score_seeds=(seed,), batch_size=64)
            started = time.perf_counter()
            model, report = train_subset_ensemble(args.backbone, num_classes, train_x, train_y, val_x, val_y, cfg,
                                                  seed=seed, train_fn=trainer(), scores=scores,
                                                  initial_model=seeded_model(seed), device=device,
                                                  selection_images=select_x, selection_labels=select_y)
            (phase,) = report["phases"]
            print(f"  seed {seed} n={copies}: base {phase['base_epochs']} epochs val loss {phase['base_val_loss']:.4f}; "
                  f"copies {phase['copy_epochs']} epochs each {[round(v, 4) for v in phase['copy_val_losses']]}; "
                  f"kept {phase['merged_val_loss']:.4f} (accepted {phase['accepted_copies']} on the selection slice, "
                  f"{'fell back to the base' if phase['fallback_to_base'] else 'soup kept'}; soup beats base on val: "
                  f"{phase['merged_val_loss'] < phase['base_val_loss']}) [crop-level]")
            epochs_images = phase["base_epochs"] * phase["base_subset_size"] + phase["copy_epochs"] * sum(phase["copy_subset_sizes"])
            record(f"subset ensemble n={copies}", model, time.perf_counter() - started + scores_wall,
                   epochs_images + len(train_y),  # + the scoring epoch over all crops
                   {"method": "subset_ensemble", "copies": copies, "merge": "greedy",
                    "accepted_copies": len(phase["accepted_copies"]), "scores_wall_s": round(scores_wall, 2),
                    "fallback_to_base": phase["fallback_to_base"], "base_val_loss_crops": round(phase["base_val_loss"], 4)})
        base = results["full data"]["wall_s"]
        for name, r in results.items():
            rows.append((seed, name, r["val_log_loss"], r["val_acc"], r["wall_s"], r["wall_s"] / base, r["images_trained"]))
        print(f"  seed {seed}: difficulty scores {scores_wall:.1f} s (included in the ensembles' wall time)")

    print(f"\n{'seed':>4}  {'method':<22} {'val log loss':>12} {'val acc':>8} {'wall s':>8} {'x full':>7} {'images trained':>15}")
    for seed, name, loss, acc, wall, ratio, seen in rows:
        print(f"{seed:>4}  {name:<22} {loss:>12.4f} {acc:>8.3f} {wall:>8.1f} {ratio:>7.2f} {seen:>15}")
    load_after = os.getloadavg()
    print(f"load average after {load_after[0]:.2f} (1 min), {load_after[1]:.2f} (5 min); MLflow: {uri} experiment {EXPERIMENT}")


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
