"""Fixtures of the data-core tests (their helpers: ens_assets_tests/data/small_datasets.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ens_assets.data.demo import generate_demo
from ens_assets_tests.data.small_datasets import SMALL_DEMO


@pytest.fixture(scope="session")
def small_demo(tmp_path_factory) -> Path:
    """A 40-image demo (64x48 frames) used as a source of real JPEGs and a valid Conser-vision layout."""
    root = tmp_path_factory.mktemp("small_demo") / "demo"
    generate_demo(root, SMALL_DEMO)
    return root
