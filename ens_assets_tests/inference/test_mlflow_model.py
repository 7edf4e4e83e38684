"""The ensemble as one registered MLflow pyfunc model: loaded in a fresh process (and served) it gives the CLI's numbers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from ens_assets_tests.inference.project import fit_ensemble

MODEL_NAME = "ens-assets-test-ensemble"
SERVE_START_S = 120


@pytest.fixture(scope="module")
def registered(trained, tmp_path_factory):
    """The ensemble logged as its MLflow run, written as an artefact and registered (twice: two versions)."""
    from ens_assets import mlflow_store
    from ens_assets.inference.artefact import write_plan_artefact
    from ens_assets.inference.mlflow_model import log_ensemble_model

    plan = trained.plan
    tracking = mlflow_store.resolve_tracking(plan, trained.tracking_uri)
    versions = []
    for _ in range(2):  # one version per ensemble run
        built: list = []
        fit_ensemble(plan, plan.ensemble.method, plan.ensemble_dir, built)
        run_id = mlflow_store.log_ensemble_run(tracking, built[0], None, {})
        versions.append(log_ensemble_model(write_plan_artefact(plan), run_id, tracking, MODEL_NAME))
    return versions


def _model_input(plan) -> pl.DataFrame:
    """The demo test photos, one row per animal box of the demo's MegaDetector JSON (a photo without one: no box)."""
    md = json.loads(plan.path(plan.data.detections).read_text())
    entries = {e["file"]: e for e in md["images"]}
    rows = []
    for rel in pl.read_csv(plan.data_root / "test_features.csv")["filepath"].to_list():
        path = str(plan.data_root / rel)
        boxes = [d for d in (entries.get(rel, {}).get("detections") or []) if d["category"] == "1"]
        rows += [{"path": path, "x": d["bbox"][0], "y": d["bbox"][1], "w": d["bbox"][2], "h": d["bbox"][3],
                  "conf": d["conf"]} for d in boxes] or [{"path": path, "x": None, "y": None, "w": None, "h": None,
                                                          "conf": None}]
    return pl.DataFrame(rows, schema={"path": pl.String, **{c: pl.Float64 for c in ("x", "y", "w", "h", "conf")}})


def _cli_predictions(trained, model_uri: str, out: Path) -> pl.DataFrame:
    from ens_assets.cli import main

    plan = trained.plan
    code = main(["--params", str(trained.params), "predict", str(plan.data_root / "test_features.csv"),
                 "--detections", str(plan.path(plan.data.detections)), "--ensemble", model_uri, "--out", str(out),
                 "--workers", "0"])
    assert code == 0
    return pl.read_csv(out / "predictions.csv")


def _by_stem(frame: pl.DataFrame, classes: list[str]) -> dict[str, np.ndarray]:
    return {Path(name).stem: np.array(row, dtype=np.float64) for name, *row in frame.select("image", *classes).iter_rows()}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_served_registered_model_matches_the_cli(trained, registered, tmp_path):
    """`mlflow models serve -m models:/NAME/VERSION` (a fresh process loading the registered pyfunc model) on
    127.0.0.1 at a free port with --env-manager local answers one request with the CLI's numbers; always stopped."""
    assert [v.version for v in registered] == ["1", "2"]  # one version per ensemble run
    model_uri = registered[-1].registry_uri
    cli = _cli_predictions(trained, model_uri, tmp_path / "cli")
    classes = [c for c in cli.columns if c not in ("image", "top_class", "top_probability", "fallback",
                                                   "fallback_thresholds", "detector_status", "quarantined", "reason")]
    frame = _model_input(trained.plan)
    answer = _serve_and_ask(model_uri, trained.tracking_uri, frame, tmp_path / "serve.log")
    served = pl.DataFrame(answer["predictions"])
    expected, got = _by_stem(cli, classes), _by_stem(served, classes)
    assert set(got) == set(expected) and served.height == frame["path"].n_unique()
    assert max(float(np.abs(got[k] - expected[k]).max()) for k in got) < 1e-6
    assert served["top_class"].to_list() == cli["top_class"].to_list()


def _serve_and_ask(model_uri: str, tracking_uri: str, frame: pl.DataFrame, log: Path) -> dict:
    port = _free_port()
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    # As in an activated venv: mlflow starts the venv's uvicorn by name.
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri,
           "PATH": f"{mlflow_cli.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    server = subprocess.Popen([str(mlflow_cli), "models", "serve", "-m", model_uri, "-h", "127.0.0.1", "-p", str(port),
                               "--env-manager", "local", "-w", "1"], env=env, stdout=subprocess.DEVNULL,
                              stderr=open(log, "w"), start_new_session=True)
    try:
        deadline = time.monotonic() + SERVE_START_S
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "server did not answer /ping in time"
            time.sleep(0.5)
        body = json.dumps({"dataframe_split": {"columns": frame.columns, "data": frame.rows()}}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as reply:
            return json.loads(reply.read())
    finally:
        if server.poll() is None:
            os.killpg(server.pid, 15)
        server.wait(timeout=30)
