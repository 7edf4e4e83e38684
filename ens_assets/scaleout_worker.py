"""What every Celery worker of the scale-out stack imports before its pool forks (`dagster-celery worker start
-i ens_assets.scaleout_worker`): the code location's definitions, built once here, and the modules a training step
loads on first use, so each pool process starts with dagster, torch, timm, MLflow and the project loaded instead
of paying for them (10-20 s on a busy 2-core machine) inside its first step."""

import mlflow.store.tracking.sqlalchemy_store  # noqa: F401  (the tracking store each step logs to)

import ens_assets.ensemble.plots  # noqa: F401  (checkpoint metadata plots: matplotlib)
import ens_assets.member_runs  # noqa: F401  (the training step's core)
from ens_assets.scaleout import celery_definitions

celery_definitions()
