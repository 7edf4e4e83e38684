import numpy as np
import polars as pl

from ens_assets.ensemble.compute import accuracy_vs_compute, pareto_mask
from ens_assets.ensemble.plots import confusion_grid_png, png_markdown, recall_matrix_png
from ens_assets.ensemble.diagnostics import per_class_recall
from ens_assets.ensemble.scoring import honest_scores
from ens_assets.ensemble.tables import stack_members
from ens_assets_tests.ensemble.synthetic import CLASSES, planted_members

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_pareto_mask_keeps_only_undominated_points():
    flops = np.array([10, 20, 30, 20, 5])
    loss = np.array([1.0, 0.8, 0.9, 0.8, 2.0])
    # (30, 0.9) is dominated by (20, 0.8); equal points do not dominate each other.
    assert pareto_mask(flops, loss).tolist() == [True, True, False, True, True]


def test_ensembles_cost_the_flops_of_their_nonzero_weight_members():
    oof, _ = planted_members(n=300)
    scores = honest_scores(stack_members(oof, CLASSES), ["mean", "greedy"], rounds=3)
    flops = {"a": 100, "b": 40, "c": 10}
    table = accuracy_vs_compute(scores, flops, {"mean": {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3},
                                                "greedy": {"a": 0.5, "b": 0.0, "c": 0.5}})
    rows = {r["name"]: r for r in table.iter_rows(named=True)}
    assert set(rows) == {"a", "b", "c", "mean", "greedy"}  # best_single_member is not a second point
    assert rows["mean"]["flops_per_image"] == 150 and rows["greedy"]["flops_per_image"] == 110
    assert rows["greedy"]["n_members"] == 2
    assert rows["c"]["pareto"]  # cheapest point is always on the front
    cheaper_and_better = table.filter(pl.col("log_loss") < rows["mean"]["log_loss"]).filter(
        pl.col("flops_per_image") <= 150)
    assert rows["mean"]["pareto"] == (cheaper_and_better.height == 0)


def test_plots_are_pngs_and_embed_as_markdown():
    oof, _ = planted_members(n=120)
    stack = stack_members(oof, CLASSES)
    grid = confusion_grid_png(stack, stack.probs.mean(axis=0))
    matrix = recall_matrix_png(per_class_recall(stack))
    assert grid.startswith(PNG_MAGIC) and matrix.startswith(PNG_MAGIC)
    md = png_markdown(matrix, "recall")
    assert md.startswith("![recall](data:image/png;base64,iVBOR") and md.endswith(")")
