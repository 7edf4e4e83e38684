"""Site-grouped, class-stratified k folds over the train split (test sites never enter a fold)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import polars as pl
from sklearn.model_selection import StratifiedGroupKFold

FOLDS_SCHEMA = pl.Schema({"image_id": pl.String, "site": pl.String, "label": pl.String, "fold": pl.Int64})


class FoldError(ValueError):
    """Folds that cannot be made from this manifest; names the fix."""


@dataclass
class FoldReport:
    sites_in_several_folds: list[str] = field(default_factory=list)
    classes_missing: dict[int, list[str]] = field(default_factory=dict)  # per fold's validation part
    warnings: list[str] = field(default_factory=list)
    ok: bool = True  # False only for site leakage; missing classes are warnings


def assign_folds(manifest: pl.DataFrame, k: int, seed: int) -> pl.DataFrame:
    """Fold of every train image via StratifiedGroupKFold with groups = site."""
    train = manifest.filter(pl.col("split") == "train").select("image_id", "site", "label")
    sites = train["site"].unique().sort().to_list()
    if len(sites) < k:
        raise FoldError(
            f"folds.k = {k} but the train split has only {len(sites)} site(s) {sites[:10]}; folds are split by "
            "site, so lower folds.k or add sites (zamba: a 'site' column; imagefolder: root/<class>/<site>/)"
        )
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    fold = np.full(train.height, -1, dtype=np.int64)
    with warnings.catch_warnings():
        # "least populated class has fewer members than n_splits": check_folds reports that per fold.
        warnings.filterwarnings("ignore", message=".*least populated class.*", category=UserWarning)
        for i, (_, valid) in enumerate(splitter.split(np.zeros(train.height), train["label"].to_numpy(), train["site"].to_numpy())):
            fold[valid] = i
    sizes = np.bincount(fold, minlength=k)
    if (sizes == 0).any():
        raise FoldError(
            f"folds.k = {k}: fold(s) {np.flatnonzero(sizes == 0).tolist()} got no images from {len(sites)} sites; "
            "lower folds.k or add sites"
        )
    return train.with_columns(pl.Series("fold", fold, dtype=pl.Int64)).select(list(FOLDS_SCHEMA))


def check_folds(folds: pl.DataFrame) -> FoldReport:
    """Site leakage (a site in two folds: not ok) and classes missing from a fold's validation part."""
    report = FoldReport()
    per_site = folds.group_by("site").agg(pl.col("fold").n_unique().alias("n")).filter(pl.col("n") > 1)
    report.sites_in_several_folds = sorted(per_site["site"].to_list())
    if report.sites_in_several_folds:
        report.ok = False
        report.warnings.append(
            f"site leakage: sites {report.sites_in_several_folds} appear in several folds; reassign folds by site"
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
