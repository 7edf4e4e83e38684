"""The ensemble artefact as one MLflow pyfunc model, registered with one version per ensemble run.

Input: a DataFrame with a `path` column (one row per photo, or one row per MegaDetector box of it with
`x, y, w, h` normalised top-left and `conf`; a photo row without a box has them empty). Output: one row per
photo in input order: `image`, `top_class`, `top_probability`, one probability column per class, `fallback`,
`quarantined`, `reason`: the numbers `ens-assets predict` writes to predictions.csv.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd

ARTEFACT_KEY = "ensemble"
BOX_COLUMNS = ("x", "y", "w", "h")


def boxes_to_megadetector(frame: pd.DataFrame) -> tuple[list[str], dict[str, Any]]:
    """(photo paths in first-seen order, a MegaDetector batch JSON of the frame's boxes)."""
    if "path" not in frame.columns:
        raise ValueError(f"input needs a 'path' column (one row per photo or per box); got columns {list(frame.columns)}")
    paths: list[str] = []
    detections: dict[str, list[dict]] = {}
    has_boxes = all(c in frame.columns for c in BOX_COLUMNS)
    for row in frame.to_dict("records"):
        path = str(row["path"])
        if path not in detections:
            paths.append(path)
            detections[path] = []
        if has_boxes and all(pd.notna(row.get(c)) for c in BOX_COLUMNS):
            conf = row.get("conf")
            detections[path].append({"category": "1", "conf": float(conf) if pd.notna(conf) else 1.0,
                                     "bbox": [float(row[c]) for c in BOX_COLUMNS]})
    md = {"info": {"format_version": "1.4"}, "detection_categories": {"1": "animal", "2": "person", "3": "vehicle"},
          "images": [{"file": p, "detections": detections[p]} for p in paths]}
    return paths, md


class EnsembleModel(mlflow.pyfunc.PythonModel):
    """mlflow.pyfunc wrapper of an ensemble artefact folder (ens_assets.inference.artefact)."""

    def load_context(self, context) -> None:
        from ens_assets.inference.artefact import load_artefact

        self.artefact = load_artefact(Path(context.artifacts[ARTEFACT_KEY]))

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        from ens_assets.inference.inputs import ImageInput
        from ens_assets.inference.outputs import predictions_table
        from ens_assets.inference.predict import predict_photos

        paths, md = boxes_to_megadetector(pd.DataFrame(model_input))
        with_boxes = any(entry["detections"] for entry in md["images"])
        with tempfile.TemporaryDirectory() as tmp:
            json_path = Path(tmp) / "boxes.json"
            json_path.write_text(json.dumps(md))
            images = [ImageInput(p, Path(p)) for p in paths]
            result = predict_photos(self.artefact, images, json_path if with_boxes else None,
                                    workers=int((params or {}).get("workers", 0)))
        table = predictions_table(result)
        return table.drop("fallback_thresholds", "detector_status").to_pandas()


def model_signature(classes: list[str]):
    """Input: `path` and the optional box columns; output: the predictions.csv columns of `predict`."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    inputs = Schema([ColSpec("string", "path"), *(ColSpec("double", c, required=False) for c in (*BOX_COLUMNS, "conf"))])
    outputs = Schema([ColSpec("string", "image"), ColSpec("string", "top_class", required=False),
                      ColSpec("double", "top_probability", required=False),
                      *(ColSpec("double", c, required=False) for c in classes), ColSpec("boolean", "fallback"),
                      ColSpec("boolean", "quarantined"), ColSpec("string", "reason", required=False)])
    return ModelSignature(inputs=inputs, outputs=outputs)


def log_ensemble_model(artefact_dir: Path, run_id: str, tracking, registered_name: str | None):
    """The artefact as a pyfunc model in the ensemble's run (artifact path 'model'), registered under
    `registered_name` (one new version per call) when given; an mlflow_store.LoggedModel."""
    from ens_assets import mlflow_store
    from ens_assets.inference.artefact import load_artefact

    classes = load_artefact(artefact_dir, verify=False).classes
    # Models from code: MLflow stores pyfunc_model.py, not a cloudpickle of a Python object. Requirements are
    # given, not inferred (inferring import-traces the model in a subprocess): the model needs this project.
    return mlflow_store.log_pyfunc_model(
        tracking, run_id, str(Path(__file__).with_name("pyfunc_model.py")), artifacts={ARTEFACT_KEY: artefact_dir},
        registered_name=registered_name, pip_requirements=["ens-assets"], signature=model_signature(classes),
    )  # fmt: skip


def download_registered_artefact(model_uri: str, plan=None) -> Path:
    """The artefact folder of a registered model version (models:/NAME/VERSION), downloaded to a temp folder.
    The registry is the plan's tracking store (mlflow_store.resolve_tracking), else $MLFLOW_TRACKING_URI."""
    import os

    import mlflow

    from ens_assets import mlflow_store

    parts = model_uri.removeprefix("models:/").split("/")
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"{model_uri}: expected models:/NAME/VERSION, e.g. models:/ens-assets-ensemble/3")
    if plan is not None:
        uri = mlflow_store.resolve_tracking(plan).uri
    elif os.environ.get("MLFLOW_TRACKING_URI"):
        uri = os.environ["MLFLOW_TRACKING_URI"]
    else:
        raise ValueError(f"{model_uri}: no registry to look it up in; pass --params or set MLFLOW_TRACKING_URI")
    client = mlflow_store.Tracking(uri=uri, experiment="").client()
    source = client.get_model_version_download_uri(*parts)
    target = Path(tempfile.mkdtemp(prefix="ens-assets-model-"))
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(target), tracking_uri=uri))
    found = sorted(local.rglob("ensemble.json"))
    if not found:
        raise FileNotFoundError(f"{model_uri}: no ensemble.json in the model's files ({local}); is it an ens-assets model?")
    return found[0].parent
