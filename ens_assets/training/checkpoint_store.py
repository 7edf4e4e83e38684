"""The checkpoint store: what the training stage keeps on disk, and the one place that reads it back.

Per (member, fold) checkpoint partition a folder (training/checkpoint.py's format: model.safetensors + the
checkpoint.json sidecar); in each sidecar the smoke verdict, the costs (FLOPs per image, parameters, minutes)
and the fingerprint freshness is decided on; per threshold the crop cache's summary.json and index.parquet.
Assets, checks, the CLI, schedules and predict ask a CheckpointStore(plan) instead of opening these files.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import polars as pl

from ens_assets.data.crops import INDEX_FILE as CROP_INDEX_FILE
from ens_assets.data.crops import SUMMARY_FILE as CROP_SUMMARY_FILE
from ens_assets.data.crops import read_crop_quarantine
from ens_assets.plan import SMOKE_FOLD, Plan, threshold_key
from ens_assets.training.checkpoint import CheckpointError, load_checkpoint, read_sidecar, save_checkpoint
from ens_assets.training.smoke_gate import SmokeVerdict

CONFUSION_PNG_FILE = "confusion_matrix.png"  # beside each checkpoint, written by training.metrics


@dataclass(frozen=True)
class FoldModelSpec:
    """What rebuilding and feeding one fold model needs: read from its sidecar (and, for a checkpoint saved
    before the sidecar carried an `inference` block, from its member's entry and crop cache)."""

    member: str
    fold: str
    directory: Path
    architecture: str  # the timm model name (training.models.create_member_model(architecture, len(classes), None))
    classes: list[str]
    image_size: int  # square input size in px; crops are resized to it (antialiased bilinear)
    mean: tuple[float, ...] | None  # normalisation of [0, 1] RGB inputs; None: the architecture's timm default
    std: tuple[float, ...] | None
    crop: dict[str, Any]  # the crop rule: threshold, mode, square, padding, min_size_px, categories, cache size
    fingerprint: str
    mlflow_run_id: str | None
    weights_sha256: str | None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "directory": str(self.directory)}


@dataclass
class FoldModel:
    spec: FoldModelSpec
    state_dict: dict  # name -> torch.Tensor, loaded from model.safetensors
    sidecar: dict[str, Any]
    # The model: training.models.create_member_model(spec.architecture, len(spec.classes), None), then
    # load_state_dict(state_dict). Built by the caller: the store reads files and never imports the model factory.


@dataclass(frozen=True)
class CropAccounting:
    """Every input image of a crop cache is used (crop), fallen back (full frame) or quarantined."""

    n_images: int
    n_used: int
    n_fallback_only: int
    n_quarantined: int

    @property
    def complete(self) -> bool:
        return self.n_used + self.n_fallback_only + self.n_quarantined == self.n_images


class CheckpointStore:
    """Reads and writes the checkpoints and crop caches of one plan."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan

    # --- checkpoints -----------------------------------------------------------------------------
    def directory(self, member: str, fold: int | str) -> Path:
        return self.plan.checkpoint_dir(member, str(fold))

    def sidecar(self, member: str, fold: int | str) -> dict[str, Any] | None:
        """The sidecar of a complete checkpoint (weights + sidecar), or None when there is none."""
        return read_sidecar(self.directory(member, fold))

    def fresh_sidecar(self, member: str, fold: int | str, fingerprint: str) -> dict[str, Any] | None:
        """The sidecar when the saved checkpoint was trained from exactly `fingerprint`, else None.

        The one freshness rule: a checkpoint is fresh when its sidecar records the fingerprint of the
        current spec, crops, folds and training code (training.run computes it)."""
        sidecar = self.sidecar(member, fold)
        return sidecar if sidecar is not None and sidecar.get("fingerprint") == fingerprint else None

    def save(self, member: str, fold: int | str, state_dict: Mapping[str, Any], sidecar: Mapping[str, Any]) -> Path:
        """Write one checkpoint (weights, then the sidecar that vouches for them) with its inference block."""
        inference = {"inference": self._inference_block(member, sidecar)} if "inference" not in sidecar else {}
        return save_checkpoint(self.directory(member, fold), dict(state_dict), {**sidecar, **inference})

    def load(self, member: str, fold: int | str, fingerprint: str | None = None) -> tuple[dict, dict[str, Any]]:
        """(state_dict, sidecar); with `fingerprint`, a stale checkpoint is an error naming the partition."""
        directory = self.directory(member, fold)
        state_dict, sidecar = load_checkpoint(directory)
        if fingerprint is not None and sidecar.get("fingerprint") != fingerprint:
            raise ValueError(
                f"{directory}: checkpoint is stale (trained from other settings, crops or folds than the plan's now); "
                f"re-materialize checkpoint partition {member}|{fold} before predicting"
            )
        return state_dict, sidecar

    def confusion_png(self, member: str, fold: int | str) -> bytes | None:
        """The checkpoint's validation confusion matrix picture (training.metrics.write_confusion_matrix)."""
        path = self.directory(member, fold) / CONFUSION_PNG_FILE
        return path.read_bytes() if path.is_file() else None

    def complete(self, member: str) -> bool:
        """Whether every checkpoint the member's predictions need exists."""
        return all(self.sidecar(member, f) is not None for f in self.plan.prediction_folds(member))

    # --- verdicts --------------------------------------------------------------------------------
    def verdict(self, member: str) -> SmokeVerdict | None:
        """The smoke verdict stored in the member's smoke checkpoint, or None when it has not run."""
        stored = (self.sidecar(member, SMOKE_FOLD) or {}).get("smoke_verdict")
        return SmokeVerdict(**stored) if stored else None

    def smoke_classes(self, member: str) -> list[str]:
        """The classes the member's smoke checkpoint was trained on ([] when it has not run)."""
        return list((self.sidecar(member, SMOKE_FOLD) or {}).get("classes") or [])

    # --- costs -----------------------------------------------------------------------------------
    def flops_per_image(self, member: str) -> float:
        """FLOPs per image recorded by the member's checkpoints; inf until measured, so an untried
        backbone (possibly heavy) is scheduled after the members known to be cheap."""
        for fold in self.plan.checkpoint_folds(member):
            flops = (self.sidecar(member, fold) or {}).get("metrics", {}).get("flops_per_image")
            if flops:
                return float(flops)
        return float("inf")

    def minutes(self, member: str, fold: int | str) -> float | None:
        """Wall minutes the checkpoint's training took (None: no checkpoint)."""
        sidecar = self.sidecar(member, fold)
        return None if sidecar is None else float(sidecar.get("metrics", {}).get("wall_seconds", 0.0)) / 60.0

    def member_facts(self, member: str) -> dict[str, Any]:
        """Costs and MLflow runs of a member's prediction checkpoints (what the ensemble's compute table needs)."""
        facts: dict[str, Any] = {"mlflow_run_ids": []}
        for fold in self.plan.prediction_folds(member):
            stored = self.sidecar(member, fold)
            if stored is None:
                continue
            metrics = stored.get("metrics", {})
            for name in ("flops_per_image", "param_count"):
                if name in metrics:
                    facts[name] = int(metrics[name])
            if stored.get("mlflow_run_id"):
                facts["mlflow_run_ids"].append(stored["mlflow_run_id"])
        facts.setdefault("flops_per_image", 0)
        facts.setdefault("param_count", 0)
        # Test predictions average every prediction checkpoint (k fold models at cv): that is the inference cost.
        facts["models_at_inference"] = len(self.plan.prediction_folds(member))
        facts["inference_flops_per_image"] = facts["flops_per_image"] * facts["models_at_inference"]
        facts["mlflow_run_id"] = facts["mlflow_run_ids"][0] if facts["mlflow_run_ids"] else None
        return facts

    # --- what predict reads ----------------------------------------------------------------------
    def fold_checkpoints(self, member: str) -> list[str]:
        """The fold partitions whose models a member's predictions average (k folds at cv, smoke otherwise),
        in order; an error naming the first one that has no complete checkpoint."""
        folds = self.plan.prediction_folds(member)
        for fold in folds:
            if self.sidecar(member, fold) is None:
                raise CheckpointError(
                    f"{self.directory(member, fold)}: no complete checkpoint for {member}|{fold}; "
                    "materialize this member's checkpoints first"
                )
        return list(folds)

    def fold_model_spec(self, member: str, fold: int | str) -> FoldModelSpec:
        """The sidecar facts of one fold model (architecture, classes, image size, normalisation, crop rule)."""
        sidecar = self.sidecar(member, fold)
        if sidecar is None:
            raise CheckpointError(f"{self.directory(member, fold)}: no complete checkpoint for {member}|{fold}")
        return self._spec_from(member, str(fold), sidecar)

    def load_fold_model(self, member: str, fold: int | str) -> FoldModel:
        """One fold model's safetensors weights and its spec."""
        state_dict, sidecar = self.load(member, fold)
        return FoldModel(self._spec_from(member, str(fold), sidecar), state_dict, sidecar)

    def member_fold_models(self, member: str) -> list[FoldModel]:
        """Every fold model a member's predictions average, in fold order; an error when they disagree on
        the classes (a fold retrained on another manifest)."""
        models = [self.load_fold_model(member, fold) for fold in self.fold_checkpoints(member)]
        same_classes(member, [(m.spec.fold, m.spec.classes) for m in models])
        return models

    def _spec_from(self, member: str, fold: str, sidecar: dict[str, Any]) -> FoldModelSpec:
        inference = sidecar.get("inference") or self._inference_block(member, sidecar)
        mean, std = inference.get("mean"), inference.get("std")
        return FoldModelSpec(
            member=member, fold=fold, directory=self.directory(member, fold),
            architecture=inference["architecture"], classes=list(sidecar["classes"]),
            image_size=int(inference["image_size"]),
            mean=tuple(mean) if mean is not None else None, std=tuple(std) if std is not None else None,
            crop=dict(inference["crop"]), fingerprint=sidecar.get("fingerprint", ""),
            mlflow_run_id=sidecar.get("mlflow_run_id"), weights_sha256=sidecar.get("weights_sha256"),
        )  # fmt: skip

    def _inference_block(self, member: str, sidecar: Mapping[str, Any]) -> dict[str, Any]:
        """How to feed the fold model: written into new sidecars, derived for older ones from the member's
        recorded spec and its crop cache's settings."""
        spec = sidecar.get("member_spec") or self.plan.member_spec(member)
        architecture = sidecar.get("backbone") or spec["backbone"]
        image_size = int(sidecar.get("metrics", {}).get("image_size") or spec["image_size"])
        mean, std = _normalisation(architecture)
        threshold = spec.get("threshold", threshold_key(self.plan.member(member).threshold))
        return {"architecture": architecture, "image_size": image_size, "mean": mean, "std": std,
                "crop": self.crop_rule(threshold)}  # fmt: skip

    # --- crop caches -----------------------------------------------------------------------------
    def crops_dir(self, threshold: float | str | None) -> Path:
        return self.plan.crops_dir(threshold_key(threshold))

    def crop_summary(self, threshold: float | str | None) -> dict[str, Any]:
        """A crop cache's summary.json; a clear error when the cache has not been built."""
        path = self.crops_dir(threshold) / CROP_SUMMARY_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no crop cache summary; materialize the crops partition first")
        return json.loads(path.read_text())

    def crop_accounting(self, threshold: float | str | None) -> CropAccounting:
        summary = self.crop_summary(threshold)
        return CropAccounting(**{k: int(summary[k]) for k in ("n_images", "n_used", "n_fallback_only", "n_quarantined")})

    def crop_rule(self, threshold: float | str | None) -> dict[str, Any]:
        """How a member's crops are cut: the threshold and the crop settings its cache was built with (the
        plan's when the cache is not built yet)."""
        key = threshold_key(threshold)
        path = self.crops_dir(key) / CROP_SUMMARY_FILE
        built = json.loads(path.read_text()).get("cfg") if path.is_file() else None
        cfg = built or self.plan.crop_settings.model_dump(mode="json", exclude={"thresholds", "workers"})
        return {"threshold": key, **cfg}

    def crop_index(self, threshold: float | str | None, columns: Sequence[str] | None = None) -> pl.DataFrame:
        """The crop cache's index (one row per crop: row, image_id, split, ...)."""
        path = self.crops_dir(threshold) / CROP_INDEX_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no crop cache index; materialize the crops partition first")
        return pl.read_parquet(path, columns=list(columns) if columns else None)

    def crop_quarantine(self, threshold: float | str | None) -> pl.DataFrame:
        """The images the crop cache quarantined, with the reason (one row per image)."""
        return read_crop_quarantine(self.crops_dir(threshold))

    def cropped_image_ids(self, threshold: float | str | None) -> pl.DataFrame:
        """image_id of every image with at least one crop (quarantined images have none)."""
        return self.crop_index(threshold, ["image_id"]).unique()



def _normalisation(architecture: str) -> tuple[list[float] | None, list[float] | None]:
    """The mean/std timm resolves for an architecture (its pretrained_cfg), what training normalised with."""
    try:
        from timm.data import resolve_data_config
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(architecture)
        resolved = resolve_data_config({}, pretrained_cfg=cfg.to_dict() if cfg is not None else None)
        return [float(v) for v in resolved["mean"]], [float(v) for v in resolved["std"]]
    except Exception:  # an architecture timm cannot describe without building it: predict resolves on the model
        return None, None


def same_classes(member: str, fold_classes: Sequence[tuple[str, Sequence[str]]]) -> list[str]:
    """The class list every fold model of a member was trained on; an error naming the fold that differs."""
    first_fold, classes = fold_classes[0][0], list(fold_classes[0][1])
    for fold, other in fold_classes[1:]:
        if list(other) != classes:
            raise ValueError(f"{member}: fold {fold} was trained on classes {list(other)}, fold {first_fold} on {classes}; retrain")
    return classes
