"""A failing stage stops the CLI with a short, useful message; nothing downstream of a failure runs, and no
asset reads an input whose last materialization attempt failed (the stale-manifest defect)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ens_assets.cli import StageRunner
from ens_assets_tests.instance_home import make_dagster_home
from ens_assets_tests.tiny_plan import budget, member, tiny_plan
from ens_assets_tests.tracking_store import new_tracking_store

pytestmark = pytest.mark.slow


def _small_params(**changes) -> dict:
    params = tiny_plan(
        data={"demo": {"seed": 3, "train_images_per_class": 6, "test_images_per_class": 2, "train_sites": 4}},
        crops={"thresholds": [0.05]},
        training={"lr": 0.003, "warmup_epochs": None, "smoke": budget(2), "cv": budget(2)},
        members=[member(0.05)],
        promotion={"min_accuracy_over_chance": 0.0, "require_every_class_predicted": False},
        ensemble={"method": "greedy", "greedy_rounds": 10},
    )
    params.update(changes)
    return params


@pytest.fixture
def project(tmp_path, monkeypatch):
    home = make_dagster_home(tmp_path)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", new_tracking_store(tmp_path / "mlflow.db"))
    return tmp_path


def _write(project: Path, params: dict) -> Path:
    path = project / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def _corrupt_detections(project: Path) -> dict:
    """A params value that passes load (the file exists) but fails in the detections step."""
    (project / "broken.json").write_text('{"images": [ {"file": ')
    params = _small_params()
    params["data"]["detections"] = "broken.json"
    return params


def _start_cli(project: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "ens_assets.cli", "--params", str(project / "params.yaml"), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}, cwd=project,
    )  # fmt: skip


def _cli(project: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = _start_cli(project, *args, env=env)
    try:
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_a_failing_stage_prints_a_few_lines_naming_the_asset_and_exits_1(project):
    _write(project, _corrupt_detections(project))
    # `--verbose` on a copy of the project and its own instance, in a second process at the same time.
    verbose_project = project / "verbose"
    verbose_project.mkdir()
    _write(verbose_project, _corrupt_detections(verbose_project))
    verbose_env = {"DAGSTER_HOME": str(make_dagster_home(verbose_project))}
    verbose_proc = _start_cli(verbose_project, "materialize", "data", "--verbose", env=verbose_env)
    result = _cli(project, "materialize", "all")
    lines = (result.stdout + result.stderr).strip().splitlines()

    assert result.returncode == 1, result.stdout + result.stderr
    assert len(lines) <= 15, "\n".join(lines)
    text = "\n".join(lines)
    assert "asset detections" in text and "not valid JSON" in text and "broken.json" in text
    assert "Traceback" not in text and "Stack Trace" not in text
    assert "nothing downstream of it ran" in text
    assert not (project / "work" / "crops").exists(), "a stage after the failed one ran"
    log = next(line.split("traces: ", 1)[1].split(" (")[0] for line in lines if "full log with traces:" in line)
    assert Path(log).parent == project / "work" / "logs"
    assert "Stack Trace" in Path(log).read_text() and "DetectionsError" in Path(log).read_text()

    verbose_out, verbose_err = verbose_proc.communicate(timeout=300)
    assert verbose_proc.returncode == 1
    assert "Stack Trace" in verbose_out + verbose_err


def test_no_stage_reads_an_input_whose_last_attempt_failed(project):
    good = _small_params()
    _write(project, good)
    runner = StageRunner(project / "params.yaml", out=lambda *_: None)
    assert runner.run(("data", "crops")) == 0
    index = project / "work" / "crops" / "0.05" / "index.parquet"
    built = index.stat().st_mtime_ns

    # The data stage fails (its detections file is corrupt): `all` stops there; nothing reads the old outputs.
    _write(project, _corrupt_detections(project))
    lines: list[str] = []
    assert StageRunner(project / "params.yaml", out=lines.append).run(("data", "crops", "train")) == 1
    assert any("asset detections" in line for line in lines)
    assert not any(line.startswith("crops") for line in lines), lines
    assert index.stat().st_mtime_ns == built

    # A later `materialize crops` on its own (even with params fixed) refuses the detections table the
    # failed attempt should have replaced, and says which input and what to rebuild.
    _write(project, good)
    lines = []
    assert StageRunner(project / "params.yaml", out=lines.append).run(("crops",)) == 1
    text = "\n".join(lines)
    assert "its input detections failed to materialize" in text and "rematerialize detections" in text, text
    assert index.stat().st_mtime_ns == built

    # Rebuilding the failed input clears it.
    lines = []
    assert StageRunner(project / "params.yaml", out=lines.append).run(("data", "crops")) == 0, "\n".join(lines)
    assert index.stat().st_mtime_ns > built


def test_smoke_gates_are_verdicts_until_no_member_is_left(project):
    params = _small_params()
    params["members"] = [{**params["members"][0], "overrides": {"lr": 1.0e6}}]  # the loss blows up: gate fails
    params["promotion"] = {"min_accuracy_over_chance": 0.0, "require_every_class_predicted": False}
    _write(project, params)
    lines: list[str] = []
    runner = StageRunner(project / "params.yaml", out=lines.append)
    code = runner.run(("data", "crops", "train", "predict", "ensemble"))
    text = "\n".join(lines)
    assert code == 1, text
    assert "[gate failed]" in text and "[FAILED] data" not in text
    last_failure = [line for line in lines if "[FAILED]" in line]
    assert len(last_failure) == 1 and "no member is left; smoke gates failed: test_resnet.t005.geo" in last_failure[0]
    assert "NaN" in last_failure[0] or "loss" in last_failure[0]
