"""DVC overhead on an up-to-date pipeline: a no-op `dvc repro` vs `dvc status`, same sandbox, same run.

Run: .venv/bin/python -m bench.bench_dvc [--repeats 5] [--fresh]
The sandbox (a git repo with this repo's dvc.yaml, ens_assets/ and the tiny test plan) is reproduced
once into .bench/dvc-sandbox and reused on later runs (--fresh rebuilds it). A no-op repro must hash
every stage's deps and outs and re-read params, as `dvc status` does; the ratio says what repro adds
on top (stage collection, lock checks). Prints medians in seconds and the ratio.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path

from ens_assets_tests.orchestration.dvc_sandbox import REPO, DvcSandbox, dvc_binary

SANDBOX = REPO / ".bench" / "dvc-sandbox"


def _reproduced_sandbox(fresh: bool) -> DvcSandbox:
    dvc = dvc_binary()
    if dvc is None:
        raise SystemExit("no dvc binary: run `make dvc-env` (creates .venv-dvc/bin/dvc) or set ENS_ASSETS_DVC")
    if fresh or not (SANDBOX / "dvc.lock").is_file():
        shutil.rmtree(SANDBOX, ignore_errors=True)
        sandbox = DvcSandbox(SANDBOX, dvc)
        started = time.perf_counter()
        print("reproducing the tiny pipeline once (trains 6 tiny checkpoints)...", flush=True)
        sandbox.run_dvc("repro")
        print(f"  first dvc repro: {time.perf_counter() - started:.1f}s")
        return sandbox
    return DvcSandbox.reuse(SANDBOX, dvc)


def _median_seconds(sandbox: DvcSandbox, args: tuple[str, ...], repeats: int, expect: str) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        done = sandbox.run_dvc(*args)
        times.append(time.perf_counter() - started)
        if expect not in done.stdout:
            raise SystemExit(f"`dvc {' '.join(args)}` did work on an up-to-date pipeline:\n{done.stdout}")
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--fresh", action="store_true", help="rebuild and reproduce the sandbox first")
    args = parser.parse_args(argv)

    sandbox = _reproduced_sandbox(args.fresh)
    sandbox.run_dvc("status")  # warm the file-hash state db and the OS cache before timing either command
    status_s = _median_seconds(sandbox, ("status",), args.repeats, "up to date")
    repro_s = _median_seconds(sandbox, ("repro",), args.repeats, "Data and pipelines are up to date")
    print(f"dvc status (baseline), 5 stages up to date: {status_s:.2f}s median of {args.repeats}")
    print(f"dvc repro, no-op:                           {repro_s:.2f}s median of {args.repeats}")
    print(f"ratio no-op repro / status:                 {repro_s / status_s:.2f}x")


if __name__ == "__main__":
    main()
