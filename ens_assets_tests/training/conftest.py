"""Fixtures of the training tests (their helpers: ens_assets_tests/training/tiny_project.py)."""

from __future__ import annotations

import pytest

from ens_assets_tests.tracking_store import new_tracking_store
from ens_assets_tests.training.tiny_project import copy_tiny_project


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch) -> str:
    uri = new_tracking_store(tmp_path / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture(scope="module")
def trained_project(tiny_data, tmp_path_factory):
    """A private copy of the tiny demo whose cv member has every fold trained once (read-only for tests)."""
    from ens_assets.member_runs import train_member_fold

    base = tmp_path_factory.mktemp("trained")
    uri = new_tracking_store(base / "mlflow.db")
    patch = pytest.MonkeyPatch()
    patch.setenv("MLFLOW_TRACKING_URI", uri)
    plan = copy_tiny_project(tiny_data, base)
    member = plan.members[0].key
    results = [train_member_fold(plan, member, fold, log=lambda _: None) for fold in plan.fold_keys]
    yield plan, uri, results
    patch.undo()
