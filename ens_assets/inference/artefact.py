"""The fitted ensemble as one self-contained, versioned folder: what predicting new images needs and nothing else.

`ensemble.json` holds the class list, the fitted combiner's spec (JSON numbers, no pickle), the temperature,
and per member its backbone, its crop rule (threshold, crop mode, padding, squaring, full-frame fallback,
cache and input size) and its fold checkpoints with their sha256; the weights sit beside it as safetensors
(`members/<member>/<fold>.safetensors`). An artefact is also assembled in place from a plan's ensemble
(spec.json + the member checkpoints it was fitted on), which is what `--ensemble latest` falls back to.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ens_assets.atomic import building_dir, replace_dir, write_json, write_text
from ens_assets.data.crops import CropSettings, crop_settings
from ens_assets.ensemble.combiners import Combiner, combiner_from_spec
from ens_assets.plan import ANNOTATED_BOXES_KEY, NO_DETECTOR_KEY, Plan, threshold_key
from ens_assets.training.checkpoint import WEIGHTS_FILE

ARTEFACT_FILE = "ensemble.json"
ARTEFACT_FORMAT = "ens-assets-ensemble"
ARTEFACT_FORMAT_VERSION = 1
ARTEFACTS_SUBDIR = "ensemble_model"  # under plan.work: one folder per version and a LATEST pointer
LATEST_FILE = "LATEST"
# Combiners whose zero-weight members do not change the output: those members need not run at all.
_WEIGHT_ONLY_METHODS = ("mean", "geometric", "weighted", "greedy")


class ArtefactError(ValueError):
    """An ensemble that cannot be loaded; the message names the file and the fix."""


@dataclass(frozen=True)
class CropRule:
    """How one member's inputs are made from a photo and its MegaDetector boxes."""

    threshold: str  # the crops partition key: '0.05', 'full' (whole frames, no detector), 'boxes'
    min_conf: float | None  # boxes at or above this confidence are cropped; None: detections are ignored
    categories: tuple[str, ...]
    mode: str  # 'top' (best box only) or 'all' (every box; the member averages its crops)
    square: bool
    padding: float
    min_size_px: int
    cache_size: int  # crops are cut at this size (the crop cache's), then resized to image_size
    image_size: int
    max_pixels: int

    def settings(self) -> CropSettings:
        return CropSettings(self.cache_size, self.padding, self.square, self.min_size_px, self.max_pixels,
                            self.mode == "top", letterbox=self.threshold == NO_DETECTOR_KEY)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "CropRule":
        return cls(**{**raw, "categories": tuple(raw["categories"])})


@dataclass(frozen=True)
class FoldWeights:
    fold: str
    path: Path
    sha256: str


@dataclass(frozen=True)
class MemberModel:
    key: str
    backbone: str
    classes: tuple[str, ...]  # the checkpoints' class order
    crop: CropRule
    folds: tuple[FoldWeights, ...]
    batch_size: int


@dataclass
class EnsembleArtefact:
    classes: list[str]
    combiner_spec: dict[str, Any]
    temperature: float
    calibrated: bool
    members: list[MemberModel]  # every member the combiner takes, in its order
    version: str
    source: str  # where it was loaded from (a folder, or the plan's ensemble)
    extra: dict[str, Any] = field(default_factory=dict)  # spec facts kept for people (method choice, scores)

    def combiner(self) -> Combiner:
        return combiner_from_spec(self.combiner_spec)

    @property
    def method(self) -> str:
        return self.combiner_spec["method"]

    def needed_members(self) -> list[str]:
        """Members whose predictions change the output (zero-weight members of a weighted mean never run)."""
        weights = self.combiner_spec["weights"]
        if self.method in _WEIGHT_ONLY_METHODS:
            return [m.key for m in self.members if weights.get(m.key, 0.0) > 0]
        return [m.key for m in self.members]

    def crop_rules(self) -> list[CropRule]:
        return list(dict.fromkeys(m.crop for m in self.members))

    def to_json(self, weights_path: dict[tuple[str, str], str]) -> dict[str, Any]:
        return {
            "format": ARTEFACT_FORMAT, "format_version": ARTEFACT_FORMAT_VERSION, "version": self.version,
            "classes": self.classes, "combiner": self.combiner_spec, "temperature": self.temperature,
            "calibrated": self.calibrated, "extra": self.extra,
            "members": [{"key": m.key, "backbone": m.backbone, "classes": list(m.classes), "batch_size": m.batch_size,
                         "crop": {**asdict(m.crop), "categories": list(m.crop.categories)},
                         "folds": [{"fold": f.fold, "weights": weights_path[(m.key, f.fold)], "sha256": f.sha256}
                                   for f in m.folds]} for m in self.members],
        }  # fmt: skip


def member_crop_rule(plan: Plan, member_key: str) -> CropRule:
    member = plan.member(member_key)
    key = threshold_key(member.threshold)
    min_conf = None if key == NO_DETECTOR_KEY else (0.0 if key == ANNOTATED_BOXES_KEY else float(member.threshold))
    cfg = plan.crop_settings
    s = crop_settings(cfg, key, plan.data.max_image_pixels)
    return CropRule(threshold=key, min_conf=min_conf, categories=tuple(cfg.categories), mode=cfg.mode, square=s.square,
                    padding=s.padding, min_size_px=s.min_size_px, cache_size=s.image_size,
                    image_size=plan.image_size(member), max_pixels=s.max_pixels)


def artefact_from_plan(plan: Plan, ensemble_dir: Path | None = None) -> EnsembleArtefact:
    """The plan's fitted ensemble (ensemble/spec.json, or that of `ensemble_dir`) with the member checkpoints
    it was fitted on."""
    spec_path = Path(ensemble_dir or plan.ensemble_dir) / "spec.json"
    if not spec_path.is_file():
        raise ArtefactError(f"{spec_path}: no fitted ensemble; materialize the ensemble asset first "
                            "(ens-assets materialize ensemble)")
    spec = json.loads(spec_path.read_text())
    members = [_plan_member(plan, key, spec) for key in spec["members"]]
    combiner_spec = {k: spec[k] for k in ("method", "members", "classes", "weights", "params")}
    artefact = EnsembleArtefact(
        classes=list(spec["classes"]), combiner_spec=combiner_spec, temperature=float(spec.get("temperature", 1.0)),
        calibrated=bool(spec.get("calibrated", False)), members=members, version="", source=str(spec_path),
        extra={k: spec.get(k) for k in ("selected_by", "auto", "nested", "oof_images", "test_images")},
    )
    artefact.version = artefact_version(artefact)
    return artefact


def _plan_member(plan: Plan, key: str, spec: dict[str, Any]) -> MemberModel:
    """A member's fold models as the checkpoint store records them (architecture, classes, input size, the crop
    rule its crop cache was built with), each checked against the ensemble's MLflow runs and its sha256."""
    from ens_assets.training.checkpoint import CheckpointError
    from ens_assets.training.checkpoint_store import CheckpointStore

    if key not in plan.member_keys:
        raise ArtefactError(f"ensemble member '{key}' is no longer in {plan.params_file or 'params.yaml'}; "
                            "re-materialize the ensemble (or restore the member) before predicting")
    store = CheckpointStore(plan)
    fitted_runs = set((spec.get("member_info", {}).get(key) or {}).get("mlflow_run_ids") or [])
    try:
        fold_specs = [store.fold_model_spec(key, fold) for fold in store.fold_checkpoints(key)]
    except CheckpointError as exc:
        raise ArtefactError(f"ensemble member {key}: {exc}") from None
    folds = []
    for fold in fold_specs:
        if fitted_runs and fold.mlflow_run_id not in fitted_runs:
            raise ArtefactError(f"{fold.directory}: retrained after the ensemble was fitted (MLflow run "
                                f"{fold.mlflow_run_id} is not among the ensemble's); re-materialize "
                                "test_predictions and the ensemble so the combiner matches the checkpoints")
        folds.append(FoldWeights(fold.fold, fold.directory / WEIGHTS_FILE, fold.weights_sha256 or ""))
        _check_sha(folds[-1])
    first = fold_specs[0]
    return MemberModel(key, first.architecture, tuple(first.classes), _stored_crop_rule(plan, first),
                       tuple(folds), plan.training_config(key).batch_size * 2)


def _stored_crop_rule(plan: Plan, fold) -> CropRule:
    """The crop rule a fold model was trained on (checkpoint_store.FoldModelSpec.crop) as a CropRule."""
    crop, key = fold.crop, fold.crop["threshold"]
    min_conf = None if key == NO_DETECTOR_KEY else (0.0 if key == ANNOTATED_BOXES_KEY else float(key))
    return CropRule(threshold=key, min_conf=min_conf, categories=tuple(crop.get("categories") or ("animal",)),
                    mode=crop.get("mode", "top"), square=bool(crop.get("square", True)),
                    padding=float(crop.get("padding", 0.1)), min_size_px=int(crop.get("min_size_px", 8)),
                    cache_size=int(crop["image_size"]), image_size=fold.image_size,
                    max_pixels=plan.data.max_image_pixels)


def artefact_version(artefact: EnsembleArtefact) -> str:
    """Content address: the combiner, the temperature, the crop rules and the weights' hashes."""
    payload = artefact.to_json({(m.key, f.fold): f.sha256 for m in artefact.members for f in m.folds})
    payload.pop("version")
    payload.pop("extra")
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def write_artefact(artefact: EnsembleArtefact, folder: Path) -> Path:
    """Copy the ensemble into `folder` (replaced atomically): ensemble.json and the fold weights."""
    folder = Path(folder)
    with building_dir(folder) as building:
        relative: dict[tuple[str, str], str] = {}
        for m in artefact.members:
            for f in m.folds:
                name = f"members/{m.key}/{f.fold}.safetensors"
                (building / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f.path, building / name)
                relative[(m.key, f.fold)] = name
        (building / ARTEFACT_FILE).write_text(json.dumps(artefact.to_json(relative), indent=2, sort_keys=True) + "\n")
        replace_dir(building, folder)
    return folder


def write_plan_artefact(plan: Plan) -> Path:
    """The plan's ensemble as artefact <work>/ensemble_model/<version>/, pointed to by LATEST."""
    artefact = artefact_from_plan(plan)
    root = plan.work / ARTEFACTS_SUBDIR
    folder = root / artefact.version
    if not (folder / ARTEFACT_FILE).is_file():
        write_artefact(artefact, folder)
    write_text(root / LATEST_FILE, artefact.version + "\n")
    return folder


def load_artefact(folder: Path, verify: bool = True) -> EnsembleArtefact:
    """An artefact folder written by write_artefact; `verify` checks every weights file's sha256."""
    folder = Path(folder)
    path = folder / ARTEFACT_FILE
    if not path.is_file():
        raise ArtefactError(f"{folder}: no {ARTEFACT_FILE}; point --ensemble at a folder written by the ensemble "
                            "asset (data/work/ensemble_model/<version>) or use 'latest'")
    raw = json.loads(path.read_text())
    if raw.get("format") != ARTEFACT_FORMAT or raw.get("format_version") != ARTEFACT_FORMAT_VERSION:
        raise ArtefactError(f"{path}: format {raw.get('format')} v{raw.get('format_version')}; this version reads "
                            f"{ARTEFACT_FORMAT} v{ARTEFACT_FORMAT_VERSION}")
    members = []
    for m in raw["members"]:
        folds = tuple(FoldWeights(f["fold"], folder / f["weights"], f["sha256"]) for f in m["folds"])
        if verify:
            for f in folds:
                _check_sha(f)
        members.append(MemberModel(m["key"], m["backbone"], tuple(m["classes"]), CropRule.from_dict(m["crop"]), folds,
                                   int(m["batch_size"])))
    return EnsembleArtefact(list(raw["classes"]), raw["combiner"], float(raw["temperature"]), bool(raw["calibrated"]),
                            members, raw["version"], str(folder), raw.get("extra", {}))


def _check_sha(weights: FoldWeights) -> None:
    if not weights.path.is_file():
        raise ArtefactError(f"{weights.path}: missing weights file of fold {weights.fold}; re-copy the artefact folder")
    digest = hashlib.sha256(weights.path.read_bytes()).hexdigest()
    if digest != weights.sha256:
        raise ArtefactError(f"{weights.path}: sha256 {digest[:12]}... differs from the recorded "
                            f"{weights.sha256[:12]}...; the file is damaged or was replaced: re-copy the artefact")


def resolve_artefact(ensemble: str, plan: Plan | None) -> EnsembleArtefact:
    """--ensemble: 'latest' (the plan's newest written artefact, else its ensemble in place), a folder, or
    models:/name/version (the MLflow registry; see ens_assets.inference.mlflow_model)."""
    if ensemble.startswith("models:/"):
        from ens_assets.inference.mlflow_model import download_registered_artefact

        return load_artefact(download_registered_artefact(ensemble, plan))
    if ensemble != "latest":
        return load_artefact(Path(ensemble))
    if plan is None:
        raise ArtefactError("--ensemble latest needs a plan (--params); or pass an artefact folder")
    pointer = plan.work / ARTEFACTS_SUBDIR / LATEST_FILE
    if pointer.is_file():
        folder = pointer.parent / pointer.read_text().strip()
        if (folder / ARTEFACT_FILE).is_file():
            return load_artefact(folder)
    return artefact_from_plan(plan)
