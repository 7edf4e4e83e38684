"""Align per-member prediction tables into one (members, images, classes) probability array.

The training stage writes one OOF table per member (`image_id, fold, label, <class>...`) and one test
table (`image_id, <class>...`). Combiners and diagnostics work on aligned numpy arrays, so this module
checks the tables, aligns them by image_id and reports (never hides) images some member does not cover.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl

# Probability rows may drift from 1 by float32 rounding and softmax; more than this is a real bug.
ROW_SUM_TOLERANCE = 1e-3


class PredictionTableError(ValueError):
    """A prediction table that cannot be combined; the message names the member, the row and the fix."""


@dataclass
class MemberStack:
    """OOF predictions of every member, aligned by image_id."""

    members: list[str]
    probs: np.ndarray  # (M, N, C) float, rows sum to 1
    y: np.ndarray  # (N,) int class index
    folds: np.ndarray  # (N,) int fold the row was predicted as held out
    image_ids: list[str]
    classes: list[str]
    # member -> how many of its rows were left out because another member lacks those images
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def n_members(self) -> int:
        return len(self.members)

    def member_probs(self, member: str) -> np.ndarray:
        return self.probs[self.members.index(member)]

    def subset(self, members: list[str]) -> "MemberStack":
        idx = [self.members.index(m) for m in members]
        return MemberStack(list(members), self.probs[idx], self.y, self.folds, self.image_ids, self.classes,
                           {m: self.dropped.get(m, 0) for m in members})


@dataclass
class TestStack:
    """Test-set predictions of every member, aligned by image_id (no labels)."""

    members: list[str]
    probs: np.ndarray  # (M, N, C)
    image_ids: list[str]
    classes: list[str]
    dropped: dict[str, int] = field(default_factory=dict)


def _check_columns(name: str, table: pl.DataFrame, required: list[str], classes: list[str]) -> None:
    missing = [c for c in required + classes if c not in table.columns]
    if missing:
        raise PredictionTableError(
            f"member '{name}': prediction table lacks columns {missing}; it has {table.columns}. "
            f"Expected {required} plus one probability column per class in {classes}"
        )
    dupes = table.filter(pl.col("image_id").is_duplicated())["image_id"].unique().sort().to_list()
    if dupes:
        raise PredictionTableError(
            f"member '{name}': image_id {dupes[:5]} appears more than once ({len(dupes)} ids in all); "
            "each image needs exactly one prediction row per member"
        )


def _probabilities(name: str, table: pl.DataFrame, classes: list[str]) -> np.ndarray:
    try:
        probs = table.select([pl.col(c).cast(pl.Float64) for c in classes]).to_numpy()
    except pl.exceptions.PolarsError as exc:
        raise PredictionTableError(f"member '{name}': class columns must be numeric probabilities ({exc})") from None
    ids = table["image_id"].to_list()
    bad = ~np.isfinite(probs).all(axis=1) | (probs < 0).any(axis=1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise PredictionTableError(
            f"member '{name}': image_id '{ids[row]}' has missing, negative or non-finite probabilities "
            f"{probs[row].tolist()} ({int(bad.sum())} such rows); re-run that member's prediction"
        )
    sums = probs.sum(axis=1)
    off = np.abs(sums - 1.0) > ROW_SUM_TOLERANCE
    if off.any():
        row = int(np.flatnonzero(off)[0])
        raise PredictionTableError(
            f"member '{name}': probabilities of image_id '{ids[row]}' sum to {sums[row]:.4f}, not 1 "
            f"({int(off.sum())} such rows); write softmax outputs, not logits, one column per class"
        )
    return probs / sums[:, None]


def _labels(name: str, table: pl.DataFrame, classes: list[str]) -> np.ndarray:
    column = table["label"]
    if column.dtype in (pl.String, pl.Categorical) or isinstance(column.dtype, pl.Enum):
        index = {c: i for i, c in enumerate(classes)}
        values = column.cast(pl.String).to_list()
        unknown = [(i, v) for i, v in enumerate(values) if v not in index]
        if unknown:
            row, value = unknown[0]
            raise PredictionTableError(
                f"member '{name}': image_id '{table['image_id'][row]}' has label '{value}', not one of {classes}"
            )
        return np.array([index[v] for v in values], dtype=np.int64)
    if not column.dtype.is_integer():
        raise PredictionTableError(f"member '{name}': label must be a class name or class index, got {column.dtype}")
    labels = column.to_numpy().astype(np.int64)
    bad = (labels < 0) | (labels >= len(classes))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise PredictionTableError(
            f"member '{name}': image_id '{table['image_id'][row]}' has label index {labels[row]}, "
            f"outside 0..{len(classes) - 1} ({classes})"
        )
    return labels


def _common_ids(tables: dict[str, pl.DataFrame], what: str) -> tuple[list[str], dict[str, int]]:
    id_sets = {name: set(t["image_id"].cast(pl.String).to_list()) for name, t in tables.items()}
    common = set.intersection(*id_sets.values())
    dropped = {name: len(ids) - len(common) for name, ids in id_sets.items()}
    if not common and what == "test predictions" and not any(id_sets.values()):
        return [], dropped  # no test split: every member's table is empty, which is valid
    if not common:
        sizes = {name: len(ids) for name, ids in id_sets.items()}
        raise PredictionTableError(
            f"{what}: the members share no image_id (rows per member: {sizes}); combine only members "
            "predicted on the same images (e.g. leave smoke-stage members on another fold out)"
        )
    return sorted(common), dropped


def _validate_inputs(tables: dict[str, pl.DataFrame], classes: list[str]) -> None:
    if not tables:
        raise PredictionTableError("no member prediction tables given; train at least one member first")
    if len(set(classes)) != len(classes) or not classes:
        raise PredictionTableError(f"classes {classes} must be a non-empty list of distinct names")


def stack_members(tables: dict[str, pl.DataFrame], classes: list[str]) -> MemberStack:
    """Align OOF tables (`image_id, fold, label, <class>...`) on the image_ids every member covers."""
    _validate_inputs(tables, classes)
    for name, table in tables.items():
        _check_columns(name, table, ["image_id", "fold", "label"], classes)
    ids, dropped = _common_ids(tables, "OOF predictions")
    order = pl.DataFrame({"image_id": ids})
    probs, y, folds = [], None, None
    for name, table in tables.items():
        aligned = order.join(table.with_columns(pl.col("image_id").cast(pl.String)), on="image_id", how="left")
        probs.append(_probabilities(name, aligned, classes))
        labels = _labels(name, aligned, classes)
        missing_fold = aligned.filter(pl.col("fold").is_null())["image_id"]
        if len(missing_fold):
            raise PredictionTableError(
                f"member '{name}': image_id '{missing_fold[0]}' has no fold ({len(missing_fold)} such rows); "
                "OOF rows must say which fold held them out"
            )
        member_folds = aligned["fold"].cast(pl.Int64).to_numpy()
        if y is None:
            y, folds, first = labels, member_folds, name
            continue
        for what, mine, ref in (("label", labels, y), ("fold", member_folds, folds)):
            differ = mine != ref
            if differ.any():
                row = int(np.flatnonzero(differ)[0])
                raise PredictionTableError(
                    f"members '{first}' and '{name}' disagree on the {what} of image_id '{ids[row]}' "
                    f"({ref[row]} vs {mine[row]}; {int(differ.sum())} rows); all members must be trained "
                    "on the same manifest and fold assignment"
                )
    return MemberStack(list(tables), np.stack(probs), y, folds, ids, list(classes), dropped)


def stack_test(tables: dict[str, pl.DataFrame], classes: list[str]) -> TestStack:
    """Align test-prediction tables (`image_id, <class>...`) on the image_ids every member covers.

    Tables that are all empty (a dataset without a test split) give a stack of zero images.
    """
    _validate_inputs(tables, classes)
    for name, table in tables.items():
        _check_columns(name, table, ["image_id"], classes)
    ids, dropped = _common_ids(tables, "test predictions")
    order = pl.DataFrame({"image_id": ids}, schema={"image_id": pl.String})
    probs = [
        _probabilities(name, order.join(t.with_columns(pl.col("image_id").cast(pl.String)), on="image_id", how="left"), classes)
        for name, t in tables.items()
    ]
    return TestStack(list(tables), np.stack(probs).reshape(len(tables), len(ids), len(classes)), ids, list(classes), dropped)
