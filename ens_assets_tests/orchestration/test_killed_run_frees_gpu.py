"""A training run killed with SIGKILL keeps its gpu slot; the next ens-assets command frees it and goes on."""

import copy
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

import dagster as dg

from ens_assets.defs.schedules import IN_FLIGHT
from ens_assets_tests.test_pipeline import PARAMS

REPO = Path(__file__).resolve().parents[2]


def _cli(params: Path, *args: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-W", "ignore", "-m", "ens_assets.cli", "--params", str(params), *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def test_killed_training_run_releases_the_gpu_slot(tmp_path):
    params = copy.deepcopy(PARAMS)
    params["members"] = params["members"][:1]
    params["training"]["smoke"] = {"epochs": 30, "time_budget_s": 120, "patience": 30}
    params_path = tmp_path / "params.yaml"
    params_path.write_text(yaml.safe_dump(params))
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    env = {**os.environ, "DAGSTER_HOME": str(home), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}

    for stage in ("data", "crops"):
        assert _cli(params_path, "materialize", stage, env=env).wait(timeout=300) == 0

    trainer = _cli(params_path, "materialize", "train", env=env)
    instance = dg.DagsterInstance.from_config(str(home))
    deadline = time.time() + 240
    while time.time() < deadline:
        if instance.event_log_storage.get_concurrency_info("gpu").active_slot_count:
            break
        assert trainer.poll() is None, trainer.stdout.read()
        time.sleep(0.5)
    else:
        raise AssertionError("the training step never claimed the gpu slot")
    trainer.send_signal(signal.SIGKILL)
    trainer.wait(timeout=30)
    assert instance.event_log_storage.get_concurrency_info("gpu").active_slot_count == 1, "the dead run still holds it"

    again = _cli(params_path, "materialize", "train", env=env)
    output, _ = again.communicate(timeout=300)
    assert again.returncode == 0, output
    assert "freed the slots of run" in output
    assert instance.event_log_storage.get_concurrency_info("gpu").active_slot_count == 0
    stuck = instance.get_runs(filters=dg.RunsFilter(statuses=IN_FLIGHT))
    assert not stuck
