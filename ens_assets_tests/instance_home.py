"""A Dagster home for one test: a folder holding the repo's dagster.yaml (SQLite storage, the gpu pool of one),
so that pools and run records behave as on a user's instance (the in-memory instance ignores pools)."""

from __future__ import annotations

import shutil
from pathlib import Path

REPO_INSTANCE_CONFIG = Path(__file__).resolve().parents[1] / "dagster_home" / "dagster.yaml"


def make_dagster_home(root: Path) -> Path:
    """`root/dagster_home` with the repo's instance config; the caller points DAGSTER_HOME at it."""
    home = root / "dagster_home"
    home.mkdir()
    shutil.copy(REPO_INSTANCE_CONFIG, home / "dagster.yaml")
    return home
