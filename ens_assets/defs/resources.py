"""Dagster resources: the plan (params.yaml) and the MLflow tracking store."""


from functools import cached_property

import dagster as dg

from ens_assets.mlflow_store import Tracking, resolve_tracking
from ens_assets.plan import Plan, load_plan


class PlanResource(dg.ConfigurableResource):
    """The experiment plan every asset reads; params.yaml is the single source of configuration."""

    params_path: str = "params.yaml"

    @cached_property
    def _plan(self) -> Plan:
        return load_plan(self.params_path)

    def load(self) -> Plan:
        return self._plan


class MlflowTracking(dg.ConfigurableResource):
    """Where MLflow runs go. Empty tracking_uri: $MLFLOW_TRACKING_URI, else the plan's local SQLite store
    (mlflow_store.resolve_tracking decides; the assets pass what it returns to the core explicitly)."""

    tracking_uri: str = ""

    def resolve(self, plan: Plan) -> Tracking:
        return resolve_tracking(plan, self.tracking_uri)
