"""Honest soups: chosen on a slice of the training split (never the OOF fold), fall back to the base, fresh BN stats."""

import numpy as np
import torch

from ens_assets.subsets.in_memory_training import create_seeded_model, to_model_input
from ens_assets.subsets.soup import recompute_batchnorm
from ens_assets.subsets.standard_loop import default_train_fn
from ens_assets.subsets.strategy import SubsetEnsembleConfig, selection_split, train_subset_ensemble
from ens_assets_tests.subsets.colour_images import BACKBONE, colour_images

CFG = SubsetEnsembleConfig(fraction=0.4, copies=2, total_epochs=4, merge="greedy", batch_size=32, score_seeds=(0,))


def test_oof_rows_are_untouched_by_soup_selection(train_val):
    """Scramble the validation fold (the OOF rows): every choice and every weight stays the same."""
    train_images, train_labels, val_images, val_labels = train_val
    scores = np.arange(len(train_labels), dtype=float)
    model_a, report_a = train_subset_ensemble(BACKBONE, 3, train_images, train_labels, val_images, val_labels,
                                              CFG, seed=0, scores=scores)
    rng = np.random.default_rng(5)
    scrambled_images = rng.integers(0, 256, size=val_images.shape, dtype=np.uint8)
    scrambled_labels = rng.permutation((val_labels + 1) % 3)
    model_b, report_b = train_subset_ensemble(BACKBONE, 3, train_images, train_labels, scrambled_images,
                                              scrambled_labels, CFG, seed=0, scores=scores)
    (a,), (b,) = report_a["phases"], report_b["phases"]
    for key in ("accepted_copies", "fallback_to_base", "soup_selection_loss", "copy_selection_losses"):
        assert a[key] == b[key], key
    assert a["merged_val_loss"] != b["merged_val_loss"]  # the OOF fold changed and is still reported on
    for key, tensor in model_a.state_dict().items():
        assert torch.equal(tensor, model_b.state_dict()[key]), key


def test_soup_falls_back_to_the_base_when_no_soup_beats_it(train_val):
    train_images, train_labels, val_images, val_labels = train_val
    calls = []

    def base_good_copies_ruined(model, images, labels, epochs, seed):
        calls.append(seed)
        if len(calls) == 1:
            return default_train_fn(3, images, labels, batch_size=32)(model, images, labels, epochs, seed)
        with torch.no_grad():  # a copy that diverged: any soup of such copies is worse than the base
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 5)
        return model.eval()

    model, report = train_subset_ensemble(BACKBONE, 3, train_images, train_labels, val_images, val_labels, CFG,
                                          seed=0, scores=np.arange(60.0), train_fn=base_good_copies_ruined)
    (phase,) = report["phases"]
    assert phase["fallback_to_base"] is True
    assert phase["soup_selection_loss"] > phase["base_selection_loss"]
    assert report["final_val_loss"] == phase["base_val_loss"]


def test_batchnorm_statistics_are_recomputed_on_training_crops():
    images, _ = colour_images(per_class=10, seed=0, size=16)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    with torch.no_grad():
        model[1].running_mean.fill_(100.0)  # what an average of mismatched copies can leave behind
        model[1].running_var.fill_(1e-3)
    assert recompute_batchnorm(model, images, batch_size=10) is True  # equal batches: the mean of batch means is exact
    with torch.no_grad():
        activations = model[0](to_model_input(model, torch.from_numpy(images)))
    torch.testing.assert_close(model[1].running_mean, activations.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-4)
    assert not model.training
    assert recompute_batchnorm(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)), images, 8) is False


def test_selection_slice_keeps_images_together_and_every_class():
    labels = np.repeat([0, 1, 2], 20)
    groups = np.repeat(np.arange(30), 2)  # two crops per image
    keep, chosen = selection_split(labels, 0.2, seed=0, groups=groups)
    assert not set(groups[keep]) & set(groups[chosen])
    assert len(keep) + len(chosen) == 60 and set(labels[chosen]) == {0, 1, 2}
    assert 8 <= len(chosen) <= 16
