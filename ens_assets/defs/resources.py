"""Dagster resources: the plan (params.yaml) and the MLflow tracking store."""


import os
from functools import cached_property

import dagster as dg

from ens_assets.mlflow_store import ensure_store
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
    """Where MLflow runs go. Empty tracking_uri: $MLFLOW_TRACKING_URI, else the plan's local SQLite store."""

    tracking_uri: str = ""

    def resolve(self, plan: Plan) -> str:
        if self.tracking_uri:
            return self.tracking_uri
        return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{plan.path(plan.tracking.default_store)}"

    def activate(self, plan: Plan) -> str:
        """Point the mlflow client of this step's process at the store and return its URI."""
        import mlflow  # deferred: slow import, only training/ensemble steps need it

        uri = self.resolve(plan)
        ensure_store(uri)
        os.environ["MLFLOW_TRACKING_URI"] = uri
        mlflow.set_tracking_uri(uri)
        return uri
