"""Apply a fitted ensemble to new photos: every member on its own crops, every fold model averaged, combined.

Numbers are the ensemble's own: a member's fold models are averaged as its test predictions are
(ens_assets.training.run.predict_member_test), crops of one photo by their mean, members combined by the
fitted combiner and temperature-scaled when the ensemble's submission is.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn
from torch.func import functional_call

from ens_assets.ensemble.calibration import apply_temperature
from ens_assets.inference.artefact import ArtefactError, EnsembleArtefact, MemberModel
from ens_assets.inference.inputs import Detections, ImageInput, read_image_detections
from ens_assets.inference.loader import CropBatch, DecodedBatches, decode_workers, photo_loader
from ens_assets.training.augment import model_mean_std, normalize, to_unit_float
from ens_assets.training.device import autocast_context, memory_format, place_batch, select_device
from ens_assets.training.models import create_member_model

DEFAULT_BATCH_IMAGES = 64


@dataclass
class _LoadedMember:
    spec: MemberModel
    rule_index: int
    model: nn.Module  # the member's architecture, built once; each fold model is it with that fold's weights
    fold_weights: list[dict[str, torch.Tensor]]  # per fold: every parameter and buffer, as its safetensors file holds
    mean: torch.Tensor
    std: torch.Tensor
    class_order: np.ndarray  # member column of each ensemble class

    def fold_logits(self, x: torch.Tensor) -> Iterator[torch.Tensor]:
        """Each fold model's logits for x: the architecture applied with that fold's weights
        (torch.func.functional_call swaps them in for the call: no model is copied or re-initialised)."""
        for weights in self.fold_weights:
            yield functional_call(self.model, weights, (x,))


@dataclass
class Predictions:
    """Per photo (in input order): combined probabilities, or the reason it could not be read."""

    images: list[ImageInput]
    classes: list[str]
    probs: np.ndarray  # (N, C) float64; rows of unreadable photos are NaN
    problem: list[str | None]
    fallback: list[list[str]]  # per photo: the crop rules (thresholds) that fell back to the full frame
    boxes_used: list[set[tuple]]  # per photo: every box some member cropped
    detections: Detections
    artefact: EnsembleArtefact
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return len(self.images) / self.seconds if self.seconds > 0 else 0.0


def load_members(artefact: EnsembleArtefact, device: torch.device) -> list[_LoadedMember]:
    """The fold models of every member the combiner needs, in eval mode on `device`.

    One module per architecture (its random init is the only one paid); the folds are their safetensors read
    straight onto the device, applied in turn (_LoadedMember.fold_logits). Building, copying and loading a module
    per fold model took a quarter of predicting 160 photos (bench_predict; see the README's bench table)."""
    rules = artefact.crop_rules()
    loaded = []
    built: dict[tuple[str, int], tuple[nn.Module, dict[str, tuple]]] = {}
    for member in artefact.members:
        if member.key not in artefact.needed_members():
            continue
        shape = (member.backbone, len(member.classes))
        if shape not in built:
            model = create_member_model(*shape, None).to(device).eval()
            built[shape] = model, {name: tuple(t.shape) for name, t in model.state_dict().items()}
        model, expected = built[shape]
        weights = [_fold_weights(fold.path, expected, device) for fold in member.folds]
        mean, std = model_mean_std(model, device)
        order = np.array([member.classes.index(c) for c in artefact.classes])
        loaded.append(_LoadedMember(member, rules.index(member.crop), model, weights, mean, std, order))
    return loaded


def _fold_weights(path: Path, expected: dict[str, tuple], device: torch.device) -> dict[str, torch.Tensor]:
    """A fold's tensors, checked as load_state_dict(strict=True) checks them against the architecture's
    state_dict shapes (`expected`): the same names, the same shapes."""
    weights = load_file(str(path), device=str(device))
    given = {name: tuple(t.shape) for name, t in weights.items()}
    if given != expected:
        missing, unexpected = sorted(expected.keys() - given.keys()), sorted(given.keys() - expected.keys())
        resized = sorted(n for n in expected.keys() & given.keys() if expected[n] != given[n])
        raise ArtefactError(f"{path}: its weights do not fit the member's architecture (missing {missing[:3]}, "
                            f"unexpected {unexpected[:3]}, other shapes {resized[:3]}); re-export the ensemble from "
                            "the checkpoints it was fitted on")
    return weights


def member_crop_probs(member: _LoadedMember, crops_u8: torch.Tensor, device: torch.device) -> np.ndarray:
    """(crops, member classes) float32: softmax of each fold model, averaged over folds as test predictions are."""
    x = normalize(to_unit_float(place_batch(crops_u8, device)), member.mean, member.std)
    x = x.contiguous(memory_format=memory_format())
    total = None
    with autocast_context(device):
        for logits in member.fold_logits(x):
            probs = torch.softmax(logits.float(), dim=1).cpu().numpy().astype(np.float64)
            total = probs if total is None else total + probs
    return (total / len(member.fold_weights)).astype(np.float32)


def per_photo_mean(crop_probs: np.ndarray, owner: np.ndarray, n_photos: int) -> np.ndarray:
    """Mean crop probabilities per photo (float64 sums, as training.predict.per_image_mean)."""
    sums = np.zeros((n_photos, crop_probs.shape[1]), dtype=np.float64)
    np.add.at(sums, owner, crop_probs)
    counts = np.bincount(owner, minlength=n_photos)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (sums / counts[:, None]).astype(np.float32)


def combine(artefact: EnsembleArtefact, member_probs: dict[str, np.ndarray]) -> np.ndarray:
    """(N, C) ensemble probabilities from each needed member's (N, C) table (ensemble class order)."""
    n_classes = len(artefact.classes)
    n = len(next(iter(member_probs.values())))
    stacked = np.stack([member_probs[m.key].astype(np.float64) if m.key in member_probs
                        else np.full((n, n_classes), 1.0 / n_classes) for m in artefact.members])
    stacked = stacked / stacked.sum(axis=2, keepdims=True)  # as ensemble.tables.stack_test
    probs = artefact.combiner().predict_proba(stacked)
    return apply_temperature(probs, artefact.temperature) if artefact.calibrated else probs


def predict_photos(
    artefact: EnsembleArtefact,
    images: list[ImageInput],
    detections_json: str | Path | None = None,
    *,
    batch_images: int = DEFAULT_BATCH_IMAGES,
    workers: int | None = None,
    device: torch.device | None = None,
    progress: Callable[[int], None] | None = None,
) -> Predictions:
    """Predict every photo; `progress(n)` is called after each batch with the photos it held."""
    started = time.perf_counter()
    device = device or select_device()
    rules = artefact.crop_rules()
    detections = read_image_detections(detections_json, images, rules)
    n, n_classes = len(images), len(artefact.classes)
    problem: list[str | None] = [None] * n
    fallback: list[list[str]] = [[] for _ in range(n)]
    boxes_used: list[set[tuple]] = [set() for _ in range(n)]
    loader = photo_loader(images, rules, detections, batch_images, decode_workers(n, workers),
                          pin_memory=device.type == "cuda")
    with DecodedBatches(loader) as batches:  # the first photos decode while the fold models load
        members = load_members(artefact, device)
        member_probs = {m.spec.key: np.full((n, n_classes), np.nan, dtype=np.float32) for m in members}
        with torch.inference_mode():
            for batch in batches:
                _record_batch(batch, members, rules, device, member_probs, problem, fallback, boxes_used)
                if progress:
                    progress(len(batch.index))
    readable = np.array([p is None for p in problem], dtype=bool)
    probs = np.full((n, n_classes), np.nan)
    if readable.any():
        probs[readable] = combine(artefact, {k: v[readable] for k, v in member_probs.items()})
    notes = [] if detections.given else [
        "no --detections: every member classified the full frame (its full-frame fallback); give the MegaDetector "
        "batch JSON to classify the animals' crops as the members were trained"]
    if detections.unmatched:
        notes.append(f"{len(detections.unmatched)} entries of the detections JSON describe none of the photos given "
                     f"(e.g. {detections.unmatched[0]['file']!r}); they were ignored")
    return Predictions(images, list(artefact.classes), probs, problem, fallback, boxes_used, detections, artefact,
                       time.perf_counter() - started, notes)


def _record_batch(batch: CropBatch, members: list[_LoadedMember], rules, device, member_probs, problem, fallback,
                  boxes_used) -> None:
    positions = np.array(batch.index)
    for position, reason in zip(batch.index, batch.problem):
        problem[position] = reason
    for r, rule in enumerate(rules):
        for local, used in enumerate(batch.boxes_used[r]):
            if batch.problem[local] is None and not used:
                fallback[batch.index[local]].append(rule.threshold)
            boxes_used[batch.index[local]].update(used)
    for member in members:
        crops, owner = batch.crops[member.rule_index], batch.owner[member.rule_index].numpy()
        if len(crops) == 0:
            continue
        probs = per_photo_mean(member_crop_probs(member, crops, device), owner, len(batch.index))
        has_crops = np.bincount(owner, minlength=len(batch.index)) > 0
        member_probs[member.spec.key][positions[has_crops]] = probs[has_crops][:, member.class_order]
