"""The one trained project every inference test predicts with (built once per session: it trains 4 models)."""

import os

import pytest

from ens_assets_tests.inference.project import build_trained_project


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    old = os.environ.get("MLFLOW_TRACKING_URI")
    project = build_trained_project(tmp_path_factory.mktemp("predict_project"))
    yield project
    if old is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = old
