"""Building the Definitions from one params.yaml (its partitions come from the plan).

Separate from ens_assets/definitions.py, whose import builds the repo's default Definitions for
workspace.yaml: the CLI, tests and scale-out code build their own from other plans without paying for it.
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from ens_assets.defs.asset_checks import build_asset_checks
from ens_assets.defs.data_assets import build_data_assets
from ens_assets.defs.ensemble_assets import build_ensemble_assets
from ens_assets.defs.inference_assets import build_inbox_sensor, build_inference_assets, build_inference_job
from ens_assets.defs.report_assets import build_promotion_sensor, build_report_assets
from ens_assets.defs.resources import MlflowTracking, PlanResource
from ens_assets.defs.schedules import build_jobs, build_schedules, build_sensors
from ens_assets.defs.subset_assets import build_subset_assets
from ens_assets.defs.training_assets import build_training_assets
from ens_assets.plan import load_plan

REPO_ROOT = Path(__file__).resolve().parents[2]
PARAMS_ENV = "ENS_ASSETS_PARAMS"


def default_params_path() -> Path:
    return Path(os.environ.get(PARAMS_ENV, REPO_ROOT / "params.yaml")).resolve()


def build_definitions(params_path: str | Path | None = None, executor: dg.ExecutorDefinition | None = None) -> dg.Definitions:
    """Partitions come from the plan, so the definitions are built from one params.yaml."""
    params_path = Path(params_path or default_params_path()).resolve()
    plan = load_plan(params_path)
    data = build_data_assets(plan)
    by_name = {a.key.to_user_string(): a for a in data}
    training = build_training_assets(plan, by_name["crops"], by_name["folds"])
    by_name.update({a.key.to_user_string(): a for a in training})
    ensemble = build_ensemble_assets(plan, by_name["oof_predictions"], by_name["test_predictions"])
    subsets = build_subset_assets(plan, by_name["checkpoints"])
    by_name.update({a.key.to_user_string(): a for a in [*ensemble, *subsets]})
    report = build_report_assets(plan, by_name["ensemble_diagnostics"])
    by_name.update({a.key.to_user_string(): a for a in report})
    inference = build_inference_assets(by_name["ensemble"])
    jobs = build_jobs(plan, by_name)
    jobs["batch_predictions_job"] = build_inference_job(inference[0])
    # The morning report per date (ens-assets report; make demo ends with it).
    jobs["report_job"] = dg.define_asset_job("report_job", selection=dg.AssetSelection.assets(report[0]),
                                             partitions_def=report[0].partitions_def)
    return dg.Definitions(
        assets=[*data, *training, *ensemble, *subsets, *report, *inference],
        asset_checks=build_asset_checks(plan, by_name),
        jobs=list(jobs.values()),
        schedules=build_schedules(plan, jobs),
        sensors=[*build_sensors(jobs), build_promotion_sensor(str(params_path), plan, jobs),
                 build_inbox_sensor(plan, jobs["batch_predictions_job"])],
        resources={
            "plan_resource": PlanResource(params_path=str(params_path)),
            "mlflow_tracking": MlflowTracking(),
        },
        executor=executor or dg.multiprocess_executor,
    )

