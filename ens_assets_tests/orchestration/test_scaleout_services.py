"""The scale-out stack's own lifecycle (ens_assets.scaleout_services): whatever happens to the test using it, every
process it started is stopped (with the processes they started) and its ports are free again. The engine tests
(test_scaleout_engine.py) rely on this in their fixture's `finally`; `make scaleout-down` on the state file."""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

import psutil
import pytest

from ens_assets.scaleout_services import HOST, ServiceUnavailable, Stack, main, postgres_bin_dir, redis_server_binary

pytestmark = pytest.mark.scaleout


def _started_stack(state_dir: Path) -> Stack:
    try:
        postgres_bin_dir(), redis_server_binary()
    except ServiceUnavailable as exc:
        pytest.skip(f"scale-out services not installed: {exc}")
    stack = Stack(state_dir=state_dir, params_path=state_dir / "params.yaml")
    try:
        stack.start_servers()
    except ServiceUnavailable as exc:
        stack.stop()
        pytest.skip(f"scale-out services could not start: {exc}")
    return stack


def _descendants(stack: Stack) -> list[int]:
    """Every process the stack started and every process those started (PostgreSQL's checkpointer, walwriter, ...,
    as a Celery worker has its pool processes and the code server its run workers)."""
    pids = []
    for process in stack.processes:
        leader = psutil.Process(process.pid)
        pids += [leader.pid] + [child.pid for child in leader.children(recursive=True)]
    return pids


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _port_free(port: int) -> bool:
    """Nothing listens on it: a new server could bind it (as servers do, with SO_REUSEADDR, so that connections the
    old one closed, still in TIME_WAIT, do not count)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def test_a_failing_test_still_stops_every_process_and_frees_the_ports(tmp_path: Path) -> None:
    stack = _started_stack(tmp_path / "services")
    members, ports = _descendants(stack), dict(stack.ports)
    pg_scratch = stack.pg_data_dir
    with pytest.raises(RuntimeError, match="the test failed"):
        try:  # what the engine tests' fixture does around its tests
            assert len(members) > len(stack.processes), "PostgreSQL runs background processes of its own"
            assert not _port_free(ports["postgres"]) and not _port_free(ports["redis"])
            raise RuntimeError("the test failed")
        finally:
            stack.stop()
    assert [pid for pid in members if _running(pid)] == []
    assert all(_port_free(port) for port in ports.values()), ports
    assert stack.processes == [] and (pg_scratch is None or not Path(pg_scratch).exists())
    stack.stop()  # safe to call again


def test_down_stops_what_up_started_from_its_state_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`make scaleout-down` runs in another process than `make scaleout-up`: it has only services.json."""
    stack = _started_stack(tmp_path / "services")
    members, ports = _descendants(stack), dict(stack.ports)
    try:
        assert main(["down", "--state", str(stack.state_dir)]) == 0
    finally:
        stack.stop()
    assert "stopped redis, postgres" in capsys.readouterr().out
    assert [pid for pid in members if _running(pid)] == []
    assert _port_free(ports["postgres"]) and _port_free(ports["redis"])
    assert main(["down", "--state", str(stack.state_dir)]) == 0  # nothing left: says so, still succeeds


def test_as_root_a_server_in_a_private_virtualenv_runs_from_a_copy(tmp_path: Path) -> None:
    """CI's checkout may sit in a folder only root can enter; PostgreSQL runs as `nobody` there, from a copy that
    keeps the wheel's layout (its binaries find libpq through a relative RPATH to pgserver.libs)."""
    import shutil
    import subprocess

    from ens_assets.scaleout_services import _reachable_by, _unprivileged_user

    user = _unprivileged_user()
    if user is None:
        pytest.skip("only root runs PostgreSQL as another user")
    try:
        bin_dir = postgres_bin_dir()
    except ServiceUnavailable as exc:
        pytest.skip(f"scale-out services not installed: {exc}")
    install = bin_dir.parent
    if not (install.parents[1] / f"{install.parent.name}.libs").is_dir():
        pytest.skip(f"not pgserver's wheel layout: {install}")
    private = tmp_path / "private"  # pytest's tmp folders are root's alone (0700), as such a checkout
    private.mkdir(mode=0o700)
    for folder in (install.parent.name, f"{install.parent.name}.libs"):
        shutil.copytree(install.parents[1] / folder, private / folder, symlinks=True)
    scratch = Path(tempfile.mkdtemp(prefix="ens-assets-pg-test-"))
    try:
        os.chown(scratch, user.pw_uid, user.pw_gid)
        runnable = _reachable_by(user, private / install.parent.name / install.name / "bin", scratch / "install")
        assert runnable.is_relative_to(scratch)
        version = subprocess.run([str(runnable / "initdb"), "--version"], capture_output=True, text=True, cwd="/",
                                 user=user.pw_uid, group=user.pw_gid, extra_groups=[])  # fmt: skip
        assert version.returncode == 0 and "PostgreSQL" in version.stdout, version.stderr
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
