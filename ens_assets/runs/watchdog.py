"""Runs of a killed ens-assets process free their pool slots without anyone typing a new command.

A CLI run executes in its own process, without the daemon's run monitoring: if that process is SIGKILLed its
run stays STARTED and keeps its `gpu` slot, and every other run waits on the pool forever. Each CLI process
therefore tags its runs with its host and pid and watches, every few seconds while it runs, for runs of this
host whose process is gone: it marks them failed and frees their slots, so a run blocked on the pool goes on
within seconds of the holder's death.
"""

from __future__ import annotations

import os
import socket
import threading
from typing import Callable

import dagster as dg

from ens_assets.atomic import process_alive
from ens_assets.runs.in_flight import IN_FLIGHT

LAUNCHER_TAGS = {"ens_assets/launcher": "cli", "ens_assets/host": socket.gethostname()}
PID_TAG = "ens_assets/pid"
WATCH_INTERVAL_S = 2.0


def run_tags() -> dict[str, str]:
    """Tags of a run this process executes: who launched it, on which host, in which process."""
    return {**LAUNCHER_TAGS, PID_TAG: str(os.getpid())}


def reap_runs_of_dead_processes(instance: dg.DagsterInstance, out: Callable[[str], None] = print) -> list[str]:
    """Mark this host's CLI runs whose process is gone as failed and free their concurrency slots."""
    freed = []
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=IN_FLIGHT, tags=LAUNCHER_TAGS)):
        pid = int(run.tags.get(PID_TAG, "0"))
        if pid and process_alive(pid):
            continue
        instance.report_run_failed(run, f"its ens-assets process (pid {pid}) is gone; concurrency slots freed")
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        out(f"freed the slots of run {run.run_id} (its process {pid} was killed)")
        freed.append(run.run_id)
    return freed


class RunWatchdog:
    """A daemon thread that reaps dead runs every WATCH_INTERVAL_S while this process runs jobs."""

    def __init__(self, out: Callable[[str], None] = print, interval_s: float = WATCH_INTERVAL_S):
        self.out = out
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "RunWatchdog":
        self._thread = threading.Thread(target=self._watch, name="ens-assets-run-watchdog", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _watch(self) -> None:
        instance = dg.DagsterInstance.get()  # its own instance (and storage connections) for this thread
        while not self._stop.wait(self.interval_s):
            try:
                reap_runs_of_dead_processes(instance, self.out)
            except Exception:  # noqa: BLE001 - a busy SQLite file ("database is locked"): try again next tick
                continue
