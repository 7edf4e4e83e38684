"""Scale-out: the Celery and Kubernetes definitions load with the real libraries, route the training step to
GPU workers, and the instance configs in deploy/ (and dagster_home/) pass Dagster's instance config schema."""

from __future__ import annotations

import importlib
import json
import sys
from importlib.metadata import version
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._config import validate_config
from dagster._core.instance.config import dagster_instance_config

from ens_assets.scaleout import GPU_STEP_OP_TAGS, ScaleoutUnavailable, build_scaleout_definitions
from ens_assets_tests.orchestration.test_selection import EVERY_ASSET

REPO_ROOT = Path(__file__).resolve().parents[2]
INSTANCE_CONFIGS = [
    REPO_ROOT / "dagster_home" / "dagster.yaml",
    REPO_ROOT / "deploy" / "dagster-celery.yaml",
    REPO_ROOT / "deploy" / "dagster-k8s.yaml",
]


def test_scaleout_libraries_pair_with_dagster() -> None:
    minor_patch = version("dagster").split(".", 1)[1]  # dagster 1.13.N <-> libraries 0.29.N
    for library in ("dagster-celery", "dagster-k8s", "dagster-postgres"):
        assert version(library).split(".", 1)[1].startswith("29."), f"{library} {version(library)} vs dagster {version('dagster')}"
        assert version(library).split(".")[2] == minor_patch.split(".")[1]
    assert version("antlr4-python3-runtime").startswith("4.13.")


@pytest.fixture(scope="module", params=["celery", "k8s"])
def scaleout(request) -> tuple[str, dg.Definitions]:
    return request.param, build_scaleout_definitions(request.param, REPO_ROOT / "params.yaml")


def test_every_job_runs_on_the_engine(scaleout) -> None:
    engine, defs = scaleout
    for job in ("data_job", "crops_job", "checkpoints_job", "predictions_job", "ensemble_job"):
        assert defs.resolve_job_def(job).executor_def.name == engine
    assert {s.name for s in defs.schedules} == {"nightly_training", "morning_predictions"}
    assert {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()} == EVERY_ASSET


def test_only_the_training_step_goes_to_gpu_workers(scaleout) -> None:
    _, defs = scaleout
    job = defs.resolve_job_def("checkpoints_job")
    node = job.graph.node_named("checkpoints")
    assert node.definition.pool == "gpu"
    assert node.tags["dagster-celery/queue"] == "gpu"
    assert json.loads(node.tags["dagster-k8s/config"]) == GPU_STEP_OP_TAGS["dagster-k8s/config"]
    for other in ("data_job", "ensemble_job", "predictions_job"):
        for node in defs.resolve_job_def(other).graph.nodes:
            assert "dagster-celery/queue" not in node.tags and "dagster-k8s/config" not in node.tags, node.name


def test_k8s_reads_a_gpu_request_from_the_checkpoints_tag() -> None:
    from dagster_k8s.job import get_user_defined_k8s_config

    defs = build_scaleout_definitions("k8s", REPO_ROOT / "params.yaml")
    tags = defs.resolve_job_def("checkpoints_job").graph.node_named("checkpoints").tags
    config = get_user_defined_k8s_config(tags)
    assert config.container_config["resources"]["limits"] == {"nvidia.com/gpu": "1"}


def test_missing_library_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "dagster_celery", None)  # what an uninstalled package looks like to import
    with pytest.raises(ScaleoutUnavailable, match=r'pip install -e "\.\[scaleout\]"'):
        build_scaleout_definitions("celery", REPO_ROOT / "params.yaml")
    with pytest.raises(ValueError, match="unknown scale-out engine 'dask'"):
        build_scaleout_definitions("dask", REPO_ROOT / "params.yaml")  # type: ignore[arg-type]


@pytest.mark.parametrize("path", INSTANCE_CONFIGS, ids=lambda p: p.name)
def test_instance_config_passes_dagsters_schema(path: Path) -> None:
    config, _ = dagster_instance_config(str(path.parent), config_filename=path.name)
    assert config["concurrency"]["pools"]["default_limit"] == 1
    assert config["run_monitoring"]["enabled"] is True
    raw = yaml.safe_load(path.read_text())
    # Pluggable classes are only shape-checked above; validate their own config against the class's schema.
    for section in ("run_launcher", "run_coordinator"):
        if section not in raw:
            continue
        cls = getattr(importlib.import_module(raw[section]["module"]), raw[section]["class"])
        result = validate_config(cls.config_type(), raw[section].get("config") or {})
        assert result.success, f"{path.name} {section}: {[e.message for e in result.errors]}"


def test_deploy_configs_share_postgres_storage() -> None:
    for path in INSTANCE_CONFIGS[1:]:
        storage = yaml.safe_load(path.read_text())["storage"]
        assert set(storage) == {"postgres"}
        assert storage["postgres"]["postgres_db"]["password"] == {"env": "DAGSTER_PG_PASSWORD"}, "credentials come from env vars"


def test_a_bad_instance_config_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "dagster.yaml").write_text("run_monitoring:\n  enabled: sometimes\n")
    with pytest.raises(dg.DagsterInvalidConfigError):
        dagster_instance_config(str(tmp_path))


def test_workers_and_executor_share_the_celery_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """deploy/celery-worker.yaml is what the executor uses: steps acknowledged late, so a dead worker's step runs again."""
    from dagster_celery.cli import get_validated_config

    from ens_assets.scaleout_services import celery_settings

    path = REPO_ROOT / "deploy" / "celery-worker.yaml"
    assert yaml.safe_load(path.read_text())["execution"]["config"]["config_source"] == celery_settings()
    monkeypatch.setenv("DAGSTER_CELERY_BROKER_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("DAGSTER_CELERY_BACKEND_URL", "redis://127.0.0.1:1/1")
    assert get_validated_config(str(path))["broker"] == "redis://127.0.0.1:1/0"
    from ens_assets.scaleout import celery_executor_config

    assert celery_executor_config() == {
        "broker": "redis://127.0.0.1:1/0", "backend": "redis://127.0.0.1:1/1", "config_source": celery_settings(),
    }  # fmt: skip
    assert celery_settings()["task_annotations"]["execute_plan"] == {"acks_late": True, "reject_on_worker_lost": True}
