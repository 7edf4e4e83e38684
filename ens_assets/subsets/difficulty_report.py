"""A subset member's difficulty scores gathered per image from its checkpoint partitions, summarised per class
(what the difficulty_scores asset writes and shows)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from ens_assets.atomic import write_parquet
from ens_assets.plan import Plan
from ens_assets.subsets.difficulty import score_distribution_png
from ens_assets.subsets.member_training import member_difficulty_table


@dataclass
class DifficultyReport:
    table: pl.DataFrame  # image_id, label, fold, el2n, grand: one row per training image and checkpoint partition
    per_class: pl.DataFrame  # label, images, el2n, grand, el2n_p90; hardest class first
    distributions_png: bytes
    path: Path


def member_difficulty_report(plan: Plan, member: str) -> DifficultyReport:
    """Gather the scores cached in the member's checkpoint partitions, write them to plan.difficulty_path."""
    table = member_difficulty_table({f: plan.checkpoint_dir(member, f) for f in plan.checkpoint_folds(member)})
    if table.is_empty():
        raise FileNotFoundError(f"{member} has no scored checkpoint yet: materialize its checkpoints first")
    path = write_parquet(plan.difficulty_path(member), table)
    classes = sorted(table["label"].unique().to_list())
    per_class = table.group_by("label").agg(
        pl.len().alias("images"), pl.col("el2n").mean(), pl.col("grand").mean(), pl.col("el2n").quantile(0.9).alias("el2n_p90")
    ).sort("el2n", descending=True)
    labels = np.array([classes.index(c) for c in table["label"]])
    png = score_distribution_png(table.with_row_index("index").select("index", "el2n", "grand"), classes, labels)
    return DifficultyReport(table, per_class, png, Path(path))
