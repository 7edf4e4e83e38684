"""Editing params.yaml without hand edits: promotions and the morning report's proposals.

A round-trip YAML library (ruamel.yaml) keeps the file's comments, key order and flow style; every edit is
validated as a plan (ens_assets.plan.load_plan) before the file is replaced atomically, so a bad proposal
leaves params.yaml as it was and says why.

An edit is a list of operations (JSON-able, as stored in a report's proposals.json):

    {"op": "set_member", "member": KEY, "field": "stage", "value": "cv"}
    {"op": "remove_member", "member": KEY}
    {"op": "add_member", "value": {"backbone": ..., "threshold": ..., "recipe": ..., "stage": "smoke"}}
    {"op": "add_threshold", "value": 0.02}
    {"op": "set", "path": ["ensemble", "method"], "value": "geometric"}
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Iterable, Sequence

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from ens_assets.atomic import atomic_path
from ens_assets.plan import Member, PlanError, load_plan


class EditError(ValueError):
    """An edit that cannot be applied to this params.yaml; the message names the operation and the fix."""


def _yaml() -> YAML:
    yaml = YAML()  # round-trip mode: comments, order and styles survive
    yaml.preserve_quotes = True
    yaml.width = 120
    yaml.indent(mapping=2, sequence=4, offset=2)  # "  - item", as params.yaml is written
    return yaml


def _member_index(data: CommentedMap, key: str) -> int:
    members, aliases = data["members"], dict(data.get("backbones") or {})
    keys = []
    for i, entry in enumerate(members):
        fields = dict(entry)
        alias = aliases.get(fields.get("backbone"))  # keys name the timm model an alias stands for
        if alias is not None:
            fields["backbone"] = alias if isinstance(alias, str) else dict(alias).get("model")
        try:
            k = Member.model_validate(fields).key
        except Exception:  # an entry the plan would reject is reported by validation, not here
            k = None
        if k == key:
            return i
        keys.append(k)
    raise EditError(f"member '{key}' is not in params.yaml; members there: {[k for k in keys if k]}")


def _apply(data: CommentedMap, op: dict[str, Any]) -> None:
    kind = op.get("op")
    if kind == "set_member":
        data["members"][_member_index(data, op["member"])][op["field"]] = op["value"]
    elif kind == "remove_member":
        del data["members"][_member_index(data, op["member"])]
    elif kind == "add_member":
        entry = CommentedMap(op["value"])
        entry.fa.set_flow_style()  # like the other one-line entries
        data.setdefault("members", CommentedSeq()).append(entry)
    elif kind == "add_threshold":
        crops = data.setdefault("crops", CommentedMap())
        thresholds = crops.setdefault("thresholds", CommentedSeq())
        if float(op["value"]) not in [float(t) for t in thresholds]:
            thresholds.append(float(op["value"]))
            ordered = sorted(float(t) for t in thresholds)
            for i, t in enumerate(ordered):
                thresholds[i] = t
    elif kind == "set":
        node = data
        *parents, leaf = op["path"]
        for name in parents:
            node = node.setdefault(name, CommentedMap())
        node[leaf] = op["value"]
    else:
        raise EditError(f"unknown params edit operation {op!r}; known: set_member, remove_member, add_member, "
                        "add_threshold, set")


def edit_params(params_path: str | Path, operations: Iterable[dict[str, Any]], *, write: bool = True) -> str:
    """Apply operations to params.yaml, validate the result as a plan, replace the file atomically.

    Returns the new text (`write=False`: validated, not written). Raises EditError (nothing written)
    when an operation does not apply or the edited plan is invalid.
    """
    path = Path(params_path)
    yaml = _yaml()
    data = yaml.load(path.read_text())
    for op in operations:
        try:
            _apply(data, op)
        except (KeyError, TypeError, IndexError) as exc:
            raise EditError(f"{path}: cannot apply {op!r}: {exc!r}") from None
    buffer = io.StringIO()
    yaml.dump(data, buffer)
    text = buffer.getvalue()
    # Validated beside the original (relative paths resolve the same), then renamed into place.
    with atomic_path(path, suffix=".yaml") as tmp:
        tmp.write_text(text)
        try:
            load_plan(tmp)
        except PlanError as exc:
            why = str(exc).replace(f"{tmp}: ", "")
            raise EditError(f"{path}: the edited plan would not load, so nothing was written: {why}") from None
        if not write:
            tmp.write_text(path.read_text())  # the rename then leaves params.yaml byte for byte as it was
    return text


def promote_member(params_path: str | Path, member: str) -> str:
    """Set `stage: cv` for one member (the CLI's `promote` and the stage:auto sensor)."""
    return edit_params(params_path, [{"op": "set_member", "member": member, "field": "stage", "value": "cv"}])


def apply_proposals(params_path: str | Path, proposals: Sequence[dict[str, Any]], *, write: bool = True) -> str:
    """Apply every proposal's operations in one validated, atomic edit."""
    return edit_params(params_path, [op for p in proposals for op in p["ops"]], write=write)
