"""The project's own training partitions, launched together as separate runs on a real SQLite instance with
the multiprocess executor: no two `checkpoints` steps overlap, while a crops (CPU-only) step runs beside them."""

import copy
import os
import shutil
import subprocess
import sys
import time
from itertools import combinations
from pathlib import Path

import pytest
import yaml

import dagster as dg

from ens_assets.cli import StageRunner, _instance
from ens_assets.defs.partitions import checkpoint_key
from ens_assets_tests.test_pipeline import PARAMS

REPO = Path(__file__).resolve().parents[2]


def _step_intervals(instance: dg.DagsterInstance, run_id: str) -> dict[str, tuple[float, float]]:
    events = instance.all_logs(
        run_id, of_type={dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE}
    )
    starts, ends = {}, {}
    for event in events:
        kind = event.dagster_event.event_type
        (starts if kind == dg.DagsterEventType.STEP_START else ends)[event.step_key] = event.timestamp
    return {step: (starts[step], ends[step]) for step in starts if step in ends}


@pytest.mark.slow
def test_training_partitions_launched_together_take_turns_on_the_gpu(tmp_path, monkeypatch):
    params = copy.deepcopy(PARAMS)
    params["members"] = params["members"][:2] + [{**params["members"][0], "recipe": "mixup"}]
    # Long enough that a crops run launched once training holds the gpu (about 15 s to start its step
    # process here) still finds a training step running.
    params["training"]["smoke"] = {"epochs": 40, "time_budget_s": 60, "patience": 40}
    params_path = tmp_path / "params.yaml"
    params_path.write_text(yaml.safe_dump(params))
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("ENS_ASSETS_PARAMS", str(params_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")

    runner = StageRunner(params_path, out=lambda *_: None)  # also sets the gpu pool's limit on the instance
    runner.data()
    runner.crops()
    assert not runner.failures

    def launch(job: str, partition: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-W", "ignore", "-m", "ens_assets_tests.orchestration.project_job", job, partition],
            env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )

    launches = [("checkpoints_job", str(checkpoint_key(m, "smoke"))) for m in runner.plan.member_keys]
    procs = [launch(job, partition) for job, partition in launches]
    # Once training holds the gpu, a CPU-only run (rebuilding one threshold's crops) must still get through.
    deadline = time.time() + 240
    while not runner.instance.event_log_storage.get_concurrency_info("gpu").active_slot_count:
        assert time.time() < deadline and all(p.poll() is None for p in procs), "no training step claimed the gpu"
        time.sleep(0.2)
    launches.append(("crops_job", runner.plan.threshold_keys[0]))
    procs.append(launch(*launches[-1]))
    outputs = [p.communicate(timeout=420)[0] for p in procs]
    run_ids = [out.strip().splitlines()[-1] for out in outputs]

    instance = _instance()
    gpu, cpu = [], []
    for (job, _), run_id, proc, out in zip(launches, run_ids, procs, outputs):
        assert proc.returncode == 0, out
        intervals = _step_intervals(instance, run_id)
        (gpu if job == "checkpoints_job" else cpu).append(intervals["checkpoints" if job == "checkpoints_job" else "crops"])
    assert len(gpu) == 3
    overlapping = [(a, b) for a, b in combinations(gpu, 2) if a[0] < b[1] and b[0] < a[1]]
    assert not overlapping, f"two training steps held the gpu at once: {overlapping}"
    assert any(c[0] < g[1] and g[0] < c[1] for c in cpu for g in gpu), f"crops never ran beside training: {cpu} {gpu}"
