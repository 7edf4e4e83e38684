"""The whole plan through Dagster on a real SQLite-backed instance: data -> crops -> smoke -> k folds ->
predictions -> ensemble -> diagnostics, then the nightly and morning schedules against that instance."""

import datetime
import json
import shutil
import uuid
from pathlib import Path

import polars as pl
import pytest

import dagster as dg
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

from ens_assets.cli import STAGES, StageRunner, execute_against_code_location
from ens_assets.defs.partitions import checkpoint_key
from ens_assets.defs.schedules import nightly_requests
from ens_assets.defs.build import build_definitions
from ens_assets.plan import load_plan
from ens_assets_tests.instance_home import make_dagster_home
from ens_assets_tests.tiny_plan import budget, member, tiny_plan, write_params
from ens_assets_tests.tracking_store import new_tracking_store

REPO = Path(__file__).resolve().parent.parent
MLFLOW_UI = "http://127.0.0.1:5000"  # tracking.ui_url's default, what `make mlflow-ui` serves
TICK = datetime.datetime(2026, 11, 23, 1, 0, tzinfo=datetime.timezone.utc)

GOOD_A = "test_resnet.t005.geo"
GOOD_B = "test_resnet.t020.mixup"
DIVERGES = "test_resnet.t020.geo"

PARAMS = tiny_plan(
    data={"demo": {"seed": 3, "train_images_per_class": 12, "test_images_per_class": 3}},
    training={"lr": 0.003, "warmup_epochs": None, "smoke": budget(3), "cv": budget(3)},
    members=[
        member(0.05),
        member(0.2, "mixup"),
        # An absurd learning rate: the loss blows up, the smoke gate fails, and k-fold never runs.
        member(0.2, overrides={"lr": 1.0e6}),
    ],
    # Tiny data and three epochs: the gate asks only for a finite, decreasing loss here.
    promotion={"min_accuracy_over_chance": 0.0, "require_every_class_predicted": False},
    ensemble={"method": "greedy", "greedy_rounds": 10, "bootstrap_replicates": 20},  # the fewest replicates allowed
)


@pytest.fixture(scope="module")
def project(tmp_path_factory, monkeypatch_module):
    root = tmp_path_factory.mktemp("project")
    home = make_dagster_home(root)
    monkeypatch_module.setenv("DAGSTER_HOME", str(home))
    monkeypatch_module.setenv("MLFLOW_TRACKING_URI", new_tracking_store(root / "mlflow.db"))
    return root


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


@pytest.fixture(scope="module")
def materialized(project):
    params = write_params(project, PARAMS)
    lines: list[str] = []
    runner = StageRunner(params, out=lines.append)
    code = runner.run(STAGES)
    print("\n".join(lines))
    return runner, lines, code


def test_every_stage_materializes_through_dagster(materialized):
    runner, lines, code = materialized
    plan = runner.plan
    assert code == 0, "\n".join(lines)
    assert runner.instance.is_persistent, "pools only work on an instance with storage"
    assert plan.manifest_path.is_file() and plan.folds_path.is_file()
    for key in plan.threshold_keys:
        assert (plan.crops_dir(key) / "index.parquet").is_file()
    for member in (GOOD_A, GOOD_B):
        for fold in ("smoke", "0", "1"):
            assert (plan.checkpoint_dir(member, fold) / "model.safetensors").is_file(), (member, fold)
        oof = pl.read_parquet(plan.oof_path(member))
        assert oof["image_id"].n_unique() == oof.height
        assert set(oof["fold"].unique().to_list()) == {0, 1}
    spec = json.loads((plan.ensemble_dir / "spec.json").read_text())
    assert set(spec["members"]) <= {GOOD_A, GOOD_B}
    assert (plan.ensemble_dir / "submission.csv").is_file()
    assert (plan.diagnostics_dir / "roadmap.md").read_text().strip()

    # Runs of the workspace's code location (not origin-less in-process runs): the UI's timeline and job pages list them.
    origins = {(r.remote_job_origin.location_name, r.remote_job_origin.repository_origin.repository_name)
               for r in runner.instance.get_runs() if r.remote_job_origin is not None}
    assert origins == {("ens_assets.definitions", "__repository__")}
    assert all(r.remote_job_origin is not None for r in runner.instance.get_runs())

    materialized_keys = runner.instance.get_materialized_partitions(dg.AssetKey("checkpoints"))
    assert str(checkpoint_key(GOOD_A, "1")) in materialized_keys
    assert str(checkpoint_key(DIVERGES, "0")) not in materialized_keys


def test_failed_smoke_member_never_reaches_k_fold(materialized):
    runner, lines, _ = materialized
    plan = runner.plan
    verdict = json.loads((plan.checkpoint_dir(DIVERGES, "smoke") / "checkpoint.json").read_text())["smoke_verdict"]
    assert verdict["passed"] is False and verdict["reasons"]
    assert not plan.checkpoint_dir(DIVERGES, "0").exists()
    assert any(DIVERGES in line and "[skip]" in line for line in lines)

    # Asking Dagster for it anyway fails with the reason, and the smoke_gate check recorded the failure.
    result = runner.defs.resolve_job_def("checkpoints_job").execute_in_process(
        instance=runner.instance, partition_key=checkpoint_key(DIVERGES, "0"), raise_on_error=False
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "failed its smoke gate" in failure.step_failure_data.user_failure_data.description

    check_key = dg.AssetCheckKey(dg.AssetKey("checkpoints"), "smoke_gate")
    records = runner.instance.event_log_storage.get_asset_check_execution_history(check_key, limit=50)
    assert records, "smoke_gate never ran"


def test_rerun_skips_fresh_checkpoints(materialized):
    runner, _, _ = materialized
    plan = runner.plan
    before = {p: p.stat().st_mtime_ns for p in plan.work.glob("checkpoints/*/*/model.safetensors")}
    lines: list[str] = []
    again = StageRunner(runner.params, out=lines.append)
    again.train()
    assert not again.failures
    after = {p: p.stat().st_mtime_ns for p in plan.work.glob("checkpoints/*/*/model.safetensors")}
    assert before == after


def _schedule_context(defs: dg.Definitions, instance: dg.DagsterInstance):
    """What the daemon gives a schedule at 01:00: the instance, the repository and the plan resource."""
    return dg.build_schedule_context(
        instance=instance,
        scheduled_execution_time=TICK,
        repository_def=defs.get_repository_def(),
        resources={"plan_resource": defs.resources["plan_resource"]},
    )


def _schedule(defs: dg.Definitions, name: str):
    return next(s for s in defs.schedules if s.name == name)


def test_nightly_schedule_requests_only_stale_partitions(materialized, project):
    runner, _, _ = materialized
    instance = runner.instance

    nightly = _schedule(runner.defs, "nightly_training")
    with _schedule_context(runner.defs, instance) as ctx:
        result = nightly.evaluate_tick(ctx)
    assert not result.run_requests, "everything is fresh after the full run"

    # Change one member's entry: only its partitions become stale; the failed member stays out of k-fold.
    changed = json.loads(json.dumps(PARAMS))
    changed["members"][0]["overrides"] = {"lr": 0.002}
    params = write_params(project, changed)
    plan = load_plan(params)
    requests = nightly_requests(plan, in_flight=set())
    keys = [r.partition_key for r in requests]
    assert keys == [str(checkpoint_key(GOOD_A, f)) for f in ("smoke", "0", "1")]

    # A partition already running is never requested twice.
    running = str(checkpoint_key(GOOD_A, "0"))
    instance.add_run(
        dg.DagsterRun(
            job_name="checkpoints_job",
            run_id=str(uuid.uuid4()),
            status=dg.DagsterRunStatus.STARTED,
            tags={"dagster/partition": running},
        )
    )
    defs = build_definitions(params)
    with _schedule_context(defs, instance) as ctx:
        result = _schedule(defs, "nightly_training").evaluate_tick(ctx)
    assert [r.partition_key for r in result.run_requests] == [str(checkpoint_key(GOOD_A, f)) for f in ("smoke", "1")]
    write_params(project, PARAMS)


def test_a_nightly_request_runs_as_the_daemon_launches_it(materialized):
    """The daemon creates a run from a request's tags alone: they must name the member x fold partition fully."""
    runner, _, _ = materialized
    plan, instance = runner.plan, runner.instance
    missing = plan.checkpoint_dir(GOOD_B, "1")
    shutil.rmtree(missing)
    with _schedule_context(runner.defs, instance) as ctx:
        (request,) = _schedule(runner.defs, "nightly_training").evaluate_tick(ctx).run_requests
    assert request.partition_key == str(checkpoint_key(GOOD_B, "1"))
    assert {k: v for k, v in request.tags.items() if k.startswith("dagster/partition")} == {
        "dagster/partition": request.partition_key, "dagster/partition/member": GOOD_B, "dagster/partition/fold": "1",
    }  # fmt: skip
    job = runner.defs.resolve_job_def("checkpoints_job")
    result = execute_against_code_location(job, instance, partition_key=None, tags=request.tags, run_config={})
    assert result.success
    assert (missing / "model.safetensors").is_file()


def test_morning_schedule_refreshes_members_with_complete_checkpoints(materialized):
    runner, _, _ = materialized
    morning = _schedule(runner.defs, "morning_predictions")
    with _schedule_context(runner.defs, runner.instance) as ctx:
        result = morning.evaluate_tick(ctx)
    assert sorted(r.partition_key for r in result.run_requests) == sorted([GOOD_A, GOOD_B])
    # The UI's tick preview lists each request by its own tags: the partition is among them, and in the run key.
    for request in result.run_requests:
        assert request.tags["dagster/partition"] == request.partition_key
        assert request.run_key == f"{TICK.date().isoformat()}:{request.partition_key}"


def _latest_metadata(instance, partition: str) -> dict:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("checkpoints"), asset_partitions=[partition]), limit=1
    ).records
    assert records, partition
    return records[0].asset_materialization.metadata


def test_failed_smoke_gate_is_a_verdict_on_its_partition(materialized):
    runner, lines, _ = materialized
    instance = runner.instance
    smoke = str(checkpoint_key(DIVERGES, "smoke"))
    # The run of the smoke partition succeeded: an expected verdict is no step failure (no stack trace).
    (run,) = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/partition": smoke}), limit=1)
    assert run.status == dg.DagsterRunStatus.SUCCESS
    assert not any(DIVERGES in line and "FAILED" in line for line in lines)
    failures = [r for r in instance.all_logs(run.run_id) if r.dagster_event and r.dagster_event.is_step_failure]
    assert not failures

    metadata = _latest_metadata(instance, smoke)
    assert list(metadata)[:3] == ["member", "fold", "smoke_gate"]  # the verdict leads its partition's page
    assert metadata["smoke_gate"].text.startswith("FAILED: ")
    reason = json.loads((runner.plan.checkpoint_dir(DIVERGES, "smoke") / "checkpoint.json").read_text())["smoke_verdict"]["reasons"][0]
    assert reason in metadata["smoke_gate"].text

    # The check failed on that partition, and is evaluated on smoke partitions only.
    check_key = dg.AssetCheckKey(dg.AssetKey("checkpoints"), "smoke_gate")
    records = instance.event_log_storage.get_asset_check_execution_history(check_key, limit=100)
    evaluated = {r.partition: r for r in records if r.status != AssetCheckExecutionRecordStatus.PLANNED}
    assert evaluated and all(p.split("|")[0] == "smoke" for p in evaluated), sorted(evaluated)
    assert evaluated[smoke].status == AssetCheckExecutionRecordStatus.FAILED
    assert evaluated[str(checkpoint_key(GOOD_A, "smoke"))].status == AssetCheckExecutionRecordStatus.SUCCEEDED
    assert reason in evaluated[smoke].event.dagster_event.event_specific_data.description


def test_fold_partitions_say_whether_they_were_earned(materialized):
    runner, _, _ = materialized
    observations = runner.instance.fetch_observations(dg.AssetKey("checkpoints"), limit=100).records
    said = {o.partition_key: o.asset_observation.metadata["k_fold_run"].text for o in observations}
    for fold in runner.plan.fold_keys:
        assert said[str(checkpoint_key(DIVERGES, fold))].startswith("not earned: smoke gate failed (")
        assert said[str(checkpoint_key(GOOD_A, fold))] == "earned: smoke gate passed"
    assert str(checkpoint_key(DIVERGES, "0")) not in runner.instance.get_materialized_partitions(dg.AssetKey("checkpoints"))


def test_checkpoint_metadata_leads_with_headline_numbers_and_an_http_mlflow_link(materialized):
    runner, _, _ = materialized
    metadata = _latest_metadata(runner.instance, str(checkpoint_key(GOOD_A, "1")))
    assert list(metadata)[:8] == ["member", "fold", "val_log_loss", "val_accuracy", "best_epoch", "stop_reason",
                                  "minutes", "peak_memory_mb"]  # fmt: skip
    assert isinstance(metadata["val_log_loss"].value, float) and metadata["stop_reason"].text
    assert _linked_url(metadata["mlflow_run"]) == (
        f"http://127.0.0.1:5000/#/experiments/{_experiment_of(metadata['mlflow_run_id'].value)}/runs/"
        f"{metadata['mlflow_run_id'].value}"
    )
    # Paths relative to the workdir, which is given relative to the project folder (as in params.yaml).
    plan = runner.plan
    assert metadata["workdir"].path == "work" and plan.path(metadata["workdir"].path) == plan.work
    assert plan.work / metadata["path"].path == plan.checkpoint_dir(GOOD_A, "1")
    assert "| class | precision | recall | f1 |" in metadata["per_class"].md_str
    assert "data:image/png;base64," in metadata["confusion_matrix"].md_str
    assert len(metadata) <= 20 and not any(k.startswith(("recall_", "precision_", "f1_")) for k in metadata)


def test_ensemble_says_per_member_which_gate_passed(materialized):
    runner, _, _ = materialized
    event = runner.instance.get_latest_materialization_event(dg.AssetKey("ensemble"))
    metadata = event.asset_materialization.metadata
    members = metadata["members"].md_str.splitlines()  # one wrapping line per member, in plan order
    assert members[0].startswith(f"- **{GOOD_A}**: cv, smoke gate passed, weight ")
    reason = json.loads((runner.plan.checkpoint_dir(DIVERGES, "smoke") / "checkpoint.json").read_text())["smoke_verdict"]["reasons"][0]
    assert members[2].startswith(f"- **{DIVERGES}**: cv, smoke gate FAILED, not in the ensemble: {reason}")
    assert len(members) == 3
    run_id = metadata["mlflow_run_id"].value
    assert _linked_url(metadata["mlflow_run"]) == f"http://127.0.0.1:5000/#/experiments/{_experiment_of(run_id)}/runs/{run_id}"
    plan = runner.plan
    assert (plan.work / metadata["submission"].path).is_file() and not Path(metadata["submission"].path).is_absolute()
    assert (plan.work / metadata["ensemble_model"].path / "ensemble.json").is_file()
    assert "best_member/log_loss" in metadata and not any(k.startswith("best_single_member/") for k in metadata)


def _linked_url(value) -> str:
    """The address of a Markdown link value ('[MLflow run 1a2b3c4d at 127.0.0.1:5000](http://...)')."""
    import re

    found = re.fullmatch(r"\[MLflow run [0-9a-f]{8} at 127\.0\.0\.1:5000\]\((http://[^)]+)\)", value.md_str)
    assert found, value.md_str
    return found.group(1)


def _experiment_of(run_id: str) -> str:
    """The experiment a run was logged to, read from the test's tracking store (so the link names the real run)."""
    import mlflow

    return mlflow.MlflowClient().get_run(run_id).info.experiment_id


@pytest.mark.slow
def test_ui_in_a_real_browser(materialized, tmp_path):
    """`dagster dev` on this instance, read in headless Chromium: the asset graph, a failed gate's reason on
    its smoke partition, and the ensemble page with its MLflow link and which gate each member passed."""
    import os
    import urllib.error
    import urllib.parse
    import urllib.request

    from ens_assets_tests.orchestration.browser import (
        VIEWPORT,
        browser_missing,
        chromium_pages,
        dagster_dev,
        publish_screenshots,
    )

    missing = browser_missing()
    if missing:
        pytest.skip(missing)
    runner, _, _ = materialized
    verdict = json.loads((runner.plan.checkpoint_dir(DIVERGES, "smoke") / "checkpoint.json").read_text())["smoke_verdict"]
    partition = lambda fold: urllib.parse.quote(str(checkpoint_key(DIVERGES, fold)))  # noqa: E731
    good_fold = urllib.parse.quote(str(checkpoint_key(GOOD_A, "0")))
    env = {**os.environ, "ENS_ASSETS_PARAMS": str(runner.params)}
    with dagster_dev(REPO, env, tmp_path / "dagster_dev.log") as url:
        with chromium_pages(url, tmp_path / "screenshots") as ui:
            graph_text = ui.visit("/assets/ensemble?view=lineage&lineageScope=upstream&lineageDepth=10", "source_images")
            graph = ui.screenshot("ui-asset-graph.png")
            smoke_text = ui.visit(f"/assets/checkpoints?view=partitions&partition={partition('smoke')}", "smoke_gate")
            smoke_scroll, smoke_gate_top = ui.sideways_scroll(), ui.top("smoke_gate")
            smoke = ui.screenshot("ui-failed-smoke.png")
            fold_text = ui.visit(f"/assets/checkpoints?view=partitions&partition={good_fold}", "val_log_loss")
            fold_scroll, fold_links = ui.sideways_scroll(), ui.link_addresses(MLFLOW_UI)
            ensemble_text = ui.visit("/assets/ensemble", "mlflow_run")
            ensemble_scroll, ensemble_links = ui.sideways_scroll(), ui.link_addresses(MLFLOW_UI)
            ensemble = ui.screenshot("ui-ensemble.png", scroll_to="members")
            scores_text, scores_box = ui.markdown_dialog("honest_scores")
            diagnostics_text = ui.visit("/assets/ensemble_diagnostics", "per_class_recall")
            diagnostics_overflow = ui.metadata_overflow()
            diagnostics = ui.screenshot("ui-diagnostics.png", scroll_to="per_class_recall")
            roadmap_text, roadmap_box = ui.markdown_dialog("roadmap")
        query = ("{ runsOrError { ... on Runs { results { jobName tags { key value } "
                 "repositoryOrigin { repositoryLocationName } } } } }")
        request = urllib.request.Request(f"{url}/graphql", data=json.dumps({"query": query}).encode(),
                                         headers={"Content-Type": "application/json"})
        results = json.loads(urllib.request.urlopen(request, timeout=30).read())["data"]["runsOrError"]["results"]
        # The CLI's runs (other tests here add runs of their own, in process or by hand).
        runs = [r for r in results if {"key": "ens_assets/launcher", "value": "cli"} in r["tags"]]
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(f"{url}/server_info", timeout=5)  # dagster dev and its children are gone

    # The CLI's runs belong to the code location the UI serves (so the Overview timeline and Jobs history show them).
    assert runs and {r["repositoryOrigin"]["repositoryLocationName"] for r in runs if r["repositoryOrigin"]} == {"ens_assets.definitions"}
    assert all(r["repositoryOrigin"] for r in runs), [r["jobName"] for r in runs if not r["repositoryOrigin"]]
    assert all(asset in graph_text for asset in ("manifest", "crops", "checkpoints", "oof_predictions", "ensemble"))
    assert "FAILED: " + verdict["reasons"][0] in smoke_text
    assert smoke_gate_top < VIEWPORT["height"], smoke_gate_top  # the verdict is in view when the partition opens
    # The MLflow links: http addresses of the run pages, behind short link texts.
    ensemble_run = runner.instance.get_latest_materialization_event(dg.AssetKey("ensemble")).asset_materialization
    run_id = ensemble_run.metadata["mlflow_run_id"].value
    assert [text for href, text in ensemble_links.items() if href.endswith(f"/runs/{run_id}")] == [f"MLflow run {run_id[:8]} at 127.0.0.1:5000"], ensemble_links
    assert any(href.startswith(MLFLOW_UI + "/#/experiments/") for href in fold_links) and "val_log_loss" in fold_text, fold_links
    assert f"{DIVERGES}: cv, smoke gate FAILED" in ensemble_text  # the members list: which gate each member passed
    # Nothing scrolls sideways at 1280 px: the ensemble page and the checkpoint partitions (a failed smoke one
    # and a fold), neither the page nor the metadata table's own pane.
    assert (ensemble_scroll, smoke_scroll, fold_scroll) == ({}, {}, {}), (ensemble_scroll, smoke_scroll, fold_scroll)
    # Wide metadata in view at 1280 px: the recall of every class without scrolling sideways, the roadmap's
    # headings whole, the honest-scores dialog no taller than the window.
    classes = json.loads((runner.plan.ensemble_dir / "spec.json").read_text())["classes"]
    assert all(c in diagnostics_text for c in classes)
    assert {k: v for k, v in diagnostics_overflow.items() if v} == {}, diagnostics_overflow
    assert "Classes every member gets wrong (recall < 0.3)" in roadmap_text
    viewport = VIEWPORT["height"]
    assert scores_box["y"] >= 0 and scores_box["y"] + scores_box["height"] <= viewport, scores_box
    assert "best_single_member" in scores_text and "lowest OOF log loss" in scores_text
    assert roadmap_box["y"] >= 0, roadmap_box
    for shot in (graph, smoke, ensemble, diagnostics):
        assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size < 1_000_000
    publish_screenshots([graph, ensemble])
