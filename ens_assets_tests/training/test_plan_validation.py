"""Plans the training stage cannot run are rejected when params.yaml is loaded, naming the fix."""

import pytest
import yaml

from ens_assets.plan import PlanError, load_plan
from ens_assets_tests.training.conftest import tiny_plan_dict


def _load(tmp_path, raw):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_plan(path)


def test_tiny_plan_loads(tmp_path):
    assert _load(tmp_path, tiny_plan_dict()).member_keys == ["test_resnet.t005.geo", "test_resnet.t020.mixup"]


def test_unknown_timm_model(tmp_path):
    raw = tiny_plan_dict()
    raw["members"][0]["backbone"] = "resnet_nonexistent"
    with pytest.raises(PlanError, match=r"members\[0\].backbone 'resnet_nonexistent' is not a timm model"):
        _load(tmp_path, raw)


def test_threshold_not_among_crop_thresholds(tmp_path):
    raw = tiny_plan_dict()
    raw["members"][0]["threshold"] = 0.1
    with pytest.raises(PlanError, match=r"threshold 0.1 is not among crops.thresholds"):
        _load(tmp_path, raw)


def test_fewer_than_two_folds(tmp_path):
    raw = tiny_plan_dict()
    raw["folds"]["k"] = 1
    with pytest.raises(PlanError, match="k-fold cross-validation needs k >= 2"):
        _load(tmp_path, raw)
