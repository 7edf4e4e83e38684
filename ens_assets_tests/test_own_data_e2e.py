"""A user's own camera-trap folder through the CLI, end to end: the repository's default plan (members,
thresholds, folds, recipes, ensemble) with only the data section pointed at the folder and a tiny-plan
override (small crops, one epoch) so it fits CI time. Each layout must exit 0 and leave an ensemble.

One Dagster instance and one MLflow store serve every layout (as on a user's machine with several
projects); each layout has its own workdir.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import polars as pl
import pytest
import yaml

from ens_assets.cli import main
from ens_assets_tests import own_data

REPO = Path(__file__).resolve().parent.parent

# What shrinks the default plan: sizes and budgets only; members, thresholds, folds and recipes stay the default's.
TINY_OVERRIDE = {
    "crops": {"image_size": 16, "workers": 1},
    "training": {"batch_size": 16, "smoke": {"epochs": 1, "time_budget_s": 60, "patience": 1},
                 "cv": {"epochs": 1, "time_budget_s": 60, "patience": 1}},
    # One epoch on a few dozen frames proves the plumbing, not the learning: the gate asks only for finite losses.
    "promotion": {"min_accuracy_over_chance": 0.0, "require_every_class_predicted": False, "require_loss_decrease": False},
    "ensemble": {"greedy_rounds": 5},
}


def _merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = _merge(out.get(key, {}), value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def tiny_default_params(folder: Path, data: dict, **extra) -> Path:
    """params.yaml in `folder`: the repository's default plan with `data` replaced and the tiny override."""
    default = yaml.safe_load((REPO / "params.yaml").read_text())
    params = _merge(default, TINY_OVERRIDE)
    params["data"] = data
    params["workdir"] = "work"
    params = _merge(params, extra)
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("own_data")
    home = root / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DAGSTER_HOME", str(home))
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        yield root


def _run_all(params: Path, capsys) -> tuple[int, str]:
    code = main(["--params", str(params), "materialize", "all"])
    return code, capsys.readouterr().out


def _assert_ensemble(params: Path, code: int, out: str) -> dict:
    assert code == 0, out[-4000:]
    work = params.parent / "work"
    spec = json.loads((work / "ensemble" / "spec.json").read_text())
    assert spec["members"], spec
    assert (work / "diagnostics" / "roadmap.md").read_text().strip()
    scores = pl.read_parquet(work / "ensemble" / "scores.parquet")
    assert spec["method"] in scores["name"].to_list()
    return spec


def test_zamba_with_sites_and_no_test_split(cli_env, capsys):
    """Every image labelled, a site column, test_site_fraction 0: the ensemble stands on OOF alone."""
    project = cli_env / "zamba_sites"
    images = project / "images"
    frames = own_data.write_images(images, sites=4)
    own_data.write_zamba_csv(images, frames, with_site=True)
    own_data.write_megadetector_json(images / "md.json", frames)
    params = tiny_default_params(project, {"layout": "zamba", "root": "images", "detections": "images/md.json"})
    code, out = _run_all(params, capsys)
    spec = _assert_ensemble(params, code, out)
    assert spec["test_images"] == 0
    work = params.parent / "work"
    for member in spec["members"]:
        assert pl.read_parquet(work / "test_predictions" / f"{member}.parquet").height == 0
    assert pl.read_csv(work / "ensemble" / "submission.csv").height == 0
    assert "no test split" in out
    metrics = json.loads((work / "ensemble" / "metrics.json").read_text())
    assert metrics["test_split"]["images"] == 0
