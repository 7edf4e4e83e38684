"""The method's loop on a tiny plan, through Dagster on a real SQLite instance and a real MLflow store:
night 1 trains two members; night 2 adds a `stage: auto` member (promoted by the smoke gate, never silently)
and a smoke candidate; the second morning report pairs tonight's ensemble with last night's, and
`apply-proposals --yes` leaves a params.yaml that loads, with its comments."""

import json
import shutil
from pathlib import Path

import dagster as dg
import pytest
import yaml

from ens_assets.cli import STAGES, StageRunner, main
from ens_assets.morning_report import OOF_FILE, SUMMARY_FILE, read_report, read_short_report, reports_dir
from ens_assets.plan import load_plan
from ens_assets_tests.instance_home import make_dagster_home
from ens_assets_tests.tiny_plan import FINITE_LOSS_GATE, member, tiny_plan
from ens_assets_tests.tracking_store import new_tracking_store

# Two nights of training in one module fixture: pytest-timeout counts the fixture into the first test.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]
NIGHT_1, NIGHT_2 = "2026-11-23", "2026-11-24"
AUTO = "test_resnet.t020.mixup"
CANDIDATE = "test_resnet.t005.mixup"

PARAMS = tiny_plan(
    data={"demo": {"seed": 5, "train_sites": 4}},
    members=[member(0.05), member(0.2)],
    promotion=FINITE_LOSS_GATE,  # one epoch on tiny data: the gate asks only for finite losses here
    # 20 replicates (the fewest the plan allows) still give every delta an interval around its value.
    ensemble={"method": "greedy", "greedy_rounds": 5, "bootstrap_replicates": 20},
)
COMMENT = "# Tonight's plan: the morning report proposes what comes next."


def write_params(path: Path, params: dict) -> None:
    text = yaml.safe_dump(params, sort_keys=False).replace("members:\n", "members:  # the ensemble's candidates\n")
    path.write_text(f"{COMMENT}\n{text}")


@pytest.fixture(scope="module")
def two_nights(tmp_path_factory):
    root = tmp_path_factory.mktemp("loop")
    home = make_dagster_home(root)
    params = root / "params.yaml"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DAGSTER_HOME", str(home))
        mp.setenv("MLFLOW_TRACKING_URI", new_tracking_store(root / "mlflow.db"))
        write_params(params, PARAMS)
        night1 = StageRunner(params, out=print)
        assert night1.run(STAGES) == 0
        assert night1.report(NIGHT_1) is not None

        second = {**PARAMS, "members": [*PARAMS["members"],
                                        {"backbone": "test_resnet", "threshold": 0.2, "recipe": "mixup", "stage": "auto"},
                                        {"backbone": "test_resnet", "threshold": 0.05, "recipe": "mixup", "stage": "smoke"}]}
        write_params(params, second)
        night2 = StageRunner(params, out=print)
        assert night2.run(STAGES) == 0
        assert night2.report(NIGHT_2) == NIGHT_2
        yield root, params, night2


def test_second_report_pairs_tonight_with_last_night_and_counts_what_ran(two_nights):
    root, params, runner = two_nights
    plan = load_plan(params)
    first = json.loads((reports_dir(plan) / NIGHT_1 / SUMMARY_FILE).read_text())
    second = json.loads((reports_dir(plan) / NIGHT_2 / SUMMARY_FILE).read_text())
    assert first["deltas"]["against"].startswith("tonight's best single member")
    assert first["ran"]["trained"] == 6 and first["ran"]["failed"] == 0  # 2 members x (smoke + 2 folds)
    # Night 2: the new auto member's smoke and two folds, the candidate's smoke; the rest was fresh.
    assert second["ran"] == {**second["ran"], "trained": 4, "skipped_fresh": 6, "failed": 0}
    assert second["ran"]["compute_minutes"] > 0 and second["previous"] == NIGHT_1
    deltas = second["deltas"]
    assert deltas["against"] == "last night's ensemble" and deltas["unit"] == "sites"
    oof_images = json.loads((plan.ensemble_dir / "spec.json").read_text())["oof_images"]
    assert deltas["images"] == oof_images
    for name, d in deltas["deltas"].items():
        assert d["lo"] <= d["value"] <= d["hi"], name
        assert not (d["better"] and d["worse"])
        # "better" only when the interval of the difference excludes zero in the improving direction.
        if d["better"]:
            assert (d["hi"] < 0) if name == "log_loss" else (d["lo"] > 0)
    assert {"log_loss", "accuracy"} <= set(deltas["deltas"]) and any(k.startswith("recall/") for k in deltas["deltas"])
    markdown = (reports_dir(plan) / NIGHT_2 / "report.md").read_text()
    assert "vs last night's ensemble" in markdown and "Smoke verdicts" in markdown
    assert read_report(plan, NIGHT_2) == markdown and read_short_report(plan, NIGHT_2) == second["short"]  # the CLI's readers
    assert read_report(plan, "1999-01-01") is None and read_short_report(plan, "1999-01-01") is None
    assert (reports_dir(plan) / NIGHT_2 / OOF_FILE).is_file()


def test_auto_member_was_promoted_with_the_decision_recorded(two_nights):
    root, params, runner = two_nights
    plan = load_plan(params)
    assert plan.member(AUTO).stage == "cv" and COMMENT in params.read_text()
    second = json.loads((reports_dir(plan) / NIGHT_2 / SUMMARY_FILE).read_text())
    assert [p["member"] for p in second["promotions"]] == [AUTO]
    assert "smoke passed" in second["promotions"][0]["reason"]
    runs = runner.instance.get_runs(filters=dg.RunsFilter(tags={"ens_assets/promoted": AUTO}))
    assert sorted(r.tags["dagster/partition/fold"] for r in runs) == ["0", "1"]
    assert AUTO in json.loads((plan.ensemble_dir / "spec.json").read_text())["members"]


def test_sensor_promotes_an_auto_member_whose_smoke_passed_and_queues_its_folds(two_nights, tmp_path):
    from ens_assets.defs.build import build_definitions
    from ens_assets.params_edit import edit_params

    root, params, runner = two_nights
    trial = root / "sensor_params.yaml"  # a copy: the proposals test below reads the real file
    shutil.copy(params, trial)
    edit_params(trial, [{"op": "set_member", "member": CANDIDATE, "field": "stage", "value": "auto"}])
    sensor = build_definitions(trial).resolve_sensor_def("promote_auto_members")
    run = runner.instance.get_runs(filters=dg.RunsFilter(job_name="checkpoints_job",
                                                         statuses=[dg.DagsterRunStatus.SUCCESS]), limit=1)[0]
    event = runner.instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_SUCCESS)[0].dagster_event
    context = dg.build_run_status_sensor_context(sensor_name="promote_auto_members", dagster_event=event,
                                                 dagster_instance=runner.instance, dagster_run=run)
    requests = list(sensor(context))
    assert load_plan(trial).member(CANDIDATE).stage == "cv" and COMMENT in trial.read_text()
    assert sorted(r.partition_key.keys_by_dimension["fold"] for r in requests) == ["0", "1"]
    assert all(r.tags["ens_assets/promoted"] == CANDIDATE and "smoke passed" in r.tags["ens_assets/promotion_reason"]
               for r in requests)
    # Nothing left to promote: the next evaluation skips, saying why.
    assert isinstance(sensor(context), dg.SkipReason)


def test_proposals_are_params_changes_and_apply_proposals_yes_keeps_comments(two_nights, capsys, monkeypatch):
    root, params, runner = two_nights
    proposals = json.loads((reports_dir(load_plan(params)) / NIGHT_2 / "proposals.json").read_text())
    texts = [p["text"] for p in proposals]
    promote = [t for t in texts if t.startswith(f"promote {CANDIDATE} to cv (smoke passed: acc ")]
    assert promote and "x chance" in promote[0], texts
    assert all(p["ops"] for p in proposals)
    monkeypatch.setenv("DAGSTER_HOME", str(root / "dagster_home"))
    assert main(["apply-proposals", "--params", str(params)]) == 0  # dry run: a diff, nothing written
    assert load_plan(params).member(CANDIDATE).stage == "smoke"
    assert main(["apply-proposals", "--params", str(params), "--yes"]) == 0
    plan = load_plan(params)
    assert plan.member(CANDIDATE).stage == "cv"
    text = params.read_text()
    assert text.startswith(COMMENT) and "# the ensemble's candidates" in text
    assert "applied to" in capsys.readouterr().out
