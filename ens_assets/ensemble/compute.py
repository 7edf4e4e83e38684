"""Accuracy against compute: do ensembles of small members beat one bigger model at fewer FLOPs?"""

from __future__ import annotations

import numpy as np
import polars as pl


def pareto_mask(flops: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """True where no other point has flops <= and loss <= with at least one strictly lower."""
    flops, loss = np.asarray(flops, dtype=float), np.asarray(loss, dtype=float)
    no_worse = (flops[None, :] <= flops[:, None]) & (loss[None, :] <= loss[:, None])
    better = (flops[None, :] < flops[:, None]) | (loss[None, :] < loss[:, None])
    return ~(no_worse & better).any(axis=1)


def accuracy_vs_compute(
    scores_df: pl.DataFrame,
    member_flops: dict[str, int],
    ensemble_members: dict[str, dict[str, float]],
) -> pl.DataFrame:
    """Members at their own inference FLOPs/image and ensembles at the summed FLOPs of their nonzero-weight members.

    `scores_df` is `honest_scores` output; `member_flops` the FLOPs one image costs a member at inference (per
    model at its input size x the fold models it averages); `ensemble_members` maps ensemble -> {member: weight}.
    Columns: pareto (log-loss front), pareto_accuracy (accuracy front), bigger_model (the single-model reference).
    """
    scores = {row["name"]: row for row in scores_df.iter_rows(named=True)}
    records = []
    for row in scores_df.filter(pl.col("kind") == "member").iter_rows(named=True):
        if row["name"] not in member_flops:
            continue  # e.g. best_single_member, a second name for a member already listed
        records.append({"name": row["name"], "kind": "member", "flops_per_image": int(member_flops[row["name"]]),
                        "n_members": 1, "log_loss": row["log_loss"], "accuracy": row["accuracy"]})
    for name, weights in ensemble_members.items():
        if name not in scores:
            raise KeyError(f"ensemble '{name}' has no row in the scores table (names: {sorted(scores)})")
        used = [m for m, w in weights.items() if w > 0]
        missing = [m for m in used if m not in member_flops]
        if missing:
            raise KeyError(f"ensemble '{name}': no flops_per_image for members {missing}; "
                           "record each member's FLOPs in its member_info")
        records.append({"name": name, "kind": "ensemble",
                        "flops_per_image": int(sum(member_flops[m] for m in used)), "n_members": len(used),
                        "log_loss": scores[name]["log_loss"], "accuracy": scores[name]["accuracy"]})
    table = pl.DataFrame(records, schema={"name": pl.String, "kind": pl.String, "flops_per_image": pl.Int64,
                                          "n_members": pl.Int64, "log_loss": pl.Float64, "accuracy": pl.Float64})
    flops = table["flops_per_image"].to_numpy()
    return table.with_columns(
        pl.Series("pareto", pareto_mask(flops, table["log_loss"].to_numpy()), dtype=pl.Boolean),
        pl.Series("pareto_accuracy", pareto_mask(flops, -table["accuracy"].to_numpy()), dtype=pl.Boolean),
        pl.Series("bigger_model", _bigger_model(table), dtype=pl.Boolean),
    )


def _bigger_model(table: pl.DataFrame) -> list[bool]:
    """The 'one bigger model' reference (Kondratyuk et al. 2020): the most expensive single member, which
    the ensembles of cheaper members are compared with (marked once there are two members or more)."""
    flag = [False] * table.height
    members = table.filter(pl.col("kind") == "member")
    if members.height >= 2:
        biggest = members.sort(["flops_per_image", "name"], descending=[True, False])["name"][0]
        flag[table["name"].to_list().index(biggest)] = True
    return flag
