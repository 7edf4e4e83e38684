"""The project's own training partitions, launched together as separate runs on a real SQLite instance with
the multiprocess executor: no two `checkpoints` steps overlap, while a crops (CPU-only) step runs beside them."""

import os
import subprocess
import sys
import time
from itertools import combinations

import pytest
import dagster as dg

from ens_assets.cli import StageRunner, _instance
from ens_assets.defs.partitions import checkpoint_key
from ens_assets_tests.instance_home import make_dagster_home
from ens_assets_tests.tiny_plan import budget, member, tiny_plan, write_params
from ens_assets_tests.tracking_store import new_tracking_store

# Each training step trains this long (its time budget; the epochs never run out first); with loading, validation
# and logging a step holds the gpu for ~25-30 s on 2 cores, the crops run starts its step ~16 s after the first.
STEP_SECONDS = 12


def _step_intervals(instance: dg.DagsterInstance, run_id: str) -> dict[str, tuple[float, float]]:
    events = instance.all_logs(
        run_id, of_type={dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE}
    )
    starts, ends = {}, {}
    for event in events:
        kind = event.dagster_event.event_type
        (starts if kind == dg.DagsterEventType.STEP_START else ends)[event.step_key] = event.timestamp
    return {step: (starts[step], ends[step]) for step in starts if step in ends}


def _outputs(procs: list[subprocess.Popen], timeout_s: float) -> list[str]:
    """Every process's output once all have exited; past the deadline, all are killed and their output tails shown."""
    deadline = time.time() + timeout_s
    try:
        return [p.communicate(timeout=max(1.0, deadline - time.time()))[0] for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        tails = "\n".join(f"--- {' '.join(p.args[-2:])} ---\n{(p.communicate(timeout=30)[0] or '')[-3000:]}" for p in procs)
        raise AssertionError(f"the runs did not all finish within {timeout_s}s:\n{tails}") from None


@pytest.mark.slow
def test_training_partitions_launched_together_take_turns_on_the_gpu(tmp_path, monkeypatch):
    # A crops run launched once training holds the gpu takes about 20 s to start its step process on 2 cores.
    # A step bounded by epochs can end before that on a quiet machine (CI: 12 epochs took 11-21 s and the crops
    # step ran in the ~19 s gap between two training steps, proving nothing), so a time budget bounds each step.
    params = tiny_plan(
        data={"demo": {"seed": 3, "train_images_per_class": 12, "test_images_per_class": 3}},
        training={"lr": 0.003, "warmup_epochs": None, "smoke": budget(10_000, time_budget_s=STEP_SECONDS)},
        members=[member(0.05), member(0.2, "mixup")],
    )
    params_path = write_params(tmp_path, params)
    monkeypatch.setenv("DAGSTER_HOME", str(make_dagster_home(tmp_path)))
    monkeypatch.setenv("ENS_ASSETS_PARAMS", str(params_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", new_tracking_store(tmp_path / "mlflow.db"))

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
    outputs = _outputs(procs, timeout_s=420)
    run_ids = [out.strip().splitlines()[-1] for out in outputs]

    instance = _instance()
    gpu, cpu = [], []
    for (job, _), run_id, proc, out in zip(launches, run_ids, procs, outputs):
        assert proc.returncode == 0, out
        intervals = _step_intervals(instance, run_id)
        (gpu if job == "checkpoints_job" else cpu).append(intervals["checkpoints" if job == "checkpoints_job" else "crops"])
    first = min(start for start, _ in gpu + cpu)
    print("gpu steps (s):", [(round(a - first, 1), round(b - first, 1)) for a, b in sorted(gpu)],
          "crops step (s):", [(round(a - first, 1), round(b - first, 1)) for a, b in cpu])
    assert len(gpu) == 2
    overlapping = [(a, b) for a, b in combinations(gpu, 2) if a[0] < b[1] and b[0] < a[1]]
    assert not overlapping, f"two training steps held the gpu at once: {overlapping}"
    assert any(c[0] < g[1] and g[0] < c[1] for c in cpu for g in gpu), f"crops never ran beside training: {cpu} {gpu}"
