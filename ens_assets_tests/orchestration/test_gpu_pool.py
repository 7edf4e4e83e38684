"""The `gpu` pool holds pooled steps to one at a time on a real (SQLite) instance, while CPU-only steps run beside them.

Uses small sleeping assets (pool_assets.py) instead of real training, on an instance built from the repo's
dagster_home/dagster.yaml, both within one multiprocess run and across two runs submitted together.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from itertools import combinations
from pathlib import Path

import dagster as dg
import pytest

from ens_assets_tests.instance_home import make_dagster_home
from ens_assets_tests.orchestration import pool_assets

REPO_ROOT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_S = 180


@pytest.fixture
def dagster_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = make_dagster_home(tmp_path)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    records = tmp_path / "records"
    records.mkdir()
    monkeypatch.setenv(pool_assets.RECORDS_ENV, str(records))
    return home


def _intervals(records: Path) -> list[dict]:
    found = [json.loads(p.read_text()) for p in sorted(records.glob("*.json"))]
    assert {r["name"] for r in found} == {"gpu_1", "gpu_2", "gpu_3", "cpu_1", "cpu_2"}, f"missing step records in {records}"
    return found


def _overlap(a: dict, b: dict) -> bool:
    return a["start"] < b["end"] and b["start"] < a["end"]


def _assert_pool_held(intervals: list[dict], label: str) -> list[float]:
    gpu = sorted((r for r in intervals if r["pool"] == pool_assets.GPU_POOL), key=lambda r: r["start"])
    cpu = [r for r in intervals if r["pool"] is None]
    overlapping = [(a["name"], b["name"]) for a, b in combinations(gpu, 2) if _overlap(a, b)]
    assert not overlapping, f"{label}: gpu steps ran at the same time: {overlapping}"
    assert any(_overlap(c, g) for c in cpu for g in gpu), f"{label}: no CPU step ran beside a gpu step: {intervals}"
    gaps = [later["start"] - earlier["end"] for earlier, later in zip(gpu, gpu[1:])]
    # The slot-claim backoff between one gpu step ending and the next starting (design notes: 4-6 s).
    print(f"{label}: gap between consecutive gpu steps (s): {[round(g, 2) for g in gaps]}")
    return gaps


@pytest.mark.slow
def test_gpu_steps_of_one_multiprocess_run_never_overlap(dagster_home: Path) -> None:
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 1
        assert pool_assets.execute("all_steps_job", instance)
        assert instance.event_log_storage.get_pool_limits()[0].name == pool_assets.GPU_POOL
    _assert_pool_held(_intervals(Path(os.environ[pool_assets.RECORDS_ENV])), "one run")


@pytest.mark.slow
def test_gpu_steps_of_two_runs_submitted_together_never_overlap(dagster_home: Path) -> None:
    # Create the storage and set the pool's limit explicitly first (what `dagster instance concurrency set gpu 1`
    # does once per deployment). Left to default_limit, the pool row is created lazily by whichever run claims
    # first; with two runs starting together that once let two gpu steps overlap here, and two processes
    # creating a fresh SQLite storage at once can fail ("table secondary_indexes already exists").
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        instance.event_log_storage.set_concurrency_slots(pool_assets.GPU_POOL, 1)
    # Two processes, each executing its own run against the same instance, like two launched runs.
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "ens_assets_tests.orchestration.pool_assets", job],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for job in ("first_run_job", "second_run_job")
    ]
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=RUN_TIMEOUT_S)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    for proc, out in zip(procs, outputs):
        assert proc.returncode == 0, f"run {proc.args[-1]} failed:\n{out[-4000:]}"
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        runs = instance.get_runs()
        assert len(runs) == 2 and all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
    _assert_pool_held(_intervals(Path(os.environ[pool_assets.RECORDS_ENV])), "two runs")


def test_project_checkpoints_asset_is_in_the_gpu_pool() -> None:
    from ens_assets.defs.build import build_definitions

    defs = build_definitions(REPO_ROOT / "params.yaml")
    checkpoints = defs.resolve_assets_def("checkpoints")
    assert checkpoints.op.pool == "gpu"
    # Training and the inbox's batch predictions take turns on the gpu slot; data and ensemble steps run beside them.
    pooled = {a.key.to_user_string() for a in defs.resolve_asset_graph().assets_defs if a.op.pool}
    assert pooled == {"checkpoints", "predictions"}
