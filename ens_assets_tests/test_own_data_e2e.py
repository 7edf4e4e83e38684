"""A user's own camera-trap folder through the CLI, end to end: the repository's default plan (members,
thresholds, folds, recipes, ensemble) with only the data section pointed at the folder and a tiny-plan
override (small crops, one epoch) so it fits CI time. Each layout must exit 0 and leave an ensemble.

Every default member runs on a folder without detections (zamba, no sites: the members lose their thresholds)
and on COCO Camera Traps with held-out sites (test scores for every member, the pretrained ones included). The
other layouts differ from those only in how the folder is read: they run the default's first two cv members.

One Dagster instance and one MLflow store serve every layout (as on a user's machine with several
projects); each layout has its own workdir.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import polars as pl
import pytest
import yaml

from ens_assets.cli import main
from ens_assets_tests import own_data
from ens_assets_tests.instance_home import make_dagster_home
from ens_assets_tests.tracking_store import new_tracking_store

REPO = Path(__file__).resolve().parent.parent

# What shrinks the default plan: sizes, budgets and k; members, thresholds, recipes and grouping stay the default's.
TINY_OVERRIDE = {
    "crops": {"image_size": 16, "workers": 1},
    "folds": {"k": 2},  # two folds still prove the grouping and the nested scores, with a third fewer checkpoints
    "training": {"batch_size": 16, "smoke": {"epochs": 1, "time_budget_s": 60, "patience": 1},
                 "cv": {"epochs": 1, "time_budget_s": 60, "patience": 1}},
    # One epoch on a few dozen frames proves the plumbing, not the learning: the gate asks only for finite losses.
    "promotion": {"min_accuracy_over_chance": 0.0, "require_every_class_predicted": False, "require_loss_decrease": False},
    # The fewest bootstrap replicates the plan allows: no test here reads an interval.
    "ensemble": {"greedy_rounds": 5, "bootstrap_replicates": 20},
}
TWO_MEMBERS = 2  # the default's first two cv members, for layouts whose tests check how the folder is read


def _merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = _merge(out.get(key, {}), value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def tiny_default_params(folder: Path, data: dict, members: int | None = None, **extra) -> Path:
    """params.yaml in `folder`: the repository's default plan with `data` replaced and the tiny override;
    with `members`, only the default's first that many cv members.

    Without data.detections there is no threshold lever: the default members lose their thresholds.
    """
    default = yaml.safe_load((REPO / "params.yaml").read_text())
    params = _merge(default, TINY_OVERRIDE)
    params["data"] = data
    for member in params["members"]:  # per-member budgets shrink the same way
        for budget in ("smoke", "cv"):
            if budget in member.get("overrides", {}):
                member["overrides"][budget] = {**member["overrides"][budget], **TINY_OVERRIDE["training"][budget]}
    if not data.get("detections"):
        params["crops"].pop("thresholds", None)
        # Members that differed only by threshold become one: the first listed (the default lists cv first).
        by_lever: dict[tuple, dict] = {}
        for m in params["members"]:
            by_lever.setdefault((m["backbone"], m["recipe"], m.get("strategy")), {k: v for k, v in m.items() if k != "threshold"})
        params["members"] = list(by_lever.values())
    if members is not None:
        params["members"] = [m for m in params["members"] if m["stage"] == "cv"][:members]
    params["workdir"] = "work"
    params = _merge(params, extra)
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("own_data")
    home = make_dagster_home(root)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DAGSTER_HOME", str(home))
        mp.setenv("MLFLOW_TRACKING_URI", new_tracking_store(root / "mlflow.db"))
        yield root


def _run_all(params: Path, capsys) -> tuple[int, str]:
    code = main(["--params", str(params), "materialize", "all"])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


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
    params = tiny_default_params(project, {"layout": "zamba", "root": "images", "detections": "images/md.json"},
                                 members=TWO_MEMBERS)
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


def _assert_test_scores_for_every_member_and_combiner(params: Path) -> None:
    work = params.parent / "work"
    scores = pl.read_parquet(work / "ensemble" / "scores.parquet")
    assert scores["test_log_loss"].null_count() == 0 and scores["test_accuracy"].null_count() == 0, scores
    metrics = json.loads((work / "ensemble" / "metrics.json").read_text())
    assert set(metrics["test"]) == set(scores["name"].to_list())
    members = scores.filter(pl.col("kind") == "member")["name"].to_list()
    ensembles = scores.filter(pl.col("kind") == "ensemble")["name"].to_list()
    assert len(members) >= 2 and len(ensembles) >= 2
    assert metrics["test_split"]["labelled"] == metrics["test_split"]["images"] > 0


def test_zamba_without_a_site_column_and_without_a_detections_file(cli_env, capsys):
    """The first labelled set most people have: filepath,label only, no MegaDetector run. Folds group
    EXIF bursts; crops are whole frames (one partition 'full')."""
    project = cli_env / "zamba_plain"
    images = project / "images"
    frames = own_data.write_images(images, sites=4)
    own_data.write_zamba_csv(images, frames, with_site=False)
    params = tiny_default_params(project, {"layout": "zamba", "root": "images"})
    code, out = _run_all(params, capsys)
    _assert_ensemble(params, code, out)
    folds = pl.read_parquet(params.parent / "work" / "folds.parquet")
    assert folds.group_by("group").agg(pl.col("fold").n_unique())["fold"].max() == 1, "a burst spans folds"
    assert (params.parent / "work" / "crops" / "full").is_dir()


def test_imagefolder_without_sites(cli_env, capsys):
    project = cli_env / "imagefolder"
    images = project / "images"
    frames = own_data.write_images(images, sites=4, folder_of=lambda label, site: label)
    own_data.write_megadetector_json(project / "md.json", frames)
    params = tiny_default_params(project, {"layout": "imagefolder", "root": "images", "detections": "md.json"},
                                 members=TWO_MEMBERS)
    code, out = _run_all(params, capsys)
    _assert_ensemble(params, code, out)


def test_coco_camera_traps_with_seq_id_and_held_out_sites(cli_env, capsys):
    """COCO CT with location and seq_id; test_site_fraction 0.25 holds one of four sites out with its labels:
    the ensemble table and metrics.json carry test scores for every member and combiner."""
    project = cli_env / "coco"
    images = project / "images"
    frames = own_data.write_images(images, sites=4, bursts_per_class_and_site=1)
    own_data.write_coco_json(images, frames)
    own_data.write_megadetector_json(images / "md.json", frames)
    params = tiny_default_params(project, {"layout": "coco", "root": "images", "labels_file": "coco.json",
                                           "detections": "images/md.json", "test_site_fraction": 0.25})
    code, out = _run_all(params, capsys)
    spec = _assert_ensemble(params, code, out)
    assert spec["test_images"] == 9 and spec["test_labelled_images"] == 9
    _assert_test_scores_for_every_member_and_combiner(params)
    assert "site shift" in (params.parent / "work" / "diagnostics" / "roadmap.md").read_text()


def test_camtrap_dp_package_with_its_observation_boxes(cli_env, capsys):
    """A Camtrap DP 1.0 package (deployments, media, observations; a video, a remote URL and an unclassified
    media among them): no MegaDetector file, so the observation boxes are the detections."""
    from ens_assets_tests.data.camtrap_package import write_camtrap_package

    project = cli_env / "camtrap"
    truth = write_camtrap_package(project / "package")
    params = tiny_default_params(project, {"layout": "camtrap-dp", "root": "package"}, members=TWO_MEMBERS)
    code, out = _run_all(params, capsys)
    _assert_ensemble(params, code, out)
    folds = pl.read_parquet(params.parent / "work" / "folds.parquet")
    assert folds.height == len(truth["labels"])
    assert folds.group_by("group").agg(pl.col("fold").n_unique())["fold"].max() == 1, "an event spans folds"
