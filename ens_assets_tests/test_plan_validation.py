"""Plans the training stage cannot run are rejected when params.yaml is loaded, naming the fix."""

import pytest
import yaml

from ens_assets.plan import PlanError, load_plan
from ens_assets_tests.training.tiny_project import tiny_plan_dict


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


def test_member_overrides_go_through_the_training_schema(tmp_path):
    """{lr: -1} used to pass load and `check` and fail inside the optimizer."""
    raw = tiny_plan_dict()
    raw["members"][1]["overrides"] = {"lr": -1, "batch_size": 1}
    with pytest.raises(PlanError) as caught:
        _load(tmp_path, raw)
    message = str(caught.value)
    assert "members[1] (test_resnet.t020.mixup)" in message
    assert "overrides.lr: Input should be greater than 0" in message and "overrides.batch_size" in message
    raw["members"][1]["overrides"] = {"lr": 0.01}
    plan = _load(tmp_path, raw)
    assert plan.training_config(plan.members[1]).lr == 0.01


def test_missing_data_root_names_the_params_file_given(tmp_path):
    """The data stage's message points at the file the user passed, whatever its name (it said
    <folder>/params.yaml, a file that may not exist)."""
    from ens_assets.defs.build import build_definitions

    raw = tiny_plan_dict()
    raw["data"] = {"layout": "zamba", "root": "no/such/folder", "detections": "md.json"}
    path = tmp_path / "my-camera-traps.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert load_plan(path).params_file == str(path.resolve())
    result = build_definitions(path).resolve_job_def("data_job").execute_in_process(raise_on_error=False)
    failure = next(e for e in result.all_events if e.is_step_failure)
    description = failure.step_failure_data.user_failure_data.description
    assert "data.root" in description and str(path.resolve()) in description, description
