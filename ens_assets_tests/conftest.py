"""Session-wide test settings: never reach a model hub, keep every store inside tmp dirs."""

import os
from pathlib import Path

import pytest

from ens_assets_tests.tiny_plan import SHARED_PROJECT, prepare_demo_data, write_params

# Tests must never hit a hub: timm/huggingface downloads fail fast instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TIMM_USE_OLD_CACHE", "0")
# One torch thread per process (inherited by the CLI, Dagster step and dvc stage subprocesses): these models are
# tiny, and two OpenMP threads spinning for each other beside the tests' other processes made training several
# times slower on 2 cores (training/test_loop.py: 45 s of CPU with two threads, 12 s with one, same machine).
os.environ.setdefault("OMP_NUM_THREADS", "1")


# --- shared tiny project: demo data -> manifest -> detections -> crops -> folds ------------------
@pytest.fixture(scope="session")
def tiny_params(tmp_path_factory) -> Path:
    """A params.yaml for a tiny demo project in a session tmp dir (load with ens_assets.plan.load_plan)."""
    project = tmp_path_factory.mktemp("tiny_project")
    return write_params(project, SHARED_PROJECT)


@pytest.fixture(scope="session")
def tiny_data(tiny_params) -> dict:
    """The tiny project's data stage run with the data core, written at the plan's conventional paths."""
    from ens_assets.data.crops import open_crop_cache
    from ens_assets.plan import load_plan

    plan = load_plan(tiny_params)
    made = prepare_demo_data(plan)
    return {
        "plan": plan,
        "params": tiny_params,
        **made,
        "crops": {key: open_crop_cache(plan.crops_dir(key)) for key in plan.threshold_keys},
    }


# --- the order files are handed to the xdist workers ------------------------------------------------------
# `make test` runs `pytest -n 2 --dist loadfile --no-loadscope-reorder`: whole files, handed out in the order below
# as workers free up. xdist's default reorder sorts files by their number of tests, which sent the few-test files
# that run for minutes (one end-to-end run each) last, where one worker ran them alone while the other sat idle.
# Longest first instead: the scale-out suite (marked scaleout), then these files, longest first as CI timed them
# (--durations, 2 workers), then the other files with slow tests, then the rest in collection order. A file left
# off this list only costs wall time, never a test.
LONGEST_FILES = (
    "test_own_data_e2e.py",
    "orchestration/test_gpu_pool_real_assets.py",
    "orchestration/test_dvc.py",
    "test_pipeline.py",
    "test_morning_loop.py",
    "orchestration/test_killed_run_frees_gpu.py",
    "test_code_version.py",
    "orchestration/test_cli_failures.py",
    "orchestration/test_gpu_pool.py",
)


def _file_rank(items: list) -> int:
    here = Path(__file__).parent
    path = items[0].path.relative_to(here).as_posix() if items[0].path.is_relative_to(here) else str(items[0].path)
    if any(item.get_closest_marker("scaleout") for item in items):
        return 0
    if path in LONGEST_FILES:
        return 1 + LONGEST_FILES.index(path)
    return 1 + len(LONGEST_FILES) + (0 if any(item.get_closest_marker("slow") for item in items) else 1)


def pytest_collection_modifyitems(config, items):
    by_file: dict[Path, list] = {}
    for item in items:
        by_file.setdefault(item.path, []).append(item)
    files = sorted(by_file.values(), key=_file_rank)  # stable: collection order within a rank, tests in file order
    items[:] = [item for file_items in files for item in file_items]
