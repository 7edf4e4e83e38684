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


def _crowded_compute_table():
    """Members and ensembles at nearly the same cost and score: the labels would pile up unmoved."""
    oof, _ = planted_members(n=200)
    scores = honest_scores(stack_members(oof, CLASSES), ["mean", "greedy"], rounds=3)
    flops = {"a": 1_000_000, "b": 1_010_000, "c": 3_000_000}
    return accuracy_vs_compute(scores, flops, {"mean": {"a": 0.5, "b": 0.5, "c": 0.0},
                                               "greedy": {"a": 0.5, "b": 0.5, "c": 0.0}})


def test_the_most_expensive_member_is_the_one_bigger_model_point():
    table = _crowded_compute_table()
    rows = {r["name"]: r for r in table.iter_rows(named=True)}
    assert rows["c"]["bigger_model"] and not any(rows[n]["bigger_model"] for n in ("a", "b", "mean", "greedy"))
    assert rows["mean"]["flops_per_image"] == 2_010_000 < rows["c"]["flops_per_image"]
    assert table["pareto_accuracy"].dtype == pl.Boolean


def test_pareto_plot_labels_do_not_overlap():
    import matplotlib.pyplot as plt

    from ens_assets.ensemble.plots import overlapping_labels, pareto_figure, place_labels

    fig = pareto_figure(_crowded_compute_table())
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        texts = [t for t in ax.texts]
        assert {t.get_text() for t in texts} == {"a", "b", "c (bigger model)", "mean", "greedy"}
        assert overlapping_labels(texts, renderer) == []
    plt.close(fig)
    # The check can fail: the same labels at one point without placement do overlap.
    fig, ax = plt.subplots()
    ax.scatter([1, 1, 1], [1, 1, 1])
    piled = [ax.annotate(n, (1, 1), xytext=(4, 4), textcoords="offset points") for n in ("alpha", "beta", "gamma")]
    fig.canvas.draw()
    assert overlapping_labels(piled, fig.canvas.get_renderer())
    spread = place_labels(ax, np.ones(3), np.ones(3), ["one", "two", "three"])
    assert overlapping_labels(spread, fig.canvas.get_renderer()) == []
    plt.close(fig)
