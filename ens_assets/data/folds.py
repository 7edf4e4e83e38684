"""Grouped, class-stratified k folds over the train split (test rows never enter a fold).

Groups never span folds. What a group is follows folds.group_by:
- site: camera sites (the honest split when there are at least k of them);
- sequence: the layout's sequence id (COCO Camera Traps seq_id, Camtrap DP eventID);
- burst: frames of one camera within folds.burst_gap_s of each other (EXIF DateTimeOriginal);
- image: every image on its own (StratifiedKFold; near-duplicate burst frames may leak across folds);
- auto: the first of site, sequence, burst that gives at least k groups, else image with a warning.

`selection_split` carves a held-out slice from a fold's training rows by the same groups: the slice a
member's epochs are chosen on (early stopping) and a subset member's soups are chosen on, never the OOF fold.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field

import numpy as np
import polars as pl
from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold, StratifiedKFold

from ens_assets.atomic import write_json, write_parquet
from ens_assets.data.bursts import burst_ids, capture_table
from ens_assets.plan import FoldConfig, Plan

FOLDS_SCHEMA = pl.Schema(
    {"image_id": pl.String, "site": pl.String, "label": pl.String, "group": pl.String, "fold": pl.Int64}
)
UNKNOWN_SITE = "unknown"


class FoldError(ValueError):
    """Folds that cannot be made from this manifest; names the fix."""


class HoldoutError(ValueError):
    """No held-out slice of a fold's training rows can be carved (too few groups or rows of a class); names why."""


@dataclass
class Grouping:
    """What the folds were grouped by and why; written beside the folds as folds.json."""

    group_by: str  # site | sequence | burst | image
    requested: str  # folds.group_by as configured (auto or one of the above)
    n_groups: int
    reason: str
    warning: str | None = None
    details: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "group_by": self.group_by,
            "requested": self.requested,
            "n_groups": self.n_groups,
            "reason": self.reason,
            "warning": self.warning,
            **self.details,
        }


@dataclass
class FoldReport:
    groups_in_several_folds: list[str] = field(default_factory=list)
    classes_missing: dict[int, list[str]] = field(default_factory=dict)  # per fold's validation part
    warnings: list[str] = field(default_factory=list)
    ok: bool = True  # False only for a group in two folds; missing classes are warnings

    @property
    def sites_in_several_folds(self) -> list[str]:  # the name of the check before grouping became configurable
        return self.groups_in_several_folds


def _site_groups(train: pl.DataFrame) -> pl.Series:
    return train["site"].fill_null(UNKNOWN_SITE).alias("group")


def _sequence_groups(train: pl.DataFrame) -> tuple[pl.Series, int]:
    """Sequence id where the layout gives one, the image itself elsewhere; and how many rows had one."""
    if "sequence" not in train.columns:
        return pl.Series("group", [f"image:{i}" for i in train["image_id"]], dtype=pl.String), 0
    groups = train.select(
        pl.when(pl.col("sequence").is_not_null() & (pl.col("sequence") != ""))
        .then("sequence:" + pl.col("sequence"))
        .otherwise("image:" + pl.col("image_id"))
        .alias("group")
    )["group"]
    return groups, int(train["sequence"].is_not_null().sum() - (train["sequence"] == "").sum())


def _burst_groups(train: pl.DataFrame, gap_s: float) -> tuple[pl.Series, int]:
    """Burst id per row (EXIF), and how many rows had a capture time."""
    if "path" not in train.columns:
        return pl.Series("group", [f"image:{i}" for i in train["image_id"]], dtype=pl.String), 0
    captures = capture_table(train)
    bursts = burst_ids(train, captures, gap_s)
    groups = train.select("image_id").join(bursts, on="image_id", how="left", maintain_order="left")["burst"]
    return groups.alias("group"), int(captures["captured_at"].is_not_null().sum())


def choose_grouping(train: pl.DataFrame, cfg: FoldConfig) -> tuple[pl.Series, Grouping]:
    """Group id per train row and the Grouping that explains it (FoldError when an explicit choice cannot work)."""
    k, requested = cfg.k, cfg.group_by
    n_sites = train["site"].fill_null(UNKNOWN_SITE).n_unique()
    if requested in ("auto", "site"):
        if n_sites >= k:
            return _site_groups(train), Grouping("site", requested, n_sites, f"{n_sites} sites >= folds.k = {k}")
        if requested == "site":
            sites = train["site"].unique().sort().to_list()
            raise FoldError(
                f"folds.k = {k} but the train split has only {n_sites} site(s) {sites[:10]}; folds are split by "
                "site, so lower folds.k, add sites (zamba: a 'site' column; imagefolder: root/<class>/<site>/), "
                "or set folds.group_by to auto, sequence, burst or image"
            )
    if requested in ("auto", "sequence"):
        groups, n_with = _sequence_groups(train)
        n_groups = groups.n_unique()
        if n_with and n_groups >= k:
            return groups, Grouping(
                "sequence", requested, n_groups, f"{n_with} of {train.height} images carry a sequence id",
                details={"n_with_sequence": n_with},
            )
        if requested == "sequence":
            raise FoldError(
                f"folds.group_by = sequence but {'no train image has a sequence id' if not n_with else f'only {n_groups} groups < folds.k = {k}'}; "
                "sequence ids come from COCO Camera Traps seq_id or Camtrap DP eventID. Use group_by auto, burst or image"
            )
    if requested in ("auto", "burst"):
        groups, n_timed = _burst_groups(train, cfg.burst_gap_s)
        n_groups = groups.n_unique()
        if n_timed and n_groups >= k:
            return groups, Grouping(
                "burst", requested, n_groups,
                f"{n_timed} of {train.height} images have an EXIF DateTimeOriginal; frames <= {cfg.burst_gap_s:g} s "
                "apart in one folder/camera form a burst",
                details={"n_with_capture_time": n_timed, "burst_gap_s": cfg.burst_gap_s},
            )  # fmt: skip
        if requested == "burst":
            raise FoldError(
                f"folds.group_by = burst but {'no train image has an EXIF DateTimeOriginal' if not n_timed else f'only {n_groups} bursts < folds.k = {k}'}; "
                "use group_by auto or image, or keep the camera's EXIF when copying images"
            )
    groups = pl.Series("group", [f"image:{i}" for i in train["image_id"]], dtype=pl.String)
    if requested == "image":
        return groups, Grouping("image", requested, train.height, "folds.group_by = image")
    warning = (
        f"folds grouped by image: the train split has {n_sites} site(s) < folds.k = {k}, no sequence ids and no "
        "EXIF capture times, so frames of one burst may land in different folds and OOF scores may be optimistic. "
        "Add a site column or keep the cameras' EXIF"
    )
    return groups, Grouping("image", requested, train.height, "nothing to group by", warning=warning)


def make_folds(manifest: pl.DataFrame, cfg: FoldConfig) -> tuple[pl.DataFrame, Grouping]:
    """Fold of every train image (StratifiedGroupKFold over the chosen groups) and how they were grouped."""
    k = cfg.k
    train = manifest.filter(pl.col("split") == "train")
    if train.height < k:
        raise FoldError(f"folds.k = {k} but the train split has only {train.height} image(s); lower folds.k or add images")
    groups, grouping = choose_grouping(train, cfg)
    labels = train["label"].to_numpy()
    fold = np.full(train.height, -1, dtype=np.int64)
    with warnings.catch_warnings():
        # "least populated class has fewer members than n_splits": check_folds reports that per fold.
        warnings.filterwarnings("ignore", message=".*least populated class.*", category=UserWarning)
        if grouping.group_by == "image":
            splits = StratifiedKFold(n_splits=k, shuffle=True, random_state=cfg.seed).split(np.zeros(train.height), labels)
        else:
            splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=cfg.seed)
            splits = splitter.split(np.zeros(train.height), labels, groups.to_numpy())
        for i, (_, valid) in enumerate(splits):
            fold[valid] = i
    sizes = np.bincount(fold, minlength=k)
    if (sizes == 0).any():
        raise FoldError(
            f"folds.k = {k}: fold(s) {np.flatnonzero(sizes == 0).tolist()} got no images from {grouping.n_groups} "
            f"{grouping.group_by} groups; lower folds.k or add data"
        )
    frame = train.select("image_id", "site", "label").with_columns(groups, pl.Series("fold", fold, dtype=pl.Int64))
    grouping.details.update({"k": k, "seed": cfg.seed, "n_images": train.height, "images_per_fold": sizes.tolist()})
    return frame.select(list(FOLDS_SCHEMA)), grouping


def write_folds(plan: Plan, frame: pl.DataFrame, grouping: Grouping) -> None:
    """The folds table (folds.parquet) and how it was grouped (folds.json), each written atomically."""
    write_parquet(plan.folds_path, frame)
    write_json(plan.folds_summary_path, grouping.as_dict())


def read_folds(plan: Plan) -> pl.DataFrame:
    """The plan's folds table (FOLDS_SCHEMA); a clear error when the folds asset has not run."""
    if not plan.folds_path.is_file():
        raise FileNotFoundError(f"{plan.folds_path}: no folds table; materialize the folds asset first")
    return pl.read_parquet(plan.folds_path)


def read_grouping(plan: Plan) -> dict:
    """How the folds were grouped (folds.json, Grouping.as_dict()); {} before the folds asset has run."""
    return json.loads(plan.folds_summary_path.read_text()) if plan.folds_summary_path.is_file() else {}


def assign_folds(manifest: pl.DataFrame, k: int, seed: int, group_by: str = "auto", burst_gap_s: float = 60.0) -> pl.DataFrame:
    """make_folds without the grouping record (the folds table only)."""
    return make_folds(manifest, FoldConfig(k=k, seed=seed, group_by=group_by, burst_gap_s=burst_gap_s))[0]


def check_folds(folds: pl.DataFrame) -> FoldReport:
    """A group in two folds (leakage: not ok) and classes missing from a fold's validation part.

    Groups are the table's `group` column (whatever folds.group_by chose); tables written before it
    existed are checked by site.
    """
    report = FoldReport()
    key = "group" if "group" in folds.columns else "site"
    per_group = folds.group_by(key).agg(pl.col("fold").n_unique().alias("n")).filter(pl.col("n") > 1)
    report.groups_in_several_folds = sorted(per_group[key].to_list())
    if report.groups_in_several_folds:
        report.ok = False
        report.warnings.append(
            f"leakage: {key}(s) {report.groups_in_several_folds[:10]} appear in several folds; reassign folds by {key}"
        )
    classes = set(folds["label"].drop_nulls().unique().to_list())
    for k in sorted(folds["fold"].unique().to_list()):
        present = set(folds.filter(pl.col("fold") == k)["label"].drop_nulls().unique().to_list())
        missing = sorted(classes - present)
        if missing:
            report.classes_missing[int(k)] = missing
            report.warnings.append(
                f"fold {k}: validation has no {missing}; per-class metrics for them come from other folds only"
            )
    return report


# --- a held-out slice of one fold's training rows ----------------------------------------------------
def selection_split(labels: np.ndarray, fraction: float, seed: int, groups: np.ndarray | None = None, *,
                    min_per_class: int = 0) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(training indices, held-out indices): a class-stratified slice of about `fraction` of the rows, whole
    groups (an image's crops; a site or sequence) on one side.

    With `min_per_class` > 0 the slice must leave at least one row of every class for training (HoldoutError
    names the classes when no candidate does); among those candidates, the first that holds the most classes
    with >= min_per_class rows wins. A class living in one group (one site) cannot be both held out and
    trained on: `classes_short_in_slice` says which classes the chosen slice lacks.
    """
    labels = np.asarray(labels)
    groups = np.arange(len(labels)) if groups is None else np.asarray(groups)
    if len(np.unique(groups)) < 2:
        raise HoldoutError(f"{len(np.unique(groups))} training group(s) cannot give a held-out slice; use more data")
    best, best_covered = None, -1
    for train_idx, select_idx in _candidate_slices(labels, groups, fraction, seed):
        if not min_per_class:
            return np.sort(train_idx), np.sort(select_idx)
        if len(np.unique(labels[train_idx])) < len(np.unique(labels)):
            continue  # the slice would take a class out of training altogether
        covered = len(np.unique(labels)) - len(classes_short_in_slice(labels, select_idx, min_per_class))
        if covered > best_covered:
            best, best_covered = (np.sort(train_idx), np.sort(select_idx)), covered
    if best is None:
        raise HoldoutError(_too_few_message(labels, groups, fraction))
    return best


def classes_short_in_slice(labels: np.ndarray, select_idx: np.ndarray, min_per_class: int) -> list:
    """Classes with fewer than `min_per_class` rows in the held-out slice."""
    held = np.asarray(labels)[select_idx]
    return [c for c in np.unique(labels) if (held == c).sum() < min_per_class]


def _candidate_slices(labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int):
    """StratifiedGroupKFold's folds as slices (about 1/fraction of them); group shuffles when it cannot stratify."""
    n_splits, state = max(2, int(round(1.0 / fraction))), int(seed) % (2**32)
    rows = np.zeros(len(labels))
    try:
        splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=state)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*least populated class.*", category=UserWarning)
            candidates = list(splitter.split(rows, labels, groups))
    except ValueError:  # tiny data: fewer groups than splits; keep the groups together anyway
        candidates = GroupShuffleSplit(n_splits=n_splits, test_size=fraction, random_state=state).split(rows, labels, groups)
    yield from candidates


def _too_few_message(labels: np.ndarray, groups: np.ndarray, fraction: float) -> str:
    counts = {c: ((labels == c).sum(), len(np.unique(groups[labels == c]))) for c in np.unique(labels)}
    listed = ", ".join(f"class {c}: {n} row(s) in {g} group(s)" for c, (n, g) in sorted(counts.items(), key=lambda kv: kv[1]))
    return (f"every held-out slice of about {fraction:.0%} of the training rows ({len(np.unique(groups))} groups) would "
            f"take some class out of training altogether ({listed})")
