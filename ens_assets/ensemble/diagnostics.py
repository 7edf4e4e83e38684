"""The ensemble as a diagnostic: which classes fail everywhere, which one member gets right, which
pairs every member confuses, and what to do next about each."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import polars as pl
from sklearn.metrics import confusion_matrix

from ens_assets.ensemble.tables import MemberStack

ENSEMBLE_ROW = "ensemble"


def _confusion(y: np.ndarray, probs: np.ndarray, n_classes: int) -> np.ndarray:
    return confusion_matrix(y, probs.argmax(axis=1), labels=list(range(n_classes)))


def per_class_recall(stack: MemberStack, ensemble_probs: np.ndarray | None = None) -> pl.DataFrame:
    """Recall per member (rows) and class (columns); an `ensemble` row when its probabilities are given.

    A class with no OOF images has a null recall (unknown, not zero).
    """
    rows = list(zip(stack.members, stack.probs))
    if ensemble_probs is not None:
        rows.append((ENSEMBLE_ROW, ensemble_probs))
    records = []
    for name, probs in rows:
        cm = _confusion(stack.y, probs, len(stack.classes))
        support = cm.sum(axis=1)
        recall = [float(cm[c, c] / support[c]) if support[c] else None for c in range(len(stack.classes))]
        records.append({"member": name, **dict(zip(stack.classes, recall))})
    return pl.DataFrame(records, schema={"member": pl.String, **{c: pl.Float64 for c in stack.classes}})


def _member_rows(recall_df: pl.DataFrame) -> pl.DataFrame:
    return recall_df.filter(pl.col("member") != ENSEMBLE_ROW)


def _classes_of(recall_df: pl.DataFrame) -> list[str]:
    return [c for c in recall_df.columns if c != "member"]


def all_fail_classes(recall_df: pl.DataFrame, threshold: float) -> list[str]:
    """Classes every member recalls below `threshold`: a data/representation problem."""
    members = _member_rows(recall_df)
    return [c for c in _classes_of(recall_df)
            if members[c].null_count() == 0 and members.height and members[c].max() < threshold]


def single_win_classes(recall_df: pl.DataFrame, margin: float) -> list[tuple[str, str, float, float]]:
    """(class, member, recall, next best recall) where one member beats all others by >= `margin`."""
    members = _member_rows(recall_df)
    if members.height < 2:
        return []
    names = members["member"].to_list()
    wins = []
    for c in _classes_of(recall_df):
        if members[c].null_count():
            continue
        values = members[c].to_numpy()
        order = np.argsort(-values, kind="stable")
        best, runner_up = values[order[0]], values[order[1]]
        if best - runner_up >= margin - 1e-12:
            wins.append((c, names[order[0]], float(best), float(runner_up)))
    return wins


def top_confusions(stack: MemberStack, k: int) -> pl.DataFrame:
    """Each member's k most frequent (true, predicted) mistakes; `shared_by` counts members listing that pair."""
    records = []
    for name, probs in zip(stack.members, stack.probs):
        cm = _confusion(stack.y, probs, len(stack.classes)).astype(np.int64)
        support = cm.sum(axis=1)
        np.fill_diagonal(cm, 0)
        flat = np.argsort(-cm, axis=None, kind="stable")[:k]
        for true, pred in zip(*np.unravel_index(flat, cm.shape)):
            if cm[true, pred] == 0:
                break
            records.append({"member": name, "true": stack.classes[true], "predicted": stack.classes[pred],
                            "count": int(cm[true, pred]), "rate": float(cm[true, pred] / support[true])})
    schema = {"member": pl.String, "true": pl.String, "predicted": pl.String, "count": pl.Int64, "rate": pl.Float64}
    table = pl.DataFrame(records, schema=schema)
    shared = table.group_by("true", "predicted").agg(pl.len().cast(pl.Int64).alias("shared_by"))
    return (table.join(shared, on=["true", "predicted"], how="left")
            .sort(["member", "count"], descending=[False, True], maintain_order=True))


def never_selected(greedy_spec: dict[str, Any], members: Sequence[str]) -> list[str]:
    """Members with zero weight in a fitted ensemble spec: candidates to drop from the plan."""
    weights = greedy_spec.get("weights", {})
    return [m for m in members if weights.get(m, 0.0) <= 0.0]


def roadmap_markdown(
    recall_df: pl.DataFrame,
    all_fail: list[str],
    single_win: list[tuple[str, str, float, float]],
    confusions: pl.DataFrame,
    dropped_candidates: list[str] | None = None,
    *,
    fail_recall: float,
    win_margin: float,
    min_shared: int = 2,
) -> str:
    """Next steps in the method's words, from the diagnostics above."""
    n_members = _member_rows(recall_df).height
    lines = ["# Ensemble roadmap", ""]

    lines.append(f"## Classes every member gets wrong (recall < {fail_recall:g})")
    if all_fail:
        for c in all_fail:
            best = _member_rows(recall_df)[c].max()
            lines.append(f"- **{c}** (best member recall {best:.2f}): a data/representation problem. "
                         "More data / targeted augmentation / check crops at a lower threshold.")
    else:
        lines.append("- none")
    lines.append("")

    lines.append(f"## Classes one member gets right (ahead of the rest by >= {win_margin:g})")
    if single_win:
        for c, member, recall, runner_up in single_win:
            lines.append(f"- **{c}**: `{member}` recall {recall:.2f} vs next best {runner_up:.2f}. That config "
                         "captures something: weight it for that class (per_class combiner).")
    else:
        lines.append("- none")
    lines.append("")

    need = min(min_shared, n_members)
    shared = (confusions.filter(pl.col("shared_by") >= need)
              .group_by("true", "predicted")
              .agg(pl.col("shared_by").first(), pl.col("count").sum().alias("count"))
              .sort(["shared_by", "count", "true", "predicted"], descending=[True, True, False, False]))
    lines.append(f"## Consistently confused pairs (in the top confusions of >= {need} members)")
    if shared.height:
        for row in shared.iter_rows(named=True):
            lines.append(f"- **{row['true']} -> {row['predicted']}** ({row['shared_by']}/{n_members} members, "
                         f"{row['count']} images in all): hard-negative mining / targeted augmentation.")
    else:
        lines.append("- none")
    lines.append("")

    if dropped_candidates is not None:
        lines.append("## Members the ensemble never selected")
        if dropped_candidates:
            for m in dropped_candidates:
                lines.append(f"- `{m}`: zero weight; a candidate to drop (or to change one lever and retrain).")
        else:
            lines.append("- none: every member earns its weight")
        lines.append("")
    return "\n".join(lines)
