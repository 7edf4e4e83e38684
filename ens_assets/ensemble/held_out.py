"""Scores on a labelled held-out test split (sites never seen in training), beside the nested OOF scores.

Every member is scored on its own test predictions; every combiner as fitted on all OOF rows and applied
to the members' test predictions, which is exactly what the submission uses. Only test rows enter these
scores. A member much worse on the held-out sites than on its OOF folds is flagged: site shift.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl
from sklearn.metrics import accuracy_score, confusion_matrix, log_loss

from ens_assets.ensemble.combiners import Combiner
from ens_assets.ensemble.tables import TestStack

TEST_COLUMNS = {"test_log_loss": pl.Float64, "test_accuracy": pl.Float64, "test_images": pl.Int64}


@dataclass
class HeldOutScores:
    """Test scores per row name of the comparison table, per-class test recall, what was left out."""

    scores: pl.DataFrame  # name + TEST_COLUMNS (one row per name scored)
    recall: pl.DataFrame  # name x class recall on the labelled test images (null: no test image of the class)
    n_labelled: int = 0
    unknown_class: dict[str, int] = field(default_factory=dict)  # test labels no member was trained on -> count


def labelled_test_rows(test: TestStack, labels: dict[str, str]) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """(row indices into the test stack, class indices) of labelled test images whose class is known."""
    index = {c: i for i, c in enumerate(test.classes)}
    rows, y, unknown = [], [], {}
    for row, image_id in enumerate(test.image_ids):
        label = labels.get(image_id)
        if label is None:
            continue
        if label not in index:
            unknown[label] = unknown.get(label, 0) + 1
            continue
        rows.append(row)
        y.append(index[label])
    return np.asarray(rows, dtype=np.int64), np.asarray(y, dtype=np.int64), unknown


def _recall(y: np.ndarray, probs: np.ndarray, n_classes: int) -> list[float | None]:
    cm = confusion_matrix(y, probs.argmax(axis=1), labels=list(range(n_classes)))
    support = cm.sum(axis=1)
    return [float(cm[c, c] / support[c]) if support[c] else None for c in range(n_classes)]


def held_out_scores(
    table: pl.DataFrame, fitted: dict[str, Combiner], test: TestStack, labels: dict[str, str]
) -> HeldOutScores | None:
    """Test log loss / accuracy / per-class recall of every row of the comparison table, or None when no
    test image is labelled (no test split, or a layout's own unlabelled test file)."""
    rows, y, unknown = labelled_test_rows(test, labels)
    if len(rows) == 0:
        return None
    n_classes = len(test.classes)
    member_probs = {m: test.probs[i, rows] for i, m in enumerate(test.members)}
    scored, recalls = [], []
    for row in table.iter_rows(named=True):
        name = row["name"]
        if row["kind"] == "member":
            probs = member_probs.get(row["members_used"])  # best_single_member names its member there
        elif name in fitted:
            combiner = fitted[name]
            probs = combiner.predict_proba(np.stack([member_probs[m] for m in combiner.members_]))
        else:
            probs = None
        if probs is None:
            continue
        scored.append({"name": name, "test_log_loss": float(log_loss(y, probs, labels=list(range(n_classes)))),
                       "test_accuracy": float(accuracy_score(y, probs.argmax(axis=1))), "test_images": len(rows)})
        recalls.append({"name": name, **dict(zip(test.classes, _recall(y, probs, n_classes)))})
    return HeldOutScores(
        scores=pl.DataFrame(scored, schema={"name": pl.String, **TEST_COLUMNS}),
        recall=pl.DataFrame(recalls, schema={"name": pl.String, **{c: pl.Float64 for c in test.classes}}),
        n_labelled=len(rows),
        unknown_class=unknown,
    )


def with_test_columns(table: pl.DataFrame, held_out: HeldOutScores | None) -> pl.DataFrame:
    """The comparison table with test_log_loss / test_accuracy / test_images (null where nothing was scored)."""
    if held_out is None:
        return table.with_columns([pl.lit(None, dtype=dtype).alias(name) for name, dtype in TEST_COLUMNS.items()])
    return table.join(held_out.scores, on="name", how="left", maintain_order="left")


def site_shift(table: pl.DataFrame, ratio: float) -> list[tuple[str, float, float]]:
    """(member, OOF log loss, test log loss) of members whose held-out test log loss is >= ratio x OOF."""
    if "test_log_loss" not in table.columns:
        return []
    members = table.filter((pl.col("kind") == "member") & (pl.col("name") != "best_single_member")
                           & pl.col("test_log_loss").is_not_null())
    return [(r["name"], r["log_loss"], r["test_log_loss"]) for r in members.iter_rows(named=True)
            if r["test_log_loss"] >= ratio * r["log_loss"]]


def site_shift_markdown(table: pl.DataFrame, ratio: float) -> str:
    """The roadmap's section on held-out sites: flagged members, or why there is nothing to say."""
    lines = [f"## Members much worse on held-out test sites (test log loss >= {ratio:g} x OOF): site shift"]
    if "test_log_loss" not in table.columns or table["test_log_loss"].null_count() == table.height:
        lines.append("- no labelled test split: hold sites out with data.test_site_fraction or data.test_sites "
                     "to see how members do on sites they never saw")
    else:
        flagged = site_shift(table, ratio)
        for member, oof, test in flagged:
            lines.append(f"- `{member}`: OOF log loss {oof:.3f}, held-out test {test:.3f}. It learned the training "
                         "sites (background, camera) more than the animals: stronger augmentation, crops at another "
                         "threshold, or more sites.")
        if not flagged:
            lines.append("- none: every member scores on the held-out sites about as on its OOF folds")
    lines.append("")
    return "\n".join(lines)
