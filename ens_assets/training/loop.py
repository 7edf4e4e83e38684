"""The epoch loop: timm optimizer/scheduler/Mixup/EMA over in-memory uint8 crops, resumable per epoch.

Reproducibility: every epoch reseeds its own RNGs from (seed, epoch) -- the shuffle and augmentation
`torch.Generator`, torch's global RNG (dropout, drop-path) and numpy's global RNG (timm Mixup) -- and
the recovery checkpoint holds model, optimizer, scheduler and EMA state. A run killed after epoch e and
resumed therefore replays epochs e+1.. exactly as an uninterrupted run would (bit-for-bit on CPU).

Honesty: the best epoch and early stopping are chosen on the *selection* crops a caller passes (a slice held
out of the fold's training images, ens_assets.training.run), never on the OOF fold, which the caller predicts
once with the chosen weights. Without selection crops every epoch is kept in turn: the last one is the result.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from torch import nn

from ens_assets.plan import Budget, Recipe, TrainingConfig
from ens_assets.training.augment import augment_batch, model_mean_std, normalize, to_unit_float
from ens_assets.training.batching import batches
from ens_assets.training.checkpoint import load_recovery, save_recovery
from ens_assets.training.device import (
    autocast_context,
    grad_scaler,
    host_tensor,
    memory_format,
    peak_memory_mb,
    place_model,
    reset_peak_memory,
    select_device,
)
from ens_assets.training.models import create_member_model
from ens_assets.training.optim import create_member_optimizer, freeze_backbone
from ens_assets.training.predict import predict_logits

RECOVERY_FORMAT = 1


@dataclass
class TrainOutcome:
    """What a finished training run produced; `best_state` holds the weights of the epoch with the lowest loss on
    the selection crops (the last epoch when there were none)."""

    best_state: dict[str, torch.Tensor]
    best_epoch: int
    best_val_loss: float  # loss on the selection crops at best_epoch (nan without selection crops)
    history: list[dict[str, float]]
    epochs_run: int
    stopped_reason: str  # "completed" | "early_stopping" | "time_budget"
    wall_seconds: float
    train_seconds: float
    images_per_second: float  # training images (augmentation + forward + backward + step) per second
    peak_memory_mb: float
    resumed_from_epoch: int = 0  # 0 = started fresh
    # Which rows chose best_epoch (set by the caller that carved them: size, fraction, or why there were none).
    selection: dict[str, Any] = field(default_factory=dict)


@dataclass
class FitState:
    """What `fit` carries from epoch to epoch; saved in the recovery checkpoint after every epoch."""

    next_epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    best_val_loss: float = float("inf")
    best_epoch: int = -1
    bad_epochs: int = 0
    best_state: dict[str, torch.Tensor] = field(default_factory=dict)
    elapsed_s: float = 0.0
    train_seconds: float = 0.0
    images_seen: int = 0
    stopped_reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The fields by name (not dataclasses.asdict, which would deep-copy the weights)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_recovery(cls, recovery: dict[str, Any]) -> "FitState":
        return cls(**{f.name: recovery[f.name] for f in fields(cls)})

    def finish_epoch(self, record: dict[str, float], eval_model: nn.Module, *, train_seconds: float, images: int,
                     budget: Budget) -> None:  # fmt: skip
        """Add a finished epoch: its history record, costs, the best weights so far, and whether to stop.

        Without a selection loss (no selection crops) every epoch becomes the best in turn: the last one is kept
        and patience never stops the run."""
        self.train_seconds += train_seconds
        self.images_seen += images
        self.elapsed_s += record["epoch_seconds"]
        self.history.append(record)
        selection_loss = record.get("select_loss")
        if selection_loss is None or selection_loss < self.best_val_loss:
            self.best_epoch, self.bad_epochs = record["epoch"], 0
            self.best_val_loss = float("nan") if selection_loss is None else selection_loss
            self.best_state = _cpu_copy(eval_model)
        else:
            self.bad_epochs += 1
        self.next_epoch = record["epoch"] + 1
        self.stopped_reason = self.stop_reason(budget)

    def stop_reason(self, budget: Budget) -> str | None:
        if self.next_epoch >= budget.epochs:
            return "completed"
        if self.bad_epochs >= budget.patience:
            return "early_stopping"
        if self.elapsed_s >= budget.time_budget_s:
            return "time_budget"
        return None


def train_member_model(
    backbone: str,
    num_classes: int,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    selection_images: np.ndarray | None,
    selection_labels: np.ndarray | None,
    *,
    recipe: Recipe,
    config: TrainingConfig,
    budget: Budget,
    seed: int,
    out_dir: str | Path | None,
    pretrained: str | None = None,
    base_dir: Path | None = None,
    resume_token: str = "",
    device: torch.device | None = None,
    log: Callable[[str], Any] = print,
) -> TrainOutcome:
    """Create the backbone (seeded init) and train it; see `fit`."""
    torch.manual_seed(seed)
    model = create_member_model(backbone, num_classes, pretrained, base_dir, log=log)
    return fit(
        model, train_images, train_labels, selection_images, selection_labels,
        num_classes=num_classes, recipe=recipe, config=config, budget=budget, seed=seed,
        out_dir=out_dir, resume_token=resume_token, device=device, log=log,
    )  # fmt: skip


def fit(
    model: nn.Module,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    selection_images: np.ndarray | None,
    selection_labels: np.ndarray | None,
    *,
    num_classes: int,
    recipe: Recipe,
    config: TrainingConfig,
    budget: Budget,
    seed: int,
    out_dir: str | Path | None,
    resume_token: str = "",
    device: torch.device | None = None,
    log: Callable[[str], Any] = print,
) -> TrainOutcome:
    """Train `model` on uint8 N x S x S x 3 crops with int labels; score the selection crops every epoch.

    Keeps the epoch with the lowest loss on `selection_images` (held-out *training* crops: never pass the OOF
    fold) and stops at budget.epochs, after budget.patience epochs without a lower one, or once
    budget.time_budget_s seconds of training have passed (checked between epochs). Selection None: no
    early stopping, the last epoch is kept. With `out_dir`, a recovery checkpoint is written after every
    epoch and a re-run with the same `resume_token` continues from it; a different token discards it.
    """
    _check_inputs(train_images, train_labels, selection_images, selection_labels, num_classes)
    wall_start = time.perf_counter()
    device = device or select_device()
    model = place_model(model, device)
    parts = _TrainingParts.create(model, recipe, config, budget, num_classes, device)
    # NCHW uint8 once for the whole set: per-batch work is then one gather plus tensor ops.
    train_u8 = host_tensor(np.ascontiguousarray(np.asarray(train_images).transpose(0, 3, 1, 2)), device)
    if device.type == "cuda":
        train_u8 = train_u8.to(device, non_blocking=True)
    labels = torch.as_tensor(np.asarray(train_labels), dtype=torch.long)

    state = _resume(out_dir, resume_token, model, parts, log)
    resumed_from = state.next_epoch
    reset_peak_memory(device)
    while state.stopped_reason is None:
        epoch, epoch_start = state.next_epoch, time.perf_counter()
        parts.scheduler.step(epoch)
        lr = parts.optimizer.param_groups[0]["lr"]
        generator = _seed_epoch(seed, epoch, device)
        frozen = epoch < config.freeze_epochs  # linear-probe warm-up: only the head learns
        train_loss, train_acc, seen = _train_epoch(model, train_u8, labels, config.batch_size, recipe, parts, generator,
                                                   device, frozen=frozen)  # fmt: skip
        train_seconds = time.perf_counter() - epoch_start
        eval_model = parts.ema.module if parts.ema is not None else model
        selected = _selection_scores(eval_model, selection_images, selection_labels, config.batch_size, device)
        record = dict(epoch=epoch, train_loss=train_loss, train_acc=train_acc, **selected, lr=lr,
                      frozen_backbone=float(frozen), epoch_seconds=time.perf_counter() - epoch_start,
                      images_per_second=seen / train_seconds)  # fmt: skip
        state.finish_epoch(record, eval_model, train_seconds=train_seconds, images=seen, budget=budget)  # fmt: skip
        scored = f"select_loss {selected['select_loss']:.4f} acc {selected['select_acc']:.3f}" if selected else "no selection crops"
        log(
            f"epoch {epoch + 1}/{budget.epochs}: train_loss {train_loss:.4f} acc {train_acc:.3f} | "
            f"{scored} | lr {lr:.2e} | {seen / train_seconds:.0f} img/s"
        )
        if out_dir is not None:
            save_recovery(out_dir, parts.recovery_payload(state, resume_token, model))

    return TrainOutcome(
        best_state=state.best_state,
        best_epoch=state.best_epoch,
        best_val_loss=state.best_val_loss,
        history=state.history,
        epochs_run=state.next_epoch,
        stopped_reason=state.stopped_reason,
        wall_seconds=time.perf_counter() - wall_start,
        train_seconds=state.train_seconds,
        images_per_second=state.images_seen / state.train_seconds if state.train_seconds else 0.0,
        peak_memory_mb=peak_memory_mb(device),
        resumed_from_epoch=resumed_from,
    )


@dataclass
class _TrainingParts:
    """The timm pieces one `fit` call trains with, and the input normalisation of its model."""

    optimizer: torch.optim.Optimizer
    scheduler: Any
    ema: ModelEmaV3 | None
    scaler: torch.amp.GradScaler
    mixup: Mixup | None
    criterion: nn.Module
    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def create(cls, model: nn.Module, recipe: Recipe, config: TrainingConfig, budget: Budget, num_classes: int,
               device: torch.device) -> "_TrainingParts":  # fmt: skip
        optimizer = create_member_optimizer(model, config)  # layer decay / head lr groups when the recipe asks
        scheduler, _ = create_scheduler_v2(
            optimizer,
            sched=config.sched,
            num_epochs=budget.epochs,
            warmup_epochs=min(config.warmup_epochs, max(budget.epochs - 1, 0)),
            plateau_mode="min",
        )
        mixup = _mixup(recipe, num_classes)
        mean, std = model_mean_std(model, device)
        return cls(
            optimizer=optimizer, scheduler=scheduler, ema=ModelEmaV3(model, decay=config.ema_decay) if config.ema else None,
            scaler=grad_scaler(device), mixup=mixup, criterion=_train_criterion(recipe, mixup), mean=mean, std=std,
        )  # fmt: skip

    def load(self, recovery: dict[str, Any], model: nn.Module) -> None:
        model.load_state_dict(recovery["model"])
        self.optimizer.load_state_dict(recovery["optimizer"])
        self.scheduler.load_state_dict(recovery["scheduler"])
        self.scaler.load_state_dict(recovery["scaler"])
        if self.ema is not None and recovery["ema"]:
            self.ema.load_state_dict(recovery["ema"])

    def recovery_payload(self, state: FitState, resume_token: str, model: nn.Module) -> dict[str, Any]:
        return dict(
            state.as_dict(),
            format=RECOVERY_FORMAT,
            resume_token=resume_token,
            model=model.state_dict(),
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            scaler=self.scaler.state_dict(),
            ema=self.ema.state_dict() if self.ema is not None else {},
        )


def _resume(out_dir: str | Path | None, resume_token: str, model: nn.Module, parts: _TrainingParts, log) -> FitState:
    """The state to start from: the recovery checkpoint's when it belongs to this run (same token), else fresh."""
    recovery = load_recovery(out_dir) if out_dir is not None else None
    if recovery is not None and (recovery.get("format") != RECOVERY_FORMAT or recovery.get("resume_token") != resume_token):
        log(f"recovery state in {out_dir} belongs to another configuration; starting from epoch 0")
        recovery = None
    if recovery is None:
        return FitState()
    parts.load(recovery, model)
    state = FitState.from_recovery(recovery)
    log(f"resuming after epoch {state.next_epoch} from {out_dir}")
    return state


def _train_epoch(
    model, train_u8, labels, batch_size, recipe, parts: _TrainingParts, generator, device, frozen=False,
) -> tuple[float, float, int]:  # fmt: skip
    mixup, criterion, optimizer, scaler, ema = parts.mixup, parts.criterion, parts.optimizer, parts.scaler, parts.ema
    model.train()
    freeze_backbone(model, frozen)
    n = len(labels)
    order = torch.randperm(n, generator=generator)
    loss_sum, correct, seen = 0.0, 0, 0
    for idx in batches(order, batch_size):
        if mixup is not None and len(idx) % 2:
            # timm Mixup pairs images by flipping the batch and needs an even count; the sample left
            # out differs every epoch because the order is reshuffled.
            idx = idx[:-1]
        x_u8 = train_u8.index_select(0, idx.to(train_u8.device))
        y = labels[idx].to(device, non_blocking=True)
        x = augment_batch(to_unit_float(x_u8), recipe, generator)
        x = normalize(x, parts.mean, parts.std).contiguous(memory_format=memory_format())
        target = y
        if mixup is not None:
            x, target = mixup(x, y)
        with autocast_context(device):
            out = model(x)
            loss = criterion(out, target)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if ema is not None:
            ema.update(model)
        loss_sum += float(loss.detach()) * len(idx)
        correct += int((out.detach().argmax(1) == y).sum())
        seen += len(idx)
    return loss_sum / max(seen, 1), correct / max(seen, 1), seen


def _selection_scores(model: nn.Module, images: np.ndarray | None, labels: np.ndarray | None, batch_size: int,
                      device: torch.device) -> dict[str, float]:  # fmt: skip
    """select_loss / select_acc of the model on the selection crops (crop level); empty without any."""
    if images is None:
        return {}
    logits = predict_logits(model, images, batch_size, device)
    target = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    return {"select_loss": float(F.cross_entropy(logits, target)), "select_acc": float((logits.argmax(1) == target).float().mean())}


def _seed_epoch(seed: int, epoch: int, device: torch.device) -> torch.Generator:
    epoch_seed = (seed * 1_000_003 + epoch) % 2**31
    torch.manual_seed(epoch_seed)  # dropout / drop-path inside the model (also seeds CUDA)
    np.random.seed(epoch_seed)  # timm Mixup draws lambda and boxes from numpy's global RNG
    return torch.Generator().manual_seed(epoch_seed)


def _mixup(recipe: Recipe, num_classes: int) -> Mixup | None:
    if (recipe.mixup_alpha <= 0 and recipe.cutmix_alpha <= 0) or recipe.mix_prob <= 0:
        return None
    return Mixup(
        mixup_alpha=recipe.mixup_alpha,
        cutmix_alpha=recipe.cutmix_alpha,
        prob=recipe.mix_prob,
        label_smoothing=recipe.label_smoothing,
        num_classes=num_classes,
    )


def _train_criterion(recipe: Recipe, mixup: Mixup | None) -> nn.Module:
    if mixup is not None:
        return SoftTargetCrossEntropy()  # Mixup already folds label smoothing into its soft targets
    if recipe.label_smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=recipe.label_smoothing)
    return nn.CrossEntropyLoss()


def _cpu_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in copy.copy(model.state_dict()).items()}


def _check_inputs(train_images, train_labels, selection_images, selection_labels, num_classes: int) -> None:
    if (selection_images is None) != (selection_labels is None):
        raise ValueError("selection images and labels go together: pass both, or neither (keep the last epoch)")
    sides = [("train", train_images, train_labels)]
    if selection_images is not None:
        sides.append(("selection", selection_images, selection_labels))
    for name, images, lab in sides:
        shape = getattr(images, "shape", None)
        if shape is None or len(shape) != 4 or shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"{name} images must be a uint8 array N x S x S x 3, got {getattr(images, 'dtype', type(images))} {shape}")
        if len(images) != len(lab):
            raise ValueError(f"{name}: {len(images)} images but {len(lab)} labels")
        if len(images) < (2 if name == "train" else 1):
            raise ValueError(f"{name}: {len(images)} crops; too few to train on (check the folds table and crop cache)")
        lab = np.asarray(lab)
        if lab.min() < 0 or lab.max() >= num_classes:
            raise ValueError(f"{name} labels must be class indices in [0, {num_classes}), got range [{lab.min()}, {lab.max()}]")
