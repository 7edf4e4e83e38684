"""atomic.replace_dir under concurrent callers, and builders that clean up after killed builds."""

import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

from ens_assets.atomic import building_dir, replace_dir

SWAPS = 120
WRITERS = 4
FILES = ("a.txt", "b.txt", "c.txt")


def _writer(target: str, writer: int, errors) -> None:
    for swap in range(SWAPS):
        try:
            with building_dir(target) as building:
                stamp = f"{writer}:{swap}"
                for name in FILES:
                    (building / name).write_text(stamp)
                replace_dir(building, target)
        except Exception as exc:  # every failure is counted, not only the first
            errors.append(f"writer {writer} swap {swap}: {type(exc).__name__}: {exc}")


def _reader(target: str, stop, problems) -> None:
    """A reader must always find the folder and whole files in it (never a missing or half-built folder)."""
    while not stop.is_set():
        for name in FILES:
            try:
                stamp = (Path(target) / name).read_text()
            except (FileNotFoundError, NotADirectoryError) as exc:
                problems.append(f"missing: {exc}")
                continue
            if stamp != "seed" and ":" not in stamp:
                problems.append(f"half-written {name}: {stamp!r}")


def test_replace_dir_survives_many_processes_swapping_at_once(tmp_path):
    target = tmp_path / "crops" / "0.05"
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager:
        errors, problems, stop = manager.list(), manager.list(), manager.Event()
        with building_dir(target) as first:
            for name in FILES:
                (first / name).write_text("seed")
            replace_dir(first, target)
        reader = ctx.Process(target=_reader, args=(str(target), stop, problems))
        reader.start()
        writers = [ctx.Process(target=_writer, args=(str(target), w, errors)) for w in range(WRITERS)]
        for p in writers:
            p.start()
        for p in writers:
            p.join(timeout=300)
        stop.set()
        reader.join(timeout=30)
        errors, problems = list(errors), list(problems)

    assert all(p.exitcode == 0 for p in writers)
    assert not errors, f"{len(errors)} of {WRITERS * SWAPS} swaps failed, e.g. {errors[:3]}"
    assert not problems, f"readers saw {len(problems)} broken states, e.g. {problems[:3]}"
    stamps = {(target / name).read_text() for name in FILES}
    assert len(stamps) == 1 and stamps != {"seed"}
    leftovers = sorted(p.name for p in target.parent.iterdir() if p.name != "0.05")
    assert not leftovers, leftovers


def test_a_build_removes_leftovers_of_killed_builds_but_not_of_running_ones(tmp_path):
    target = tmp_path / "crops" / "0.05"
    target.parent.mkdir(parents=True)
    # A build killed with SIGKILL leaves its folder behind (its process is gone).
    code = (
        "import os, sys, time; from ens_assets.atomic import building_dir\n"
        f"with building_dir({str(target)!r}) as b:\n"
        "    (b / 'half.npy').write_bytes(b'x' * 1000); print(b, flush=True); time.sleep(60)\n"
    )
    running = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    running_dir = Path(running.stdout.readline().strip())
    killed = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    killed_dir = Path(killed.stdout.readline().strip())
    killed.kill()
    killed.wait(timeout=30)
    # An unowned leftover (the old naming) older than any build still running.
    stale = target.parent / ".0.05.building-abc123"
    stale.mkdir()
    os.utime(stale, (time.time() - 7 * 3600, time.time() - 7 * 3600))
    try:
        assert killed_dir.is_dir() and running_dir.is_dir()
        with building_dir(target) as building:
            (building / "a.txt").write_text("new")
            replace_dir(building, target)
        assert not killed_dir.exists(), "the killed build's folder was kept"
        assert not stale.exists(), "an old unowned build folder was kept"
        assert running_dir.is_dir(), "a build still running lost its folder"
        assert (target / "a.txt").read_text() == "new"
    finally:
        running.kill()
        running.wait(timeout=30)
