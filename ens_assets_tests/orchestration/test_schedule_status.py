"""schedules.enabled in params.yaml sets whether the nightly and morning schedules start running."""

import pytest
import yaml

import dagster as dg

from ens_assets.defs.build import build_definitions


@pytest.mark.parametrize("enabled, status", [(True, dg.DefaultScheduleStatus.RUNNING), (False, dg.DefaultScheduleStatus.STOPPED)])
def test_schedules_enabled_sets_their_default_status(tiny_params, tmp_path, enabled, status):
    raw = yaml.safe_load(tiny_params.read_text())
    raw["schedules"] = {"enabled": enabled}
    raw["data"]["root"] = str(tiny_params.parent / raw["data"]["root"])
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    schedules = {s.name: s.default_status for s in build_definitions(params).schedules}
    assert schedules == {"nightly_training": status, "morning_predictions": status}
