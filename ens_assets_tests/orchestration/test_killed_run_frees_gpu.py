"""A training run killed with SIGKILL would keep its gpu slot forever (no daemon watches CLI runs): a second run
already waiting on the pool notices the dead holder within seconds (the CLI's run watchdog), frees the slot and
finishes, without anyone typing a new command."""

import copy
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import dagster as dg

from ens_assets.runs.in_flight import IN_FLIGHT
from ens_assets_tests.test_pipeline import PARAMS

REPO = Path(__file__).resolve().parents[2]


def _cli(params: Path, *args: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-W", "ignore", "-m", "ens_assets.cli", "--params", str(params), *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


@pytest.mark.slow
@pytest.mark.timeout(900)  # four CLI processes, two of them training, on two cores
def test_a_waiting_run_frees_the_slot_of_a_killed_holder_and_finishes(tmp_path):
    params = copy.deepcopy(PARAMS)
    params["members"] = params["members"][:1]
    params["crops"]["thresholds"] = [0.05]
    params["data"]["demo"].update(train_images_per_class=6, test_images_per_class=2, train_sites=4, test_sites=2)
    # Long enough (time-boxed) that the holder still trains when the second run has started and blocks.
    params["training"]["smoke"] = {"epochs": 30, "time_budget_s": 45, "patience": 30}
    params_path = tmp_path / "params.yaml"
    params_path.write_text(yaml.safe_dump(params))
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    env = {**os.environ, "DAGSTER_HOME": str(home), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}

    for stage in ("data", "crops"):
        assert _cli(params_path, "materialize", stage, env=env).wait(timeout=300) == 0

    holder = _cli(params_path, "materialize", "train", env=env)
    instance = dg.DagsterInstance.from_config(str(home))
    deadline = time.time() + 240
    while not instance.event_log_storage.get_concurrency_info("gpu").active_slot_count:
        assert time.time() < deadline, "the training step never claimed the gpu slot"
        assert holder.poll() is None, holder.stdout.read()
        time.sleep(0.5)
    waiting = _cli(params_path, "materialize", "train", env=env)
    # The second run is started and blocked on the pool (two in-flight runs, one slot taken) before the kill.
    while len(instance.get_runs(filters=dg.RunsFilter(statuses=IN_FLIGHT))) < 2:
        assert time.time() < deadline, "the second training run never started"
        assert waiting.poll() is None, waiting.stdout.read()
        time.sleep(0.5)
    time.sleep(3)
    assert instance.event_log_storage.get_concurrency_info("gpu").active_slot_count == 1
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)

    output, _ = waiting.communicate(timeout=400)
    assert waiting.returncode == 0, output
    assert "freed the slots of run" in output, output
    assert "[ok] checkpoint" in output
    assert instance.event_log_storage.get_concurrency_info("gpu").active_slot_count == 0
    stuck = instance.get_runs(filters=dg.RunsFilter(statuses=IN_FLIGHT))
    assert not stuck
    killed = [r for r in instance.get_runs() if r.status == dg.DagsterRunStatus.FAILURE]
    assert len(killed) == 1 and "is gone" in str(instance.all_logs(killed[0].run_id)[-1].message)
