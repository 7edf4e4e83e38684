import json

import numpy as np
import polars as pl
import pytest
import torch
from pydantic import ValidationError

from ens_assets.plan import Recipe, TrainingConfig
from ens_assets.subsets.difficulty import difficulty_scores
from ens_assets.subsets.in_memory_training import create_seeded_model, mean_log_loss
from ens_assets.subsets.standard_loop import standard_loop_train_fn
from ens_assets.subsets.strategy import (
    SubsetEnsembleConfig,
    aligned_scores,
    epoch_plan,
    train_subset_ensemble,
)
from ens_assets_tests.subsets.colour_images import BACKBONE


@pytest.mark.slow
def test_subset_ensemble_runs_end_to_end_with_greedy_soup(train_val):
    train_images, train_labels, val_images, val_labels = train_val
    cfg = SubsetEnsembleConfig(fraction=0.3, copies=3, phases=1, total_epochs=6, merge="greedy", batch_size=32)
    model, report = train_subset_ensemble(BACKBONE, 3, train_images, train_labels, val_images, val_labels, cfg, seed=0)

    (phase,) = report["phases"]
    assert (phase["base_epochs"], phase["copy_epochs"]) == (3, 1)
    # 60 training images, a 15% selection slice held out (9, stratified) leaves 51: k=0.3 of them is 15.
    assert report["num_selection_images"] == 9
    assert phase["base_subset_size"] == 15 and phase["copy_subset_sizes"] == [15, 15, 15]
    assert phase["copy_subset_mean_el2n"] == sorted(phase["copy_subset_mean_el2n"])  # easy -> hard strata
    assert len(phase["copy_val_losses"]) == 3 and phase["accepted_copies"]
    assert set(phase["accepted_copies"]) <= {0, 1, 2}
    # Greedy soup never loses on the slice it is chosen on; the kept model beats the base there or is the base.
    assert phase["soup_selection_loss"] <= min(phase["copy_selection_losses"]) + 1e-6
    assert phase["fallback_to_base"] == (phase["soup_selection_loss"] >= phase["base_selection_loss"])
    assert report["final_val_loss"] == pytest.approx(mean_log_loss(model, val_images, val_labels))
    assert report["scores_source"] == "computed" and phase["wall_s"] > 0
    json.dumps(report)  # JSON-ready for the Dagster layer / MLflow


@pytest.mark.slow
def test_multi_phase_uniform_merge_with_given_scores_learns(train_val):
    train_images, train_labels, val_images, val_labels = train_val
    scores = difficulty_scores(BACKBONE, 3, train_images, train_labels, seeds=(0,), epochs=1, batch_size=32)
    cfg = SubsetEnsembleConfig(fraction=0.4, copies=2, phases=2, total_epochs=9, merge="uniform", score="grand",
                               batch_size=32)
    model, report = train_subset_ensemble(BACKBONE, 3, train_images, train_labels, val_images, val_labels, cfg,
                                          seed=1, scores=scores)
    assert [(p["base_epochs"], p["copy_epochs"]) for p in report["phases"]] == [(3, 1), (2, 1)]
    assert all(p["accepted_copies"] == [0, 1] for p in report["phases"])
    assert "copy_subset_mean_grand" in report["phases"][0]
    assert report["scores_source"] == "given"
    untrained = mean_log_loss(create_seeded_model(BACKBONE, 3, seed=1), val_images, val_labels)
    assert report["final_val_loss"] < min(untrained, np.log(3))  # learned: beats init and uniform guessing


def test_epoch_plan_never_exceeds_the_budget():
    for total, copies, phases in [(6, 3, 1), (9, 2, 2), (17, 2, 3), (40, 5, 3)]:
        cfg = SubsetEnsembleConfig(total_epochs=total, copies=copies, phases=phases)
        plan = epoch_plan(cfg)
        assert len(plan) == phases
        assert sum(base + copies * per_copy for base, per_copy in plan) == total
        assert all(per_copy >= 1 and base >= copies * per_copy for base, per_copy in plan)


def test_config_rejects_a_budget_too_small_for_its_copies():
    with pytest.raises(ValidationError, match="give total_epochs >= 12 or fewer copies/phases"):
        SubsetEnsembleConfig(total_epochs=8, copies=3, phases=2)
    with pytest.raises(ValidationError, match="fraction"):
        SubsetEnsembleConfig(fraction=0.0)
    with pytest.raises(ValidationError, match="merge"):
        SubsetEnsembleConfig(merge="mean")


def test_scores_must_cover_exactly_the_training_images(train_val):
    train_images, train_labels, val_images, val_labels = train_val
    with pytest.raises(ValueError, match=r"scores has shape \(5,\); expected \(60,\)"):  # checked before the slice
        train_subset_ensemble(BACKBONE, 3, train_images, train_labels, val_images, val_labels,
                              SubsetEnsembleConfig(total_epochs=6), seed=0, scores=np.ones(5))
    frame = pl.DataFrame({"index": [0, 1, 1], "el2n": [0.1, 0.2, 0.3]})
    with pytest.raises(ValueError, match="index 0..N-1"):
        aligned_scores(frame, 3, "el2n")
    np.testing.assert_array_equal(aligned_scores(pl.DataFrame({"index": [2, 0, 1], "el2n": [3.0, 1.0, 2.0]}), 3, "el2n"),
                                  [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="val_images is empty"):
        train_subset_ensemble(BACKBONE, 3, train_images, train_labels, val_images[:0], val_labels[:0],
                              SubsetEnsembleConfig(total_epochs=6), seed=0, scores=np.ones(60))


@pytest.mark.slow
def test_standard_loop_trains_base_and_copies_from_an_initial_model(train_val):
    train_images, train_labels, val_images, val_labels = train_val
    train_fn = standard_loop_train_fn(3, val_images, val_labels, recipe=Recipe(),
                                      config=TrainingConfig(batch_size=32, warmup_epochs=0), device=torch.device("cpu"))
    start = create_seeded_model(BACKBONE, 3, seed=7)
    start_state = {k: v.clone() for k, v in start.state_dict().items()}
    cfg = SubsetEnsembleConfig(fraction=0.5, copies=2, total_epochs=4, merge="greedy", batch_size=32)
    model, report = train_subset_ensemble(BACKBONE, 3, train_images, train_labels, val_images, val_labels, cfg,
                                          seed=0, train_fn=train_fn, scores=np.arange(60.0), initial_model=start)
    assert all(torch.equal(v, start_state[k]) for k, v in start.state_dict().items())  # caller's model untouched
    (phase,) = report["phases"]
    assert (phase["base_epochs"], phase["copy_epochs"]) == (2, 1)
    assert phase["soup_selection_loss"] <= min(phase["copy_selection_losses"]) + 1e-6
    with pytest.raises(ValueError, match="initial_model has 4 outputs"):
        train_subset_ensemble(BACKBONE, 3, train_images, train_labels, val_images, val_labels, cfg, seed=0,
                              scores=np.arange(60.0), initial_model=create_seeded_model(BACKBONE, 4, seed=0))
