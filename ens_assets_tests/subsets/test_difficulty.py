import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ens_assets.subsets.difficulty import difficulty_scores, score_distribution_png, score_model
from ens_assets.subsets.in_memory_training import create_seeded_model, to_model_input
from ens_assets.subsets.standard_loop import default_train_fn
from ens_assets_tests.subsets.colour_images import BACKBONE


@pytest.mark.slow
@pytest.mark.parametrize("grad_scope", ["last_layer", "full"])
def test_flipped_labels_score_harder_than_clean(separable_with_flips, grad_scope):
    images, labels, flipped = separable_with_flips
    scores = difficulty_scores(BACKBONE, 3, images, labels, seeds=(0, 1), epochs=6, batch_size=32,
                               grad_scope=grad_scope)
    assert scores.columns[:3] == ["index", "el2n", "grand"]
    assert scores["index"].to_list() == list(range(len(labels)))
    assert {"el2n_seed0", "grand_seed1"} <= set(scores.columns)
    is_flipped = np.zeros(len(labels), bool)
    is_flipped[flipped] = True
    for column in ("el2n", "grand"):
        values = scores[column].to_numpy()
        assert np.all(np.isfinite(values))
        assert values[is_flipped].mean() > 1.3 * values[~is_flipped].mean(), column
        # The planted examples sit in the hardest third, not just on average.
        assert np.median(values[is_flipped]) > np.quantile(values[~is_flipped], 0.66), column
    # Seed columns average to the reported score.
    np.testing.assert_allclose(scores["el2n"].to_numpy(),
                               (scores["el2n_seed0"].to_numpy() + scores["el2n_seed1"].to_numpy()) / 2)


@pytest.mark.slow
def test_last_layer_grand_matches_closed_form(separable_with_flips):
    # For logits = W f + b, d CE / dW = (p - y) f^T and d CE / db = p - y, so the per-example norm is
    # ||p - y|| * sqrt(||f||^2 + 1) -- an independent check of the vmap(grad) path and of EL2N.
    images, labels, _ = separable_with_flips
    model = default_train_fn(3, images, labels)(create_seeded_model(BACKBONE, 3, seed=0), images, labels, 1, 0)
    el2n, grand = score_model(model, images, labels, batch_size=32, grad_scope="last_layer")
    with torch.no_grad():
        features = model.forward_head(model.forward_features(to_model_input(model, torch.from_numpy(images))),
                                      pre_logits=True)
        residual = model.get_classifier()(features).softmax(1) - F.one_hot(torch.from_numpy(labels), 3)
    expected_el2n = residual.norm(dim=1).double().numpy()
    np.testing.assert_allclose(el2n, expected_el2n, rtol=1e-4)
    np.testing.assert_allclose(grand, expected_el2n * np.sqrt(features.pow(2).sum(1).double().numpy() + 1), rtol=1e-3)


def test_bad_inputs_get_clear_errors(separable_with_flips):
    images, labels, _ = separable_with_flips
    with pytest.raises(ValueError, match="uint8"):
        difficulty_scores(BACKBONE, 3, images.astype(np.float32), labels)
    with pytest.raises(ValueError, match=r"labels\[\d+\] = 7 is outside \[0, 3\)"):
        difficulty_scores(BACKBONE, 3, images, np.where(np.arange(len(labels)) == 5, 7, labels))
    with pytest.raises(ValueError, match="71 labels for 72 images"):
        difficulty_scores(BACKBONE, 3, images, labels[:-1])
    with pytest.raises(ValueError, match="not a timm model"):
        difficulty_scores("no_such_backbone", 3, images, labels)


@pytest.mark.slow
def test_score_distribution_png_is_a_png(separable_with_flips):
    images, labels, _ = separable_with_flips
    scores = difficulty_scores(BACKBONE, 3, images[:24], labels[:24], seeds=(0,), epochs=1)
    png = score_distribution_png(scores, ["red", "green", "blue"], labels[:24])
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    with pytest.raises(ValueError, match="labels has 10 entries"):
        score_distribution_png(scores, ["red", "green", "blue"], labels[:10])
