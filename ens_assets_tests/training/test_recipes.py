"""Fine-tuning recipes: layer decay, head lr, frozen-backbone warm-up, normalisation and per-member input size."""

import numpy as np
import pytest
import timm
import torch
from timm.scheduler import create_scheduler_v2

from ens_assets.plan import Budget, Recipe, TrainingConfig
from ens_assets.training.augment import model_mean_std, resize_crops
from ens_assets.training.loop import fit
from ens_assets.training.models import create_member_model, flops_per_image
from ens_assets.training.optim import create_member_optimizer, head_parameters
from ens_assets_tests.training.tiny_project import make_tiny_plan, tiny_plan_dict


def _lrs_after_schedule(model, config):
    optimizer = create_member_optimizer(model, config)
    scheduler, _ = create_scheduler_v2(optimizer, sched="cosine", num_epochs=4, warmup_epochs=0)
    scheduler.step(0)
    head_ids = {id(p) for p in head_parameters(model)}
    by_param = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            by_param[id(p)] = group["lr"]
    stem = next(iter(model.parameters()))
    head = [by_param[i] for i in head_ids]
    return by_param[id(stem)], head


def test_layer_decay_scales_the_stem_below_the_head():
    model = timm.create_model("test_resnet", num_classes=4)
    stem_lr, head_lr = _lrs_after_schedule(model, TrainingConfig(lr=0.01, layer_decay=0.5))
    assert all(h == pytest.approx(0.01) for h in head_lr)
    assert stem_lr < 0.01 * 0.5  # several layers below the head, each a factor 0.5
    plain_stem, plain_head = _lrs_after_schedule(model, TrainingConfig(lr=0.01))
    assert plain_stem == pytest.approx(0.01) and plain_head == [pytest.approx(0.01)] * 2


def test_head_lr_is_separate_from_the_backbone_lr():
    model = timm.create_model("test_resnet", num_classes=4)
    stem_lr, head_lr = _lrs_after_schedule(model, TrainingConfig(lr=0.001, head_lr=0.01))
    assert stem_lr == pytest.approx(0.001) and head_lr == [pytest.approx(0.01)] * 2
    # Combined with layer decay: the head keeps head_lr, the stem gets decayed backbone lr.
    stem_lr, head_lr = _lrs_after_schedule(model, TrainingConfig(lr=0.001, head_lr=0.01, layer_decay=0.5))
    assert head_lr == [pytest.approx(0.01)] * 2 and stem_lr < 0.0005


def _data(n=48, size=32, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    x = rng.integers(0, 60, (n, size, size, 3), dtype=np.uint8)
    x[np.arange(n), :, :, y % 3] += 150
    return x, y


def _fit(model, epochs, freeze_epochs):
    x, y = _data()
    return fit(model, x[:36], y[:36], x[36:], y[36:], num_classes=4, recipe=Recipe(),
               config=TrainingConfig(batch_size=12, lr=0.01, warmup_epochs=0, freeze_epochs=freeze_epochs),
               budget=Budget(epochs=epochs, patience=5), seed=0, out_dir=None, log=lambda _: None)  # fmt: skip


def test_frozen_warm_up_trains_only_the_head_then_unfreezes():
    torch.manual_seed(0)
    model = create_member_model("test_resnet", 4, None)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    probe = _fit(model, epochs=1, freeze_epochs=1)
    after = probe.best_state
    backbone = [k for k in before if not k.startswith("fc.")]
    # Weights and BatchNorm running statistics of the backbone stay as loaded; the head learned.
    assert all(torch.equal(before[k], after[k]) for k in backbone)
    assert not torch.equal(before["fc.weight"], after["fc.weight"])
    assert probe.history[0]["frozen_backbone"] == 1.0

    torch.manual_seed(0)
    model = create_member_model("test_resnet", 4, None)
    tuned = _fit(model, epochs=2, freeze_epochs=1)
    assert [h["frozen_backbone"] for h in tuned.history] == [1.0, 0.0]
    assert all(p.requires_grad for p in model.parameters())
    assert not torch.equal(before["conv1.0.weight"], model.state_dict()["conv1.0.weight"])


def test_normalisation_comes_from_the_pretrained_cfg():
    mean, std = model_mean_std(timm.create_model("tf_efficientnet_lite0"), torch.device("cpu"))
    assert mean.tolist() == [0.5, 0.5, 0.5] and std.tolist() == [0.5, 0.5, 0.5]
    mean, _ = model_mean_std(timm.create_model("lcnet_050"), torch.device("cpu"))
    assert mean.tolist() == pytest.approx([0.485, 0.456, 0.406])


def test_resize_crops_keeps_content():
    x = np.zeros((2, 32, 32, 3), dtype=np.uint8)
    x[:, :16] = 200  # top half bright
    small = resize_crops(x, 16)
    assert small.shape == (2, 16, 16, 3) and small[:, :7].min() == 200 and small[:, 9:].max() == 0
    assert resize_crops(x, 32) is x


def test_crops_are_cached_at_the_largest_member_size(tmp_path):
    raw = tiny_plan_dict()
    raw["members"][0]["image_size"] = 48
    raw["members"][1]["image_size"] = "pretrained"
    raw["members"][1]["backbone"] = "tf_efficientnet_lite0"
    plan = make_tiny_plan(tmp_path, raw)
    assert [plan.image_size(m) for m in plan.members] == [48, 224]
    assert plan.crop_cache_size == 224 and plan.crop_settings.image_size == 224 and plan.crops.image_size == 32
    assert plan.member_spec(plan.members[0])["image_size"] == 48
    raw["members"][0]["image_size"] = 8
    with pytest.raises(ValueError, match="image_size 8 is below 16"):
        make_tiny_plan(tmp_path, raw)


def test_member_trains_and_predicts_at_its_own_size(tmp_path, mlflow_store):
    """A member asking for 24 px trains on crops resized down from the 32 px cache; FLOPs are at 24 px."""
    from ens_assets.training.checkpoint import read_sidecar
    from ens_assets.member_runs import train_member_fold
    from ens_assets.training.run import predict_member_oof

    raw = tiny_plan_dict()
    raw["members"][1]["image_size"] = 24
    plan = make_tiny_plan(tmp_path, raw)
    member = plan.members[1]
    result = train_member_fold(plan, member.key, "smoke", log=lambda _: None)
    metrics = read_sidecar(plan.checkpoint_dir(member.key, "smoke"))["metrics"]
    assert metrics["image_size"] == 24 == result.metrics["image_size"]
    assert metrics["flops_per_image"] == flops_per_image(create_member_model("test_resnet", 4, None), 24)
    oof = predict_member_oof(plan, member.key)
    assert oof.height > 0


def test_member_inference_flops_count_every_fold_model(trained_project):
    """FLOPs-true cost: a cv member's test predictions average its k fold models."""
    from ens_assets.training.checkpoint_store import CheckpointStore

    plan, _, results = trained_project
    member = plan.members[0]
    facts = CheckpointStore(plan).member_facts(member.key)
    assert facts["models_at_inference"] == plan.folds.k == len(results)
    assert facts["flops_per_image"] == results[0].metrics["flops_per_image"] > 0
    assert facts["inference_flops_per_image"] == plan.folds.k * facts["flops_per_image"]


def test_a_member_may_override_part_of_its_budget(tmp_path):
    from ens_assets.training.run import checkpoint_spec

    raw = tiny_plan_dict()
    raw["members"][0]["overrides"] = {"cv": {"epochs": 5}, "freeze_epochs": 1}
    plan = make_tiny_plan(tmp_path, raw)
    tuned, plain = plan.members
    assert plan.budget_for_fold("0", tuned).epochs == 5
    assert plan.budget_for_fold("0", tuned).time_budget_s == plan.training.cv.time_budget_s  # the rest: the plan's
    assert plan.budget_for_fold("0", plain).epochs == plan.training.cv.epochs == 2
    assert plan.training_config(tuned).freeze_epochs == 1 and checkpoint_spec(plan, tuned, "0")["budget"]["epochs"] == 5
    raw["members"][0]["overrides"] = {"cv": {"epochs": 0}}
    with pytest.raises(ValueError, match="epochs"):
        make_tiny_plan(tmp_path, raw).training_config(raw["members"][0]["backbone"] + ".t005.geo")
