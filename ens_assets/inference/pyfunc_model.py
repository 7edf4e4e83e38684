"""The file MLflow loads the ensemble model from ("models from code"): no pickled Python object is stored."""

from mlflow.models import set_model

from ens_assets.inference.mlflow_model import EnsembleModel

set_model(EnsembleModel())
