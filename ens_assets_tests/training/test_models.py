"""Model factory: unknown backbones, local pretrained weights, the offline cache, cost figures."""

import pytest
import torch
from safetensors.torch import save_file

from ens_assets.training.models import ModelError, count_parameters, create_member_model, flops_per_image
from ens_assets_tests.training.tiny_project import make_tiny_plan, tiny_plan_dict


def test_unknown_backbone_is_a_clear_error():
    with pytest.raises(ModelError, match="not a timm model.*timm.list_models"):
        create_member_model("resnet_does_not_exist", 4, None)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_pretrained_local_file_from_the_plan_is_loaded(tmp_path, suffix):
    torch.manual_seed(123)
    source = create_member_model("test_resnet", 4, None)
    weights = tmp_path / "weights" / f"test_resnet{suffix}"
    weights.parent.mkdir()
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    save_file(state, str(weights)) if suffix == ".safetensors" else torch.save(state, weights)

    raw = tiny_plan_dict()
    raw["members"][0]["pretrained"] = f"weights/test_resnet{suffix}"  # relative to params.yaml's folder
    plan = make_tiny_plan(tmp_path, raw)
    member = plan.members[0]
    loaded = create_member_model(member.backbone, 4, member.pretrained, base_dir=tmp_path).state_dict()

    backbone_keys = [k for k in state if not k.startswith("fc.")]
    assert backbone_keys and all(torch.equal(loaded[k], state[k]) for k in backbone_keys)
    # timm re-initialises a head whose size differs from the weights' ImageNet config, as for any fine-tune.
    assert loaded["fc.weight"].shape == (4, state["fc.weight"].shape[1])


def test_pretrained_weights_of_another_architecture_fail_clearly(tmp_path):
    weights = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in create_member_model("lcnet_050", 4, None).state_dict().items()}, str(weights))
    with pytest.raises(ModelError, match="do not fit backbone 'test_resnet'.*tensors missing, e.g. \['conv1.0.weight'"):
        create_member_model("test_resnet", 4, str(weights))


def test_missing_pretrained_file_and_uncached_weights_fail_clearly(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        create_member_model("test_resnet", 4, "nope.safetensors", base_dir=tmp_path)
    with pytest.raises(ModelError, match="never downloads"):
        create_member_model("test_resnet", 4, "cache")


def test_parameter_count_and_flops_scale_with_input():
    model = create_member_model("test_resnet", 4, None)
    assert count_parameters(model) == sum(p.numel() for p in model.parameters()) > 0
    small, large = flops_per_image(model, 32), flops_per_image(model, 64)
    assert small > 0 and 3.5 < large / small < 4.5  # convolution cost grows with pixel count
