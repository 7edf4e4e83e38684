"""Scale-out on a real engine: PostgreSQL storage, a Redis broker, the code location's gRPC server, two
dagster-celery workers (queue `dagster`; queue `gpu` with concurrency 1) and the Dagster daemon, all started here on
127.0.0.1 (ens_assets.scaleout_services) and always stopped afterwards. A backfill of a tiny plan (2 members x 2
folds, 1 epoch, 16 px) runs through the Celery executor; then the nightly schedule's tick through the daemon, during
which the gpu worker is killed mid-step. Part of `make test` (skipped, saying why, when the servers are missing).

The gpu pool is given two slots here, as for two GPU cards, so that only the gpu worker's concurrency of 1 keeps
training steps apart: with ENS_ASSETS_SCALEOUT_GPU_CONCURRENCY=2 the overlap assertion fails (see deploy/README.md).
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import sys
import time
from itertools import combinations
from pathlib import Path

import pytest
import yaml

import dagster as dg
from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill
from dagster._core.remote_origin import RemoteInstigatorOrigin, RemotePartitionSetOrigin
from dagster._core.scheduler.instigation import (
    InstigatorState,
    InstigatorStatus,
    InstigatorType,
    ScheduleInstigatorData,
)
from dagster._time import get_current_timestamp

from ens_assets.defs.partitions import checkpoint_key
from ens_assets.plan import load_plan
from ens_assets.scaleout_services import ServiceUnavailable, Stack, postgres_bin_dir, redis_server_binary
from ens_assets_tests.tiny_plan import FINITE_LOSS_GATE, SHARED_PROJECT, budget, member, merged, prepare_demo_data

# The module's services start once, in the first test's setup (the backfill) and the second's (the nightly tick):
# each takes one to three minutes on a loaded 2-core machine; the default 600 s limit is per test.
pytestmark = [pytest.mark.scaleout, pytest.mark.slow, pytest.mark.timeout(900)]

GPU_CONCURRENCY_ENV = "ENS_ASSETS_SCALEOUT_GPU_CONCURRENCY"
GPU_CONCURRENCY = int(os.environ.get(GPU_CONCURRENCY_ENV, "1"))
# Longer than the steps here (a warm worker's 1-epoch step takes 2-5 s, a 12-epoch smoke step 4-10 s), short
# enough that the killed step comes back about when the replacement worker is ready
# (scaleout_services.celery_settings). A step that outlives it is handed out again and skipped as already
# successful, since one gpu worker at a time takes the copy only after it finished the original.
VISIBILITY_TIMEOUT_S = 20 if GPU_CONCURRENCY == 1 else 40  # 40 s: as the concurrency-2 demonstration ran
SMOKE_EPOCHS_OVERNIGHT = 12
# `make test` runs this module on one pytest-xdist worker beside the other's tests, some of them timing-sensitive
# (gpu pool turns, killed runs): the stack's processes let those have the CPU first.
NICENESS = 5
TICK = datetime.datetime.now(datetime.timezone.utc).replace(hour=1, minute=0, second=0, microsecond=0)
if TICK > datetime.datetime.now(datetime.timezone.utc):
    TICK -= datetime.timedelta(days=1)

PARAMS = merged(SHARED_PROJECT, {
    "crops": {"image_size": 16},
    "members": [member(0.05), member(0.2, "mixup")],
    # One-epoch fold steps take about a second: at gpu concurrency 2 (the demonstration that the overlap check
    # bites) two of them rarely meet while run workers start one after another, so there each trains for 30 s.
    "training": {"smoke": budget(1), "cv": budget(1) if GPU_CONCURRENCY == 1 else budget(1000, time_budget_s=30)},
    "promotion": FINITE_LOSS_GATE,
    # Off in code, switched on by the test as a user does in the UI. A schedule that is on in code is held by the
    # running daemon with its next tick time in memory (tomorrow 01:00), so a state written later that backdates
    # the switch-on is never looked at before then; that is why this tick was never evaluated before.
    "schedules": {"enabled": False, "timezone": "UTC", "nightly_cron": "0 1 * * *", "morning_cron": "0 7 * * *"},
})


def _progress(message: str) -> None:
    print(f"[scaleout] {message}", file=sys.stderr, flush=True)


def _repository_origin(instance: dg.DagsterInstance, timeout_s: float = 600):
    """The daemon's own origin of the code location, read off the state it writes for the default-on sensor."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
            if state.instigator_name == "ensemble_after_predictions":
                return state.origin.repository_origin
        time.sleep(0.5)
    raise AssertionError("the daemon never loaded the code location (no sensor state)")


def _add_backfill(instance: dg.DagsterInstance, repository_origin, partitions: list[str]) -> str:
    backfill_id = f"scaleout{int(time.time() * 1000)}"
    instance.add_backfill(
        PartitionBackfill(
            backfill_id=backfill_id,
            partition_set_origin=RemotePartitionSetOrigin(
                repository_origin=repository_origin, partition_set_name="checkpoints_job_partition_set"
            ),
            status=BulkActionStatus.REQUESTED,
            partition_names=partitions,
            from_failure=False,
            reexecution_steps=None,
            tags={},
            backfill_timestamp=get_current_timestamp(),
        )
    )
    return backfill_id


def _wait_for_runs(instance: dg.DagsterInstance, filters: dg.RunsFilter, count: int, timeout_s: float, stack: Stack):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        runs = instance.get_runs(filters=filters)
        if len(runs) >= count and all(r.is_finished for r in runs):
            return runs
        time.sleep(1)
    runs = instance.get_runs(filters=filters)
    logs = "\n".join(f"--- {p.name}\n" + Path(p.log).read_text(errors="replace")[-3000:] for p in stack.processes)
    raise AssertionError(f"{len(runs)}/{count} runs, statuses {[r.status.value for r in runs]}\n{logs}")


def _gpu_step_intervals(instance: dg.DagsterInstance, run_ids: list[str]) -> list[tuple[float, float, str]]:
    """(start, end, run id) of every execution of the checkpoints step on a worker, from the event log: from the
    task starting on the worker (dagster-celery's "Executing steps" engine event) to STEP_SUCCESS/FAILURE, so the
    span is the time the step held a worker slot, not only its (here very short) training."""
    intervals = []
    for run_id in run_ids:
        start = None
        for event in instance.all_logs(run_id):
            kind = event.dagster_event.event_type if event.dagster_event else None
            if event.step_key != "checkpoints" or kind is None:
                continue
            if kind == dg.DagsterEventType.ENGINE_EVENT and "Celery worker" in (event.dagster_event.engine_event_data.metadata or {}):
                # From the first worker start: a task handed out again (broker visibility timeout) starts once more
                # while the first execution still holds its slot, and must not shorten the span.
                start = event.timestamp if start is None else start
            elif kind in (dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE) and start is not None:
                intervals.append((start, event.timestamp, run_id))
                start = None
    return intervals


def _workers_of(instance: dg.DagsterInstance, run_id: str, step: str = "checkpoints") -> list[str]:
    """The Celery workers that ran `step` of the run, in order (dagster-celery's engine event names them)."""
    names = []
    for event in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        metadata = event.dagster_event.engine_event_data.metadata or {}
        if "Celery worker" in metadata and event.step_key == step:
            names.append(metadata["Celery worker"].value.split("@")[0])
    return names


def _recovery_epoch(folder: Path) -> int:
    """Epochs finished according to the step's per-epoch recovery state (-1: none yet)."""
    from ens_assets.training.checkpoint import load_recovery

    state = load_recovery(folder) if folder.exists() else None
    return int(state["next_epoch"]) if state else -1


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    try:
        postgres_bin_dir(), redis_server_binary()
    except ServiceUnavailable as exc:
        pytest.skip(f"scale-out services not installed: {exc}")
    # ENS_ASSETS_SCALEOUT_KEEP=DIR keeps the services' state and logs there to look at afterwards.
    keep = os.environ.get("ENS_ASSETS_SCALEOUT_KEEP")
    root = Path(keep) if keep else tmp_path_factory.mktemp("scaleout")
    params_path = root / "project" / "params.yaml"
    params_path.parent.mkdir(parents=True)
    params_path.write_text(yaml.safe_dump(PARAMS, sort_keys=False))
    stack = Stack(
        state_dir=root / "services", params_path=params_path,
        gpu_concurrency=GPU_CONCURRENCY, visibility_timeout_s=VISIBILITY_TIMEOUT_S, niceness=NICENESS,
    )  # fmt: skip
    saved_env = dict(os.environ)
    t0 = time.time()
    try:
        try:
            stack.start_servers()
        except ServiceUnavailable as exc:
            pytest.skip(f"scale-out services could not start: {exc}")
        os.environ.update({k: v for k, v in stack.env().items() if k != "PATH"})
        # The code server and the workers load the code while this process prepares the data; the daemon starts
        # once the backfill is requested (the backfill fixture). Nothing in this module runs on the default queue,
        # so its worker does not build the definitions before it forks (`make scaleout-up` starts a warm one).
        _progress(f"servers and Dagster's tables {time.time() - t0:.0f}s")
        stack.start_code_server()
        stack.start_default_workers(wait=False, warm_cpu=False)
        yield stack
    finally:
        # Whatever has not stopped 3 s after its stop signal is killed: a warm Celery worker's cold shutdown, or
        # the daemon finishing a sensor call into the stopping code server, would take the default 10 s.
        stack.stop(grace_s=3)
        os.environ.clear()
        os.environ.update(saved_env)


@pytest.fixture(scope="module")
def instance(stack):
    t0 = time.time()
    with dg.DagsterInstance.from_config(str(stack.dagster_home)) as instance:
        _progress(f"instance {time.time() - t0:.0f}s")
        yield instance


@pytest.fixture(scope="module")
def backfill(stack, instance):
    """Smoke checkpoints first (the cv folds' gate), in this process; then the backfill, then the daemon."""
    from ens_assets.member_runs import train_member_fold

    t0 = time.time()
    plan = load_plan(stack.params_path)
    prepare_demo_data(plan)  # what the backfill trains on; the data stage is not under test here
    _progress(f"data {time.time() - t0:.0f}s")
    for member in plan.member_keys:
        train_member_fold(plan, member, "smoke", log=lambda *_: None)
    _progress(f"smoke {time.time() - t0:.0f}s")
    # Two slots, as for two GPU cards: then only the gpu worker's concurrency keeps training steps apart.
    instance.event_log_storage.set_concurrency_slots("gpu", 2)
    partitions = [str(checkpoint_key(m, f)) for m in plan.member_keys for f in plan.fold_keys]
    # Requested before the daemon starts, its backfill daemon takes it up on its first iteration (then every 30 s).
    origin = stack.repository_origin()
    backfill_id = _add_backfill(instance, origin, partitions)
    started = time.time()
    stack.start_daemon()  # once the code server answers (it loaded the code while the data was prepared)
    _progress(f"code server, daemon started {time.time() - t0:.0f}s")
    # Steps wait on their queues until a worker takes them; a worker that cannot start fails here, with its log.
    stack.wait_for_workers()
    _progress(f"workers {time.time() - t0:.0f}s")
    runs = _wait_for_runs(instance, dg.RunsFilter(tags={"dagster/backfill": backfill_id}), len(partitions), 600, stack)
    assert _repository_origin(instance) == origin, "the daemon addresses the code location as the backfill did"
    _progress(f"backfill {time.time() - t0:.0f}s")
    return {"plan": plan, "partitions": partitions, "runs": runs, "origin": origin, "seconds": time.time() - started}


def test_backfill_materializes_every_partition_one_gpu_step_at_a_time(backfill, instance, stack) -> None:
    runs = backfill["runs"]
    assert [r.status for r in runs] == [dg.DagsterRunStatus.SUCCESS] * len(runs), [r.status for r in runs]
    materialized = instance.get_materialized_partitions(dg.AssetKey("checkpoints"))
    assert set(backfill["partitions"]) <= materialized, materialized
    assert {r.tags["dagster/partition"] for r in runs} == set(backfill["partitions"])

    intervals = _gpu_step_intervals(instance, [r.run_id for r in runs])
    assert len(intervals) == len(runs), intervals
    overlapping = [(a, b) for a, b in combinations(intervals, 2) if a[0] < b[1] and b[0] < a[1]]
    assert not overlapping, f"two training steps ran at once on the gpu queue: {overlapping}"
    for run in runs:
        assert _workers_of(instance, run.run_id) == ["gpu"], "the training step must run on the gpu worker"
        assert run.run_config == {} and instance.get_job_snapshot(run.job_snapshot_id).name == "checkpoints_job"
    assert instance.event_log_storage.get_concurrency_info("gpu").active_slot_count == 0


def test_runs_events_and_mlflow_runs_are_in_postgres(backfill, instance, stack) -> None:
    import psycopg2

    assert type(instance.run_storage).__name__ == "PostgresRunStorage"
    assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
    assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
    run_ids = [r.run_id for r in backfill["runs"]]
    with psycopg2.connect(stack.postgres_url("dagster", driver="")) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM runs WHERE run_id = ANY(%s) AND status = 'SUCCESS'", (run_ids,))
        assert cur.fetchone()[0] == len(run_ids)
        cur.execute("SELECT count(*) FROM event_logs WHERE run_id = ANY(%s) AND dagster_event_type = 'ASSET_MATERIALIZATION'", (run_ids,))
        assert cur.fetchone()[0] == len(run_ids)
    conn.close()
    with psycopg2.connect(stack.postgres_url("mlflow", driver="")) as conn, conn.cursor() as cur:
        cur.execute("SELECT value FROM tags WHERE key = 'fold'")
        folds = sorted(row[0] for row in cur.fetchall())
    conn.close()
    # The two smoke runs trained in the test process and the four cv folds trained on the gpu worker.
    assert folds == sorted(["smoke", "smoke", "0", "0", "1", "1"]), folds


@pytest.fixture(scope="module")
def nightly(backfill, instance, stack):
    """Overnight: a fold checkpoint is gone and the smoke budget was raised (both smoke checkpoints are stale);
    the nightly tick runs through the daemon (restarted after the schedule was switched on). While a smoke step trains, the gpu worker is killed by its PID and
    another gpu worker started in its place."""
    import shutil

    plan = backfill["plan"]
    member_a, member_b = plan.member_keys
    # The daemon's scheduler looks at the schedules at the start of every minute and when it starts: the daemon is
    # down overnight here and comes back once the schedule is on, so it evaluates the missed 01:00 tick at once
    # (waiting for the next minute instead cost 0-60 s).
    stack.stop("daemon", grace_s=3)
    shutil.rmtree(plan.checkpoint_dir(member_a, "1"))
    params = yaml.safe_load(stack.params_path.read_text())
    # Long enough to be killed after a few epochs (well under a second each at 16 px).
    params["training"]["smoke"] = budget(SMOKE_EPOCHS_OVERNIGHT, time_budget_s=120)
    stack.params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    plan = load_plan(stack.params_path)

    t0 = time.time()
    # The schedule was switched on before last night's 01:00: the daemon evaluates that tick when it starts.
    origin = RemoteInstigatorOrigin(repository_origin=_repository_origin(instance), instigator_name="nightly_training")
    state = InstigatorState(
        origin, InstigatorType.SCHEDULE, InstigatorStatus.RUNNING,
        ScheduleInstigatorData(plan.schedules.nightly_cron, start_timestamp=(TICK - datetime.timedelta(hours=1)).timestamp()),
    )  # fmt: skip
    # The daemon may already hold a (stopped) state for the schedule it loaded: replace it.
    if instance.get_instigator_state(origin.get_id(), origin.get_selector().get_id()) is None:
        instance.add_instigator_state(state)
    else:
        instance.update_instigator_state(state)
    stack.start_daemon()
    _progress(f"nightly_training switched on, backdated to {TICK - datetime.timedelta(hours=1)}; daemon restarted")
    recoveries = {m: plan.checkpoint_dir(m, "smoke") / "recovery" for m in plan.member_keys}
    deadline = time.time() + 600
    while True:
        epochs = {m: _recovery_epoch(folder) for m, folder in recoveries.items()}
        if max(epochs.values()) >= 2:
            break
        assert time.time() < deadline, f"no smoke step wrote two epoch checkpoints: {epochs}"
        time.sleep(0.1)
    killed_member = max(epochs, key=epochs.get)
    os.kill(stack.worker_pid("gpu"), signal.SIGKILL)
    # Its pool process dies with it (Celery sets it to get SIGKILL when its parent dies); the rest of the worker's
    # process group goes the same way, as when the machine dies: a gentler stop signal could reach the pool
    # process first and let it fail the step in an orderly way (STEP_FAILURE), which is not this fault.
    stack.kill("worker-gpu")
    killed_at = _recovery_epoch(recoveries[killed_member])
    slots_while_down = instance.event_log_storage.get_concurrency_info("gpu").active_slot_count
    _progress(f"killed the gpu worker at epoch {killed_at} of {killed_member} smoke, {time.time() - t0:.0f}s after the tick")
    # Another gpu worker (another machine, in production) picks the unfinished step up from the shared workdir.
    stack.start_worker("gpu2", "gpu", concurrency=1)
    runs = _wait_for_runs(instance, dg.RunsFilter(tags={"dagster/schedule_name": "nightly_training"}), 3, 600, stack)
    _progress(f"nightly runs done {time.time() - t0:.0f}s after the tick")
    return {
        "plan": plan, "state": state, "runs": runs, "killed_member": killed_member, "killed_at": killed_at,
        "slots_while_down": slots_while_down,
        "expected": {str(checkpoint_key(member_a, "smoke")), str(checkpoint_key(member_b, "smoke")), str(checkpoint_key(member_a, "1"))},
    }  # fmt: skip


def test_nightly_tick_through_the_daemon_queues_only_missing_or_stale_partitions(nightly, instance) -> None:
    runs = nightly["runs"]
    assert sorted(r.tags["dagster/partition"] for r in runs) == sorted(nightly["expected"])
    assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs), [r.status for r in runs]
    state = nightly["state"]
    (tick,) = instance.get_ticks(state.instigator_origin_id, state.selector_id)
    assert tick.timestamp == TICK.timestamp() and len(tick.run_ids) == 3
    materialized = instance.get_materialized_partitions(dg.AssetKey("checkpoints"))
    assert nightly["expected"] <= materialized


def test_a_killed_gpu_worker_step_resumes_on_another_worker_from_its_epoch_checkpoint(nightly, instance) -> None:
    plan, member = nightly["plan"], nightly["killed_member"]
    partition = str(checkpoint_key(member, "smoke"))
    (run,) = [r for r in nightly["runs"] if r.tags["dagster/partition"] == partition]
    assert run.status == dg.DagsterRunStatus.SUCCESS
    # The step started on the killed worker; its task went back to the gpu queue and gpu2 finished it,
    # resuming from the epoch checkpoint the first worker left in the shared workdir.
    assert _workers_of(instance, run.run_id) == ["gpu", "gpu2"]
    sidecar = json.loads((plan.checkpoint_dir(member, "smoke") / "checkpoint.json").read_text())
    assert sidecar["metrics"]["resumed_from_epoch"] >= nightly["killed_at"] >= 2, (sidecar["metrics"], nightly["killed_at"])
    assert sidecar["metrics"]["epochs_run"] == SMOKE_EPOCHS_OVERNIGHT
    assert nightly["slots_while_down"] >= 1, "the unfinished step keeps its gpu slot while no worker runs it"
    info = instance.event_log_storage.get_concurrency_info("gpu")
    assert info.active_slot_count == 0 and info.pending_step_count == 0, info
    stuck = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.QUEUED]))
    assert not stuck, [r.run_id for r in stuck]
