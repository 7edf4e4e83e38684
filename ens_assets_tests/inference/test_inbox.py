"""A batch folder dropped into the inbox: the sensor adds its partition and requests a run (on a real SQLite
instance), the run writes predictions + a valid MegaDetector JSON, and running the batch again changes nothing."""

from __future__ import annotations

import json
import os
import shutil

import dagster as dg
import polars as pl
import pytest

from ens_assets_tests.data.exif_photos import write_photo
from ens_assets_tests.instance_home import make_dagster_home


@pytest.fixture(scope="module")
def instance_and_defs(trained, tmp_path_factory):
    from ens_assets.defs.build import build_definitions

    home = make_dagster_home(tmp_path_factory.mktemp("inbox_home"))
    old = os.environ.get("DAGSTER_HOME")
    os.environ["DAGSTER_HOME"] = str(home)
    try:
        with dg.DagsterInstance.get() as instance:
            yield instance, build_definitions(trained.params)
    finally:
        if old is None:
            os.environ.pop("DAGSTER_HOME", None)
        else:
            os.environ["DAGSTER_HOME"] = old


def _drop_batch(plan, name: str, marker: bool) -> list[str]:
    """A batch like an SD card: demo test photos with their MegaDetector entries, an EXIF photo, a corrupt file."""
    folder = plan.path(plan.inference.inbox) / name
    md = json.loads(plan.path(plan.data.detections).read_text())
    rels = pl.read_csv(plan.data_root / "test_features.csv")["filepath"].to_list()[:6]
    entries = {e["file"]: e for e in md["images"]}
    (folder / "DCIM").mkdir(parents=True)
    images = []
    for rel in rels:
        shutil.copy2(plan.data_root / rel, folder / "DCIM" / os.path.basename(rel))
        images.append({**entries[rel], "file": f"DCIM/{os.path.basename(rel)}"})
    write_photo(folder / "DCIM" / "IMG_9001.JPG", seed=9, size=(101, 67))
    (folder / "DCIM" / "IMG_9002.JPG").write_bytes(b"\xff\xd8\xff truncated")
    (folder / "megadetector.json").write_text(json.dumps({**md, "images": images}))
    if marker:
        (folder / plan.inference.complete_marker).write_text("")
    return sorted(p.relative_to(folder).as_posix() for p in (folder / "DCIM").iterdir())


def _evaluate(defs, instance) -> dg.SensorResult | dg.SkipReason:
    """One tick of the sensor as Dagster's testing API runs it, reading partitions from the SQLite instance."""
    sensor = defs.resolve_sensor_def("inbox_sensor")
    return sensor(dg.build_sensor_context(instance=instance, definitions=defs))


def test_inbox_batch_is_sensed_run_and_idempotent(trained, instance_and_defs):
    from megadetector.postprocessing.validate_batch_results import ValidateBatchResultsOptions, validate_batch_results

    from ens_assets.defs.inference_assets import INBOX_PARTITIONS
    from ens_assets.inference.inbox import batch_output_dir

    instance, defs = instance_and_defs
    plan = trained.plan
    # The ensemble asset writes the artefact the predictions load (and registers its MLflow model).
    ensemble = defs.resolve_job_def("ensemble_job").execute_in_process(instance=instance,
                                                                       asset_selection=[dg.AssetKey("ensemble")])
    assert ensemble.success
    model_uri = ensemble.asset_materializations_for_node("ensemble")[0].metadata["model_uri"].value
    assert model_uri.startswith("models:/ens-assets-ensemble/")

    photos = _drop_batch(plan, "card-07", marker=True)
    _drop_batch(plan, "card-08", marker=False)  # still copying: no marker, files just written
    result = _evaluate(defs, instance)
    assert [r.partition_key for r in result.run_requests] == ["card-07"]
    instance.add_dynamic_partitions(INBOX_PARTITIONS, result.dynamic_partitions_requests[0].partition_keys)
    assert instance.get_dynamic_partitions(INBOX_PARTITIONS) == ["card-07"]

    request = result.run_requests[0]
    run = defs.resolve_job_def("batch_predictions_job").execute_in_process(
        instance=instance, partition_key=request.partition_key, tags=request.tags)
    assert run.success
    out = batch_output_dir(plan, "card-07")
    table = pl.read_csv(out / "predictions.csv")
    assert table["image"].to_list() == photos  # every photo: predicted or listed with its reason
    assert table.filter(pl.col("quarantined"))["image"].to_list() == ["DCIM/IMG_9002.JPG"]
    options = ValidateBatchResultsOptions()
    options.raise_errors, options.check_image_existence = True, True
    options.relative_path_base = str(plan.path(plan.inference.inbox) / "card-07")
    checked = validate_batch_results(str(out / "md_predictions.json"), options)["validation_results"]
    assert not checked["errors"] and sum(checked["classification_category_id_to_count"].values()) > 0
    metadata = run.asset_materializations_for_node("predictions")[0].metadata
    assert metadata["images"].value == len(photos) and metadata["quarantined"].value == 1
    assert sum(metadata["class_counts"].data.values()) == len(photos) - 1
    assert "top_probability" in metadata["least_confident"].value
    assert metadata["fallbacks"].value >= 1  # the EXIF photo has no MegaDetector entry: full frame

    # Unchanged batch: the same run key (never run twice by the daemon); a rerun writes the same predictions.
    again = _evaluate(defs, instance)
    assert [r.run_key for r in again.run_requests] == [request.run_key] and not again.dynamic_partitions_requests
    before = (out / "predictions.csv").read_bytes()
    rerun = defs.resolve_job_def("batch_predictions_job").execute_in_process(instance=instance, partition_key="card-07")
    assert rerun.success and (out / "predictions.csv").read_bytes() == before
    assert not list(out.parent.glob(".card-07.building-*"))  # the swap left no half-built folder
