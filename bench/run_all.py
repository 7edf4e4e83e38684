"""Run every benchmark in bench/ in turn (make bench). Each prints ratios against its own baseline."""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time

import bench


def main() -> int:
    names = sorted(m.name for m in pkgutil.iter_modules(bench.__path__) if m.name.startswith("bench_"))
    failed = []
    for name in names:
        print(f"\n===== {name} =====", flush=True)
        started = time.perf_counter()
        try:
            importlib.import_module(f"bench.{name}").main()
        except Exception as exc:  # one broken bench must not hide the others' numbers
            print(f"{name} failed: {exc!r}")
            failed.append(name)
        print(f"({name}: {time.perf_counter() - started:.0f}s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
