"""The member model factory (timm) and its cost figures: parameter count and FLOPs per image."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any, Callable

import timm
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ens_assets.training.imagenet_check import MAX_DISTANCE, REFERENCE_IMAGE, check_against_record
from ens_assets.training.pretrained import (
    PretrainedError,
    PretrainedSource,
    map_state_dict,
    parse_source,
    read_state_dict,
    resolve_weights_file,
    source_head_rows,
)

_logger = logging.getLogger(__name__)


class ModelError(ValueError):
    """A backbone or weights source that cannot be built; the message names it and the fix."""


def create_member_model(
    backbone: str,
    num_classes: int,
    pretrained: str | None,
    base_dir: Path | None = None,
    log: Callable[[str], Any] | None = None,
) -> nn.Module:
    """Build a timm classifier with `num_classes` outputs, random init or from a pretrained source.

    pretrained: None = random init; otherwise a source of ens_assets.training.pretrained (package:<module>,
    file:<path> or a bare path relative to `base_dir`, cache, hub). The weights are mapped onto the
    backbone's tensors, checked against their ImageNet record when one exists (the architecture variant
    matters), and the classifier head is replaced for `num_classes`. How it went is logged and kept on
    the model as `model.pretrained_load` (a LoadReport).
    """
    if not timm.is_model(backbone):
        near = timm.list_models(f"*{backbone.split('_')[0]}*")[:8]
        raise ModelError(f"backbone '{backbone}' is not a timm model; use a name from timm.list_models(), similar: {near}")
    if num_classes < 2:
        raise ModelError(f"num_classes = {num_classes}: a classifier needs at least two classes")
    if pretrained is None:
        return timm.create_model(backbone, pretrained=False, num_classes=num_classes)
    log = log or _logger.info
    try:
        return _pretrained_model(backbone, num_classes, parse_source(pretrained), base_dir, log)
    except PretrainedError as exc:
        raise ModelError(str(exc)) from None


def _pretrained_model(backbone: str, num_classes: int, source: PretrainedSource, base_dir: Path | None, log) -> nn.Module:
    path = resolve_weights_file(source, backbone, base_dir)
    state = read_state_dict(path)
    origin = f"{source} ({path.name})"
    model = timm.create_model(backbone, pretrained=False)
    rows = source_head_rows(state, model)
    if rows is not None and rows != model.num_classes:
        model = timm.create_model(backbone, pretrained=False, num_classes=rows)  # the source's own head, to check it
    usable, report = map_state_dict(state, model, origin)
    model.load_state_dict(usable, strict=False)
    if source.kind == "package" and not report.skipped_head:
        result = check_against_record(model, source.target or "")
        if result is not None:
            report.check = result.to_dict()
            if not result.passed:
                raise ModelError(
                    f"pretrained {source} loaded into '{backbone}' fails its ImageNet self-check: on the reference photo "
                    f"({REFERENCE_IMAGE}) it predicts {result.top} at distance {result.distance:.3f} from the "
                    f"recorded output (allowed {MAX_DISTANCE}). These weights compute correctly in "
                    f"'{result.made_for}'; use that backbone (the architecture variant, e.g. TF 'same' padding, matters)"
                )
            log(f"pretrained {source}: ImageNet self-check passed (distance {result.distance:.4f}, top {result.top[0]})")
    if model.num_classes != num_classes:
        report.head_replaced = f"{model.num_classes} -> {num_classes} classes"
        model.reset_classifier(num_classes)
    log(f"{backbone}: {report.summary()}")
    model.pretrained_load = report
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flops_per_image(model: nn.Module, image_size: int) -> int:
    """Forward-pass FLOPs for one 3 x image_size x image_size image (FlopCounterMode counts a multiply-add as 2)."""
    probe = copy.deepcopy(model).to("cpu", memory_format=torch.contiguous_format).eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        probe(torch.zeros(1, 3, image_size, image_size))
    return int(counter.get_total_flops())
