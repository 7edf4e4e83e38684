"""The one trained project every inference test predicts with (built once per session: it trains 4 models)."""

import pytest

from ens_assets_tests.inference.project import build_trained_project


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    return build_trained_project(tmp_path_factory.mktemp("predict_project"))


@pytest.fixture(autouse=True)
def _project_store(trained, monkeypatch):
    """Each inference test sees the project's own MLflow store, never one another test left in the environment."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained.tracking_uri)
