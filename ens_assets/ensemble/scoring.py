"""Honest (nested) scores of ensemble methods against their members.

Weights fitted on the same OOF rows they are scored on are optimistic. The honest score fits each
combiner on all folds but f, predicts fold f, and scores the assembled nested OOF predictions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import polars as pl
from sklearn.base import clone
from sklearn.metrics import accuracy_score, log_loss

from ens_assets.ensemble.combiners import Combiner, make_combiner
from ens_assets.ensemble.tables import MemberStack

BEST_SINGLE = "best_single_member"
NESTED_NOTE = "ensembles fitted on the other folds and scored on each held-out fold (nested); members scored on their OOF"
SCORE_COLUMNS = ["name", "kind", "log_loss", "accuracy", "in_sample_log_loss", "in_sample_accuracy",
                 "members_used", "nested", "note"]


@dataclass
class MethodScores:
    """The comparison table plus what produced it (for build_ensemble and the diagnostics)."""

    table: pl.DataFrame
    fitted: dict[str, Combiner]  # method -> combiner fitted on all OOF rows
    nested_probs: dict[str, np.ndarray] = field(default_factory=dict)  # method -> (N, C) nested OOF
    nested: bool = True


def score_probs(probs: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(log loss, accuracy) with every class counted, even ones absent from y."""
    labels = list(range(probs.shape[1]))
    return float(log_loss(y, probs, labels=labels)), float(accuracy_score(y, probs.argmax(axis=1)))


def _members_used(combiner: Combiner) -> str:
    return ",".join(m for m, w in zip(combiner.members_, combiner.weights_) if w > 0)


def score_methods(stack: MemberStack, methods: Sequence[str], **kw: Any) -> MethodScores:
    """Score each method nested (or in-sample when one fold is present) next to every single member."""
    folds = np.unique(stack.folds)
    nested = len(folds) >= 2
    note = NESTED_NOTE if nested else (
        f"only fold {folds.tolist()} present (e.g. smoke-stage members): nested scoring is impossible, so "
        "ensemble scores are in-sample and optimistic; train members on all folds for honest scores"
    )
    rows: list[dict[str, Any]] = []
    fitted: dict[str, Combiner] = {}
    nested_probs: dict[str, np.ndarray] = {}
    for method in methods:
        template = make_combiner(method, **kw)
        combiner = clone(template).fit(stack.probs, stack.y, members=stack.members, classes=stack.classes)
        in_sample = combiner.predict_proba(stack.probs)
        in_ll, in_acc = score_probs(in_sample, stack.y)
        if nested:
            held_out = np.empty_like(in_sample)
            for f in folds:
                test = stack.folds == f
                inner = clone(template).fit(stack.probs[:, ~test], stack.y[~test], members=stack.members,
                                            classes=stack.classes)
                held_out[test] = inner.predict_proba(stack.probs[:, test])
            ll, acc = score_probs(held_out, stack.y)
            nested_probs[method] = held_out
        else:
            ll, acc = in_ll, in_acc
        fitted[method] = combiner
        rows.append(dict(name=method, kind="ensemble", log_loss=ll, accuracy=acc, in_sample_log_loss=in_ll,
                         in_sample_accuracy=in_acc, members_used=_members_used(combiner), nested=nested, note=note))

    member_rows = []
    for name, probs in zip(stack.members, stack.probs):
        ll, acc = score_probs(probs, stack.y)
        member_rows.append(dict(name=name, kind="member", log_loss=ll, accuracy=acc, in_sample_log_loss=ll,
                                in_sample_accuracy=acc, members_used=name, nested=True,
                                note="the member's own OOF predictions"))
    # Chosen on the OOF log loss it is then reported with: ties go to the first member.
    best = min(range(len(member_rows)), key=lambda i: member_rows[i]["log_loss"])
    rows.append({**member_rows[best], "name": BEST_SINGLE,
                 "note": f"{stack.members[best]}: lowest OOF log loss among the members"})
    rows.extend(member_rows)
    table = pl.DataFrame(rows, schema={"name": pl.String, "kind": pl.String, "log_loss": pl.Float64,
                                       "accuracy": pl.Float64, "in_sample_log_loss": pl.Float64,
                                       "in_sample_accuracy": pl.Float64, "members_used": pl.String,
                                       "nested": pl.Boolean, "note": pl.String})
    return MethodScores(table, fitted, nested_probs, nested)


def honest_scores(stack: MemberStack, methods: list[str], **kw: Any) -> pl.DataFrame:
    """One row per method, `best_single_member` and each member; columns in SCORE_COLUMNS.

    `kw` are combiner options (e.g. rounds=25, C=1.0), passed to every method that takes them.
    """
    return score_methods(stack, methods, **kw).table
