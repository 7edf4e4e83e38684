"""The epoch loop on synthetic arrays: resume equality, stopping rules, batched augmentation, crop->image mean."""

import numpy as np
import polars as pl
import pytest
import torch
from torch import nn

from ens_assets.plan import Budget, Recipe, TrainingConfig
from ens_assets.training.augment import augment_batch
from ens_assets.training.checkpoint import load_recovery
from ens_assets.training.loop import fit, train_member_model
from ens_assets.training.predict import per_image_mean

MIXUP = Recipe(mixup_alpha=0.2, cutmix_alpha=1.0, mix_prob=0.8, color_jitter=0.3)


def _data(n=80, size=32, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    x = rng.integers(0, 60, (n, size, size, 3), dtype=np.uint8)
    x[np.arange(n), :, :, y % 3] += 150  # learnable: class colour
    return x, y


class _Crash(Exception):
    pass


def test_resume_after_crash_matches_uninterrupted_run(tmp_path):
    x, y = _data()
    kwargs = dict(recipe=MIXUP, config=TrainingConfig(batch_size=16, lr=0.01, ema=True, ema_decay=0.9),
                  budget=Budget(epochs=3, patience=5), seed=7)  # fmt: skip
    straight = train_member_model("test_resnet", 4, x[:60], y[:60], x[60:], y[60:], out_dir=tmp_path / "a", log=lambda _: None, **kwargs)

    def crash_in_second_epoch(message):
        if message.startswith("epoch 2/"):
            raise _Crash  # after epoch 2 trained but before its recovery checkpoint: resume from epoch 1

    with pytest.raises(_Crash):
        train_member_model("test_resnet", 4, x[:60], y[:60], x[60:], y[60:], out_dir=tmp_path / "b", log=crash_in_second_epoch, **kwargs)
    assert load_recovery(tmp_path / "b")["next_epoch"] == 1
    resumed = train_member_model("test_resnet", 4, x[:60], y[:60], x[60:], y[60:], out_dir=tmp_path / "b", log=lambda _: None, **kwargs)

    assert resumed.resumed_from_epoch == 1 and straight.resumed_from_epoch == 0
    assert [h["select_loss"] for h in resumed.history] == [h["select_loss"] for h in straight.history]
    assert resumed.best_epoch == straight.best_epoch
    assert all(torch.equal(straight.best_state[k], resumed.best_state[k]) for k in straight.best_state)
    final_a, final_b = load_recovery(tmp_path / "a")["model"], load_recovery(tmp_path / "b")["model"]
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)


def test_recovery_state_of_another_configuration_is_discarded(tmp_path):
    x, y = _data(40)
    kwargs = dict(recipe=Recipe(), config=TrainingConfig(batch_size=16), budget=Budget(epochs=1), seed=0, out_dir=tmp_path)
    train_member_model("test_resnet", 4, x[:30], y[:30], x[30:], y[30:], resume_token="old", log=lambda _: None, **kwargs)
    messages = []
    outcome = train_member_model("test_resnet", 4, x[:30], y[:30], x[30:], y[30:], resume_token="new", log=messages.append, **kwargs)
    assert outcome.resumed_from_epoch == 0 and "another configuration" in messages[0]


def _linear_model():
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 4))


def test_early_stopping_when_the_selection_loss_stops_improving():
    x, y = _data(40, size=16)
    # lr far below float32 resolution of the weights: nothing moves, so the loss never improves again.
    outcome = fit(_linear_model(), x[:30], y[:30], x[30:], y[30:], num_classes=4, recipe=Recipe(),
                  config=TrainingConfig(batch_size=16, lr=1e-12, warmup_epochs=0), budget=Budget(epochs=6, patience=2),
                  seed=0, out_dir=None, log=lambda _: None)  # fmt: skip
    assert outcome.stopped_reason == "early_stopping"
    assert outcome.epochs_run == 3 and outcome.best_epoch == 0


def test_time_budget_stops_between_epochs():
    x, y = _data(40, size=16)
    outcome = fit(_linear_model(), x[:30], y[:30], x[30:], y[30:], num_classes=4, recipe=Recipe(),
                  config=TrainingConfig(batch_size=16), budget=Budget(epochs=5, time_budget_s=1e-6),
                  seed=0, out_dir=None, log=lambda _: None)  # fmt: skip
    assert outcome.stopped_reason == "time_budget" and outcome.epochs_run == 1
    assert outcome.images_per_second > 0 and outcome.peak_memory_mb > 0
    assert set(outcome.history[0]) >= {"train_loss", "select_loss", "train_acc", "select_acc", "lr"}


def test_bad_inputs_are_named():
    x, y = _data(10, size=16)
    with pytest.raises(ValueError, match="uint8 array N x S x S x 3"):
        fit(_linear_model(), x.astype(np.float32), y, x, y, num_classes=4, recipe=Recipe(), config=TrainingConfig(),
            budget=Budget(), seed=0, out_dir=None)  # fmt: skip
    with pytest.raises(ValueError, match=r"class indices in \[0, 4\)"):
        fit(_linear_model(), x, y + 4, x, y, num_classes=4, recipe=Recipe(), config=TrainingConfig(),
            budget=Budget(), seed=0, out_dir=None)  # fmt: skip


def test_batched_augmentation_is_seeded_and_keeps_shape():
    batch = torch.rand(8, 3, 32, 32)
    recipe = Recipe(hflip=0.5, scale=(0.5, 1.0), color_jitter=0.4)
    first = augment_batch(batch, recipe, torch.Generator().manual_seed(1))
    again = augment_batch(batch, recipe, torch.Generator().manual_seed(1))
    other = augment_batch(batch, recipe, torch.Generator().manual_seed(2))
    assert first.shape == batch.shape and torch.equal(first, again) and not torch.equal(first, other)
    assert 0.0 <= float(first.min()) and float(first.max()) <= 1.0


def test_full_scale_flip_mirrors_the_image():
    # A left-bright image: with certain flip and the crop covering (nearly) all of it, the right side is bright.
    image = torch.zeros(1, 3, 32, 32)
    image[..., :16] = 1.0
    out = augment_batch(image.repeat(16, 1, 1, 1), Recipe(hflip=1.0, scale=(1.0, 1.0)), torch.Generator().manual_seed(0))
    assert bool((out[..., 20:].mean(dim=(1, 2, 3)) > out[..., :12].mean(dim=(1, 2, 3))).all())


def test_per_image_mean_averages_each_images_crops():
    index = pl.DataFrame({"image_id": ["b", "a", "b", "c"]})
    probs = np.array([[1.0, 0.0], [0.2, 0.8], [0.0, 1.0], [0.5, 0.5]], dtype=np.float32)
    ids, means = per_image_mean(index, probs)
    assert ids.tolist() == ["b", "a", "c"]
    np.testing.assert_allclose(means, [[0.5, 0.5], [0.2, 0.8], [0.5, 0.5]])


@pytest.mark.parametrize("n", [16, 17, 33, 47])
def test_batches_cover_every_item_once(n):
    """A trailing batch of one joins the previous one; no item is dropped or repeated."""
    from ens_assets.training.batching import batches as split_batches

    batches = split_batches(torch.randperm(n), 16)
    seen = torch.cat(batches).sort().values
    assert torch.equal(seen, torch.arange(n))
    assert min(len(b) for b in batches) >= 2
