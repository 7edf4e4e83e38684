"""The Dagster UI serves the project: start dagster-webserver on the repo's workspace.yaml (loopback only)
and check over its GraphQL endpoint that assets, partitions, checks, the gpu pool and schedules are there."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from ens_assets.plan import SMOKE_FOLD, load_plan

from ens_assets_tests.instance_home import make_dagster_home
from ens_assets_tests.orchestration.test_selection import EVERY_ASSET

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 150
STOP_TIMEOUT_S = 20

EXPECTED_CHECKS = {
    "folds": "folds_keep_groups_together",
    "crops": "every_image_accounted_for",
    "checkpoints": "smoke_gate",
    "oof_predictions": "oof_covers_each_training_image_once",
}

UI_QUERY = """
{
  workspaceOrError { ... on Workspace { locationEntries { name locationOrLoadError {
      __typename ... on PythonError { message } } } } }
  assetNodes {
    assetKey { path }
    pools
    partitionKeysByDimension { name partitionKeys }
    assetChecksOrError { __typename ... on AssetChecks { checks { name blocking } } }
  }
  instance { poolConfig { defaultPoolLimit poolGranularity } }
  repositoriesOrError { ... on RepositoryConnection { nodes { schedules { name cronSchedule } sensors { name } } } }
}
"""


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    """Stop the webserver and the code server it spawned (its own process group, started below)."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=STOP_TIMEOUT_S)


@pytest.fixture(scope="module")
def webserver(tiny_params: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home = make_dagster_home(tmp_path_factory.mktemp("webserver"))
    log_path = home / "webserver.log"
    port = _free_loopback_port()
    url = f"http://127.0.0.1:{port}"
    cli = Path(sys.executable).with_name("dagster-webserver")
    env = {**os.environ, "DAGSTER_HOME": str(home), "ENS_ASSETS_PARAMS": str(tiny_params)}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(cli), "-w", str(REPO_ROOT / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"dagster-webserver exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(f"{url}/server_info", timeout=5) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"dagster-webserver did not answer /server_info in {START_TIMEOUT_S}s:\n{log_path.read_text()[-4000:]}")
            time.sleep(1)
        yield url
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def ui(webserver: str) -> dict:
    request = urllib.request.Request(
        f"{webserver}/graphql",
        data=json.dumps({"query": UI_QUERY}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        payload = json.loads(response.read())
    assert "errors" not in payload, payload["errors"]
    return payload["data"]


@pytest.fixture(scope="module")
def nodes(ui: dict) -> dict[str, dict]:
    return {"/".join(node["assetKey"]["path"]): node for node in ui["assetNodes"]}


@pytest.mark.slow
def test_code_location_loads(ui: dict) -> None:
    entries = ui["workspaceOrError"]["locationEntries"]
    assert [e["name"] for e in entries] == ["ens_assets.definitions"]
    assert entries[0]["locationOrLoadError"]["__typename"] == "RepositoryLocation", entries[0]["locationOrLoadError"]


@pytest.mark.slow
def test_every_asset_is_listed(nodes: dict[str, dict]) -> None:
    assert set(nodes) == EVERY_ASSET


@pytest.mark.slow
def test_partitions_come_from_the_plan(nodes: dict[str, dict], tiny_params: Path) -> None:
    plan = load_plan(tiny_params)

    def dims(asset: str) -> dict[str, list[str]]:
        return {d["name"]: d["partitionKeys"] for d in nodes[asset]["partitionKeysByDimension"]}

    assert dims("crops") == {"default": plan.threshold_keys}
    assert dims("checkpoints") == {"member": plan.member_keys, "fold": [SMOKE_FOLD, *plan.fold_keys]}
    assert dims("oof_predictions") == {"default": plan.member_keys}
    assert dims("ensemble") == {}


@pytest.mark.slow
def test_asset_checks_are_attached(nodes: dict[str, dict]) -> None:
    found = {
        asset: {c["name"] for c in node["assetChecksOrError"].get("checks", [])}
        for asset, node in nodes.items()
        if node["assetChecksOrError"].get("checks")
    }
    assert found == {asset: {check} for asset, check in EXPECTED_CHECKS.items()}


@pytest.mark.slow
def test_checkpoints_run_in_the_gpu_pool_of_one(nodes: dict[str, dict], ui: dict) -> None:
    # Training and the inbox batch predictions share the one gpu slot.
    assert {asset for asset, node in nodes.items() if node["pools"]} == {"checkpoints", "predictions"}
    assert nodes["checkpoints"]["pools"] == ["gpu"]
    assert ui["instance"]["poolConfig"] == {"defaultPoolLimit": 1, "poolGranularity": "op"}


@pytest.mark.slow
def test_schedules_and_sensor_are_there(ui: dict, tiny_params: Path) -> None:
    plan = load_plan(tiny_params)
    (repo,) = ui["repositoriesOrError"]["nodes"]
    assert {s["name"]: s["cronSchedule"] for s in repo["schedules"]} == {
        "nightly_training": plan.schedules.nightly_cron,
        "morning_predictions": plan.schedules.morning_cron,
    }
    assert {s["name"] for s in repo["sensors"]} == {"ensemble_after_predictions", "promote_auto_members", "inbox_sensor"}
