"""`ens-assets predict` end to end vs a plain batched timm forward of the same fold models, same run.

Run: .venv/bin/python -m bench.bench_predict [--images-per-class 20 --repeats 3 --workers N]
The demo's test photos (192x144 JPEGs + their MegaDetector JSON) go through predict_batch exactly as the CLI
runs it (decode + crop per member rule, in a background thread for a small input and in DataLoader workers
above inference.loader.IN_PROCESS_MAX_PHOTOS, while the fold models load; every fold model, combine, write predictions.csv
and the MegaDetector JSON); the baseline feeds the same fold models the same crops, already decoded, cropped,
resized and normalised into float tensors, in batches of the same size under torch.inference_mode. The
ensemble is the repo plan's cv members with k fold models each (weights random: speed does not depend on them).
Goal: end-to-end >= 0.7x the plain forward's images/s.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ens_assets.data.demo import CLASSES_CONSERVISION, generate_demo
from ens_assets.inference.artefact import EnsembleArtefact, FoldWeights, MemberModel, artefact_version, member_crop_rule
from ens_assets.inference.batch import predict_batch
from ens_assets.inference.inputs import list_images, read_image_detections
from ens_assets.inference.loader import photo_loader
from ens_assets.inference.predict import DEFAULT_BATCH_IMAGES, load_members
from ens_assets.plan import DemoConfig, load_plan
from ens_assets.training.augment import normalize, to_unit_float
from ens_assets.training.device import memory_format, select_device
from ens_assets.training.models import create_member_model

REPO_ROOT = Path(__file__).resolve().parents[1]


def bench_artefact(plan, folder: Path, classes: list[str]) -> EnsembleArtefact:
    """The plan's cv members, each with k random-init fold models saved as safetensors, mean-combined."""
    members = []
    for member in [m for m in plan.members if m.stage == "cv"]:
        folds = []
        for fold in plan.prediction_folds(member):
            model = create_member_model(member.backbone, len(classes), None)
            path = folder / f"{member.key}.{fold}.safetensors"
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
            folds.append(FoldWeights(fold, path, ""))
        members.append(MemberModel(member.key, member.backbone, tuple(classes), member_crop_rule(plan, member.key),
                                   tuple(folds), plan.training_config(member).batch_size * 2))
    keys = [m.key for m in members]
    spec = {"method": "mean", "members": keys, "classes": classes, "weights": {k: 1 / len(keys) for k in keys},
            "params": {}}
    artefact = EnsembleArtefact(classes, spec, 1.0, False, members, "", "bench")
    artefact.version = artefact_version(artefact)
    return artefact


def predecoded_batches(artefact, images, detections_json, device) -> list[list[torch.Tensor]]:
    """Per batch, per crop rule: the normalised float crops on the device (what the plain forward is fed)."""
    rules = artefact.crop_rules()
    detections = read_image_detections(detections_json, images, rules)
    members = load_members(artefact, device)
    stats = {m.rule_index: (m.mean, m.std) for m in members}
    batches = []
    for batch in photo_loader(images, rules, detections, DEFAULT_BATCH_IMAGES, workers=0, pin_memory=False):
        batches.append([normalize(to_unit_float(c.to(device)), *stats[r]).contiguous(memory_format=memory_format())
                        if r in stats else None for r, c in enumerate(batch.crops)])
    return batches


def plain_fold_models(artefact, device) -> list[tuple[int, list[torch.nn.Module]]]:
    """Per member: its crop rule and its fold models, each a timm model given its weights the plain way."""
    rules = artefact.crop_rules()
    members = []
    for member in artefact.members:
        models = []
        for fold in member.folds:
            model = create_member_model(member.backbone, len(member.classes), None)
            model.load_state_dict(load_file(str(fold.path)))
            models.append(model.to(device).eval())
        members.append((rules.index(member.crop), models))
    return members


def plain_forward_seconds(members, batches) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in batches:
            for rule_index, models in members:
                for model in models:
                    model(batch[rule_index]).softmax(dim=1).cpu()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images-per-class", type=int, default=20)  # the demo test split's size
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None, help="decoding processes (default: cores, at most 8)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for both sides (default torch's: one per core); on a machine shared with "
                             "other work 1 keeps the forward from stalling at every op's thread barrier")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load_before = os.getloadavg()[0]
    device = select_device()
    plan = load_plan(REPO_ROOT / "params.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        demo = DemoConfig(seed=0, train_images_per_class=1, test_images_per_class=args.images_per_class)
        generate_demo(tmp / "demo", demo)
        detections = tmp / "demo" / "megadetector.json"
        csv = tmp / "demo" / "test_features.csv"
        artefact = bench_artefact(plan, tmp, list(CLASSES_CONSERVISION))
        images = list_images(csv).images
        n = len(images)
        models = sum(len(m.folds) for m in artefact.members)
        print(f"{n} demo test photos ({demo.frame_width}x{demo.frame_height} JPEG), {len(artefact.members)} members x "
              f"folds = {models} fold models, crop rules {[r.threshold for r in artefact.crop_rules()]}, "
              f"input sizes {sorted({m.crop.image_size for m in artefact.members})} px, device {device}, "
              f"{torch.get_num_threads()} torch threads")
        predict_batch(csv, tmp / "warm", detections=detections, ensemble=artefact, workers=args.workers)  # warm-up
        batches = predecoded_batches(artefact, images, detections, device)
        plain_members = plain_fold_models(artefact, device)
        plain_forward_seconds(plain_members, batches[:1])  # warm-up
        e2e_times, plain_times, e2e_cpu, plain_cpu = [], [], [], []
        for _ in range(args.repeats):  # interleaved, best of each: the shared machine's load drifts
            cpu = time.process_time()
            e2e_times.append(_timed(lambda: predict_batch(csv, tmp / "out", detections=detections, ensemble=artefact,
                                                          workers=args.workers)))
            e2e_cpu.append(time.process_time() - cpu)
            cpu = time.process_time()
            plain_times.append(plain_forward_seconds(plain_members, batches))
            plain_cpu.append(time.process_time() - cpu)
        e2e, plain = min(e2e_times), min(plain_times)
    e2e_rate, plain_rate = n / e2e, n / plain
    print(f"end-to-end predict (JPEG + JSON in, CSV + MegaDetector JSON out): {e2e_rate:.1f} images/s ({e2e:.2f}s)")
    print(f"plain batched timm forward of the same {models} fold models on pre-decoded tensors: {plain_rate:.1f} "
          f"images/s ({plain:.2f}s)")
    print(f"ratio end-to-end / plain: {e2e_rate / plain_rate:.2f}x (goal >= 0.7x)")
    # Every repeat, so a reader can see how much the shared machine's load moved the best-of figures.
    pairs = sorted(p / e for e, p in zip(e2e_times, plain_times))
    print(f"every repeat (s): end-to-end {[round(t, 2) for t in e2e_times]}, plain {[round(t, 2) for t in plain_times]}; "
          f"median ratio of the interleaved pairs {pairs[len(pairs) // 2]:.2f}x")
    # CPU seconds of this process (decoding thread included; decoding workers, when used, not): the work each side
    # does, which other sessions' load moves far less than wall time. At one torch thread a quiet machine's wall
    # ratio is at least this ratio (the end-to-end side overlaps decoding with the models, the plain one has
    # nothing to overlap); with more threads it also counts the threads' spin-waiting.
    cpu_pairs = sorted(p / e for e, p in zip(e2e_cpu, plain_cpu))
    print(f"CPU seconds: end-to-end {[round(t, 2) for t in e2e_cpu]}, plain {[round(t, 2) for t in plain_cpu]}; median "
          f"ratio {cpu_pairs[len(cpu_pairs) // 2]:.2f}x")
    print(f"machine load (1-min average) {load_before:.1f} before, {os.getloadavg()[0]:.1f} after; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
