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
