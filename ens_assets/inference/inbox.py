"""The inbox of new photos: one folder per batch (an SD card, a deployment) under plan.inference.inbox.

A batch is complete when its marker file (inference.complete_marker, e.g. `_READY`) is in it, or when
nothing in it changed for inference.settle_seconds (a copy still running keeps touching files). Its
MegaDetector batch JSON, when there is one, is `<batch>/megadetector.json` with file names relative to the
batch folder; without it every member classifies the full frame. Predictions of a batch go to
`<work>/predictions/<batch>/` as one folder swapped in whole, so a re-run replaces them atomically and the
same photos give the same files.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

from ens_assets.atomic import building_dir, replace_dir
from ens_assets.inference.artefact import EnsembleArtefact, resolve_artefact
from ens_assets.inference.batch import predict_batch
from ens_assets.inference.outputs import PredictOutputs
from ens_assets.plan import Plan, invalid_key_chars

DETECTIONS_FILE = "megadetector.json"
PREDICTIONS_SUBDIR = "predictions"


@dataclass(frozen=True)
class BatchState:
    name: str
    complete: bool
    fingerprint: str  # of every file's path, size and mtime: a changed batch is a new run
    why: str  # complete because / not yet because
    files: int


def inbox_dir(plan: Plan) -> Path:
    return plan.path(plan.inference.inbox)


def batch_output_dir(plan: Plan, batch: str) -> Path:
    return plan.work / PREDICTIONS_SUBDIR / batch


def batch_state(plan: Plan, folder: Path, now: float | None = None) -> BatchState:
    now = time.time() if now is None else now
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    newest = 0.0
    for path in files:
        stat = path.stat()
        digest.update(f"{path.relative_to(folder).as_posix()}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
        newest = max(newest, stat.st_mtime)
    marker = plan.inference.complete_marker
    settle = plan.inference.settle_seconds
    if marker and (folder / marker).is_file():
        complete, why = True, f"marker {marker} present"
    elif not files:
        complete, why = False, "empty folder"
    elif now - newest >= settle:
        complete, why = True, f"unchanged for {now - newest:.0f}s (settle_seconds {settle:g})"
    else:
        complete, why = False, f"changed {now - newest:.0f}s ago; waiting for {settle:g}s of quiet or {marker}"
    return BatchState(folder.name, complete, digest.hexdigest()[:16], why, len(files))


def inbox_batches(plan: Plan, now: float | None = None) -> tuple[list[BatchState], list[str]]:
    """(state of every batch folder, why other entries are not batches)."""
    root = inbox_dir(plan)
    if not root.is_dir():
        return [], [f"{root}: no inbox folder yet (inference.inbox); create it and drop batch folders into it"]
    states, problems = [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        bad = invalid_key_chars(folder.name)
        if bad:
            problems.append(f"{folder}: batch names may not contain {bad}; rename the folder")
            continue
        states.append(batch_state(plan, folder, now))
    return states, problems


def predict_inbox_batch(plan: Plan, batch: str, ensemble: str | EnsembleArtefact = "latest") -> PredictOutputs:
    """Predict every photo of inbox/<batch>/ into <work>/predictions/<batch>/, replaced as a whole."""
    folder = inbox_dir(plan) / batch
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such batch folder in the inbox (inference.inbox); was it moved?")
    detections = folder / DETECTIONS_FILE
    artefact = ensemble if isinstance(ensemble, EnsembleArtefact) else resolve_artefact(ensemble, plan)
    target = batch_output_dir(plan, batch)
    with building_dir(target) as building:
        outputs = predict_batch(folder, building, detections=detections if detections.is_file() else None,
                                ensemble=artefact, workers=plan.inference.workers,
                                batch_images=plan.inference.batch_images,
                                expected_files={DETECTIONS_FILE, plan.inference.complete_marker})
        replace_dir(building, target)
    outputs.paths = {name: target / path.name for name, path in outputs.paths.items()}
    return outputs
