"""String asset selections parse and resolve on the real definitions.

Guards dagster-io/dagster#27487: with antlr4-python3-runtime 4.9 (what DVC's hydra pins) dagster's
selection parser fails with `TypeError: ord() expected string of length 1`; it needs the 4.13 runtime.
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import dagster as dg
import pytest

from ens_assets.defs.build import build_definitions

REPO_ROOT = Path(__file__).resolve().parents[2]
ALL_ASSETS = {
    "source_images",
    "manifest",
    "detections",
    "crops",
    "folds",
    "checkpoints",
    "oof_predictions",
    "test_predictions",
    "ensemble",
    "ensemble_diagnostics",
}
# What the code location holds: everything upstream of the diagnostics, plus the morning report that reads them
# and the inbox batches' predictions made with the fitted ensemble.
EVERY_ASSET = ALL_ASSETS | {"morning_report", "predictions"}


@pytest.fixture(scope="module")
def defs() -> dg.Definitions:
    return build_definitions(REPO_ROOT / "params.yaml")


def _resolve(defs: dg.Definitions, selection: str) -> set[str]:
    keys = dg.AssetSelection.from_string(selection).resolve(defs.resolve_asset_graph())
    return {k.to_user_string() for k in keys}


def test_antlr4_runtime_is_the_one_dagster_parses_with() -> None:
    assert version("antlr4-python3-runtime").startswith("4.13."), (
        f"antlr4-python3-runtime {version('antlr4-python3-runtime')} is installed; dagster's selection parser needs 4.13.x. "
        'Reinstall with `pip install "antlr4-python3-runtime>=4.13,<4.14"` and keep DVC in its own venv (make dvc-env).'
    )


def test_upstream_selection_reaches_every_asset(defs: dg.Definitions) -> None:
    assert _resolve(defs, "*ensemble_diagnostics") == ALL_ASSETS
    assert _resolve(defs, "+checkpoints") == {"crops", "folds", "checkpoints"}


def test_selection_with_attributes_and_operators(defs: dg.Definitions) -> None:
    assert _resolve(defs, "group:training") == {"checkpoints", "oof_predictions", "test_predictions"}
    # In the key: syntax a bare + is unbounded and +1 is one layer (the legacy "+name" form is one layer).
    assert _resolve(defs, "key:checkpoints+") == {"checkpoints", "oof_predictions", "test_predictions", "ensemble",
                                                  "ensemble_diagnostics", "morning_report", "predictions"}
    assert _resolve(defs, "key:checkpoints+1 and not key:test_predictions") == {"checkpoints", "oof_predictions"}
    assert _resolve(defs, "1+key:checkpoints") == {"crops", "folds", "checkpoints"}
    assert _resolve(defs, "kind:mlflow") == {"checkpoints", "ensemble", "morning_report"}


def test_asset_job_defined_by_a_selection_string_resolves(defs: dg.Definitions) -> None:
    job = dg.define_asset_job("ensemble_refresh", selection="key:ensemble or key:ensemble_diagnostics")
    resolved = dg.Definitions.merge(defs, dg.Definitions(jobs=[job])).resolve_job_def("ensemble_refresh")
    assert {k.to_user_string() for k in resolved.asset_layer.executable_asset_keys} == {"ensemble", "ensemble_diagnostics"}


def test_invalid_selection_is_a_clear_dagster_error(defs: dg.Definitions) -> None:
    with pytest.raises(dg.DagsterError, match="Invalid selection string"):
        _resolve(defs, "key:checkpoints((")


@pytest.mark.slow
def test_cli_parses_a_selection_string() -> None:
    env = {**os.environ, "ENS_ASSETS_PARAMS": str(REPO_ROOT / "params.yaml")}
    cli = Path(sys.executable).with_name("dagster")
    done = subprocess.run(
        [str(cli), "asset", "list", "-m", "ens_assets.definitions", "--select", "1+key:checkpoints or key:ensemble+"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert set(done.stdout.split()) == {"crops", "folds", "checkpoints", "ensemble", "ensemble_diagnostics", "morning_report",
                                        "predictions"}
