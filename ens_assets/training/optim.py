"""Fine-tuning recipes on top of timm's optimizer factory: layer-wise lr decay, a separate head lr and a
frozen-backbone (linear probe) warm-up.

The lr of every parameter group is `schedule(epoch) * lr_scale`: timm's schedulers honour `lr_scale`, which
`param_groups_layer_decay` sets per layer (layer_decay ** depth from the top); a head lr multiplies the
classifier's groups by head_lr / lr on top of that.
"""

from __future__ import annotations

from typing import Any

from timm.optim import create_optimizer_v2
from timm.optim import param_groups_layer_decay, param_groups_weight_decay
from torch import nn

from ens_assets.plan import TrainingConfig


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The classifier head's parameters (timm's get_classifier)."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    return list(head.parameters()) if isinstance(head, nn.Module) else []


def _no_weight_decay(model: nn.Module) -> set[str]:
    return set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()


def member_param_groups(model: nn.Module, config: TrainingConfig) -> list[dict[str, Any]]:
    """timm's weight-decay (or layer-decay) groups, each split into head / backbone when head_lr is set."""
    if config.layer_decay is not None:
        groups = param_groups_layer_decay(
            model, weight_decay=config.weight_decay, no_weight_decay_list=_no_weight_decay(model), layer_decay=config.layer_decay
        )
    else:
        groups = param_groups_weight_decay(model, weight_decay=config.weight_decay, no_weight_decay_list=_no_weight_decay(model))
        groups = [dict(g, lr_scale=1.0) for g in groups]
    if config.head_lr is None:
        return groups
    head_ids = {id(p) for p in head_parameters(model)}
    head_scale = config.head_lr / config.lr
    split: list[dict[str, Any]] = []
    for group in groups:
        params = list(group["params"])
        backbone = [p for p in params if id(p) not in head_ids]
        head = [p for p in params if id(p) in head_ids]
        if backbone:
            split.append({**group, "params": backbone})
        if head:
            split.append({**group, "params": head, "lr_scale": group.get("lr_scale", 1.0) * head_scale, "head": True})
    return split


def create_member_optimizer(model: nn.Module, config: TrainingConfig):
    """timm create_optimizer_v2 over the recipe's parameter groups; the base lr is config.lr."""
    if config.layer_decay is None and config.head_lr is None:
        return create_optimizer_v2(model, opt=config.opt, lr=config.lr, weight_decay=config.weight_decay)
    return create_optimizer_v2(
        model, opt=config.opt, lr=config.lr, weight_decay=config.weight_decay,
        param_group_fn=lambda m: member_param_groups(m, config),
    )  # fmt: skip


def freeze_backbone(model: nn.Module, frozen: bool) -> None:
    """Linear probe: only the head learns; the backbone's weights and BatchNorm statistics stay as loaded.

    Call after model.train() each epoch: frozen modules are put back in eval mode so their running
    statistics do not drift towards the new data before the backbone itself may adapt.
    """
    head_ids = {id(p) for p in head_parameters(model)}
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    for p in model.parameters():
        p.requires_grad_(not frozen or id(p) in head_ids)
    if frozen:
        for module in model.modules():
            if module is not model and module is not head and not any(True for _ in module.children()):
                module.eval()
