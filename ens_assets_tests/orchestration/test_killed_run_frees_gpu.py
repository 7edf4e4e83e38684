"""A training run killed with SIGKILL would keep its gpu slot forever (no daemon watches CLI runs): a second run
already waiting on the pool notices the dead holder within seconds (the CLI's run watchdog), frees the slot and
finishes, without anyone typing a new command."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import dagster as dg

from ens_assets.cli import StageRunner
from ens_assets.runs.in_flight import IN_FLIGHT
from ens_assets_tests.instance_home import make_dagster_home
from ens_assets_tests.tiny_plan import FINITE_LOSS_GATE, budget, member, merged, tiny_plan, write_params
from ens_assets_tests.tracking_store import new_tracking_store


def _cli(params: Path, *args: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-W", "ignore", "-m", "ens_assets.cli", "--params", str(params), *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


@pytest.mark.slow
@pytest.mark.timeout(900)  # four CLI processes, two of them training, on two cores
def test_a_waiting_run_frees_the_slot_of_a_killed_holder_and_finishes(tmp_path, monkeypatch):
    # The holder's plan would train for ten minutes (it is killed long before); the waiting run, started with a
    # copy of the plan whose budget is two epochs, trains the same partition afresh once it has freed the slot.
    params = tiny_plan(
        data={"demo": {"seed": 3, "train_images_per_class": 6, "test_images_per_class": 2, "train_sites": 4}},
        crops={"thresholds": [0.05]},
        training={"lr": 0.003, "warmup_epochs": None, "smoke": budget(2)},
        members=[member(0.05, stage="smoke")],  # one partition: the one the holder holds is the one the waiting run trains
        promotion=FINITE_LOSS_GATE,
    )
    params_path = write_params(tmp_path, params)
    holder_params = write_params(tmp_path, merged(params, {"training": {"smoke": budget(100_000, time_budget_s=600)}}),
                                 "holder_params.yaml")
    home = make_dagster_home(tmp_path)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", new_tracking_store(tmp_path / "mlflow.db"))
    env = os.environ.copy()

    # Data and crops in this process (not under test here); the two training runs are CLI processes.
    assert StageRunner(params_path, out=lambda *_: None).run(("data", "crops")) == 0

    holder = _cli(holder_params, "materialize", "train", env=env)
    instance = dg.DagsterInstance.from_config(str(home))
    deadline = time.time() + 240
    while not instance.event_log_storage.get_concurrency_info("gpu").active_slot_count:
        assert time.time() < deadline, "the training step never claimed the gpu slot"
        assert holder.poll() is None, holder.stdout.read()
        time.sleep(0.5)
    claimed = time.time()
    waiting = _cli(params_path, "materialize", "train", env=env)
    # The second run is started and blocked on the pool (two in-flight runs, one slot taken) before the kill.
    while len(instance.get_runs(filters=dg.RunsFilter(statuses=IN_FLIGHT))) < 2:
        assert time.time() < deadline, "the second training run never started"
        assert waiting.poll() is None, waiting.stdout.read()
        time.sleep(0.5)
    time.sleep(3)
    assert instance.event_log_storage.get_concurrency_info("gpu").active_slot_count == 1
    print(f"killing the holder {time.time() - claimed:.1f}s after it claimed the gpu")
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
