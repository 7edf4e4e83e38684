"""Metadata shaped to the Dagster UI's value column (about 300 px at a 1280 px window, never broken inside a
word): short link texts, paths relative to the workdir, one wrapping line per member. The browser test in
test_pipeline.py checks the rendered pages; these check the values themselves, without a UI."""

from pathlib import Path

import polars as pl

from ens_assets.defs.metadata import members_markdown, mlflow_run_link, work_path, workdir_metadata

RUN = "30c9040602a648e098ecc86de714fe75"


def test_mlflow_link_text_is_short_and_its_address_is_the_run_page():
    url = f"http://127.0.0.1:5000/#/experiments/3/runs/{RUN}"
    value = mlflow_run_link(url, RUN)
    assert value.md_str == f"[MLflow run 30c90406 at 127.0.0.1:5000]({url})"


def test_paths_are_relative_to_the_workdir_and_the_workdir_to_the_project(tmp_path):
    project = tmp_path / "project"
    work = project / "data" / "work"
    assert workdir_metadata(work, project).path == "data/work"
    assert work_path(work, work / "ensemble" / "submission.csv").path == "ensemble/submission.csv"
    # Outside the workdir / the project (an absolute workdir in params.yaml): the path stays whole.
    elsewhere = tmp_path / "scratch" / "x.parquet"
    assert work_path(work, elsewhere).path == str(elsewhere)
    assert workdir_metadata(Path("/scratch/work"), project).path == "/scratch/work"


def test_members_are_one_line_each_saying_gate_and_weight_or_why_not():
    members = pl.DataFrame(
        [
            {"member": "tf_efficientnet_lite0.t005.geo", "stage": "cv", "smoke gate": "passed", "weight": 0.6, "why not in": ""},
            {"member": "resnet18.t020.geo", "stage": "cv", "smoke gate": "FAILED", "weight": None,
             "why not in": "smoke gate failed: a loss was NaN/inf"},
            {"member": "resnet18.t020.mixup", "stage": "smoke", "smoke gate": "passed", "weight": None,
             "why not in": "no OOF at stage cv"},
            {"member": "resnet18.t005.cutmix", "stage": "smoke", "smoke gate": "not run", "weight": None, "why not in": ""},
        ],
        schema={"member": pl.String, "stage": pl.String, "smoke gate": pl.String, "weight": pl.Float64, "why not in": pl.String},
    )  # fmt: skip
    assert members_markdown(members).splitlines() == [
        "- **tf_efficientnet_lite0.t005.geo**: cv, smoke gate passed, weight 0.60",
        "- **resnet18.t020.geo**: cv, smoke gate FAILED, not in the ensemble: a loss was NaN/inf",
        "- **resnet18.t020.mixup**: smoke, smoke gate passed, not in the ensemble: no OOF at stage cv",
        "- **resnet18.t005.cutmix**: smoke, smoke gate not run, not in the ensemble",
    ]
    assert members_markdown(members.clear()) == "none"
