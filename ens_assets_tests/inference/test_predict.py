"""`ens-assets predict` on the demo test split gives the ensemble's own test predictions, for every combiner."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from PIL import Image

from ens_assets.ensemble.combiners import METHODS
from ens_assets_tests.data.exif_photos import write_photo
from ens_assets_tests.inference.project import fit_ensemble

TOLERANCE = 1e-6


def _submission(ensemble_dir) -> dict[str, np.ndarray]:
    frame = pl.read_csv(ensemble_dir / "submission.csv")
    classes = [c for c in frame.columns if c != "id"]
    return {r[0]: np.array(r[1:], dtype=np.float64) for r in frame.select("id", *classes).iter_rows()}, classes


def _assert_matches(predictions: pl.DataFrame, ensemble_dir, quarantined_ids=()) -> None:
    expected, classes = _submission(ensemble_dir)
    ok = predictions.filter(~pl.col("quarantined"))
    got = {name.rsplit("/", 1)[-1].rsplit(".", 1)[0]: np.array(row, dtype=np.float64)
           for name, *row in ok.select("image", *classes).iter_rows()}
    assert set(got) | set(quarantined_ids) == set(expected)
    worst = max(float(np.abs(got[i] - expected[i]).max()) for i in got)
    assert worst < TOLERANCE, f"largest difference from the ensemble's test predictions: {worst:.2e}"


def test_small_inputs_are_decoded_in_process_larger_ones_by_workers():
    from ens_assets.inference.loader import IN_PROCESS_MAX_PHOTOS, decode_workers, default_workers

    assert decode_workers(IN_PROCESS_MAX_PHOTOS) == 0  # no worker start-up for a small batch of photos
    assert decode_workers(IN_PROCESS_MAX_PHOTOS + 1) == default_workers()
    assert decode_workers(10, requested=2) == 2 and decode_workers(10_000, requested=0) == 0  # --workers wins


def _test_csv(plan):
    return plan.data_root / "test_features.csv"


def test_cli_predict_matches_the_ensembles_test_predictions(trained, tmp_path, capsys):
    from ens_assets.cli import main

    plan = trained.plan
    fit_ensemble(plan, plan.ensemble.method, plan.ensemble_dir)
    out = tmp_path / "out"
    code = main(["--params", str(trained.params), "predict", str(_test_csv(plan)),
                 "--detections", str(plan.path(plan.data.detections)), "--out", str(out), "--workers", "2"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "images/s" in printed.out
    table = pl.read_csv(out / "predictions.csv")
    assert table.columns[:3] == ["image", "top_class", "top_probability"]
    assert {"fallback", "fallback_thresholds", "quarantined", "reason"} <= set(table.columns)
    _assert_matches(table.with_columns(pl.col("quarantined").cast(pl.Boolean)), plan.ensemble_dir)
    assert set(table["detector_status"]) <= {"ok", "failure", "not_in_json"}
    assert table.filter(pl.col("detector_status") != "ok")["fallback"].all()  # no boxes: the full frame


@pytest.mark.parametrize("method", [m for m in METHODS])
def test_every_combiner_matches_its_test_predictions(trained, tmp_path, method):
    from ens_assets.inference.artefact import artefact_from_plan
    from ens_assets.inference.batch import predict_batch

    plan = trained.plan
    fitted = fit_ensemble(plan, method, tmp_path / "ensemble")
    artefact = artefact_from_plan(plan, fitted)
    assert artefact.method == method
    outputs = predict_batch(_test_csv(plan), tmp_path / "out", detections=plan.path(plan.data.detections),
                            ensemble=artefact, workers=0)
    _assert_matches(outputs.table, fitted)


def test_real_looking_photos_and_a_corrupt_file(trained, tmp_path):
    """EXIF JPEGs of odd sizes (one rotated by its EXIF tag), no detections: full frames, said so; the corrupt
    file is listed with its reason, never dropped; the JSON passes MegaDetector's own validator."""
    from megadetector.postprocessing.validate_batch_results import ValidateBatchResultsOptions, validate_batch_results

    from ens_assets.inference.batch import predict_batch

    inbox = tmp_path / "card"
    write_photo(inbox / "cam1" / "IMG_0001.JPG", seed=1, size=(97, 61))
    write_photo(inbox / "cam1" / "IMG_0002.JPG", seed=2, size=(33, 150))
    rotated = inbox / "cam2" / "IMG_0003.jpg"
    write_photo(rotated, seed=3, size=(80, 45))
    with Image.open(rotated) as image:
        exif = image.getexif()
        exif[0x0112] = 6  # Orientation: rotate 90 degrees on display
        image.save(rotated, "JPEG", exif=exif)
    (inbox / "cam2" / "IMG_0004.JPG").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (inbox / "notes.txt").write_text("SD card 7, May")
    fit_ensemble(trained.plan, trained.plan.ensemble.method, trained.plan.ensemble_dir)
    outputs = predict_batch(inbox, tmp_path / "out", plan=trained.plan, workers=0)
    table = outputs.table
    assert table["image"].to_list() == ["cam1/IMG_0001.JPG", "cam1/IMG_0002.JPG", "cam2/IMG_0003.jpg",
                                        "cam2/IMG_0004.JPG"]
    bad = table.filter(pl.col("quarantined"))
    assert bad["image"].to_list() == ["cam2/IMG_0004.JPG"] and "re-" in bad["reason"][0]
    good = table.filter(~pl.col("quarantined"))
    classes = [c for c in table.columns if c not in (
        "image", "top_class", "top_probability", "fallback", "fallback_thresholds", "detector_status", "quarantined",
        "reason")]
    assert np.allclose(good.select(classes).to_numpy().sum(axis=1), 1.0)
    assert good["fallback"].all() and any("full frame" in n for n in outputs.summary["notes"])
    assert any("not photos" in n for n in outputs.summary["notes"])
    assert outputs.summary["quarantined"] == [{"image": "cam2/IMG_0004.JPG", "reason": bad["reason"][0]}]
    options = ValidateBatchResultsOptions()
    options.raise_errors = True
    options.check_image_existence = True
    options.relative_path_base = str(inbox)
    result = validate_batch_results(str(outputs.paths["megadetector"]), options)["validation_results"]
    assert not result["errors"] and not result["warnings"], result
    md = json.loads(outputs.paths["megadetector"].read_text())
    assert md["info"]["format_version"] == "1.4"
    whole = _whole_image_detections(md, table)  # no detections given: every photo was classified whole
    assert whole == (good["top_class"] != "blank").sum()
    assert set(md["classification_categories"].values()) == set(classes)
    failed = [i for i in md["images"] if i.get("failure")]
    assert [i["file"] for i in failed] == ["cam2/IMG_0004.JPG"]


def test_megadetector_json_carries_classifications_on_cropped_boxes(trained, tmp_path):
    from megadetector.postprocessing.validate_batch_results import ValidateBatchResultsOptions, validate_batch_results

    from ens_assets.inference.batch import predict_batch

    plan = trained.plan
    fit_ensemble(plan, plan.ensemble.method, plan.ensemble_dir)
    outputs = predict_batch(_test_csv(plan), tmp_path / "out", detections=plan.path(plan.data.detections), plan=plan,
                            workers=0)
    options = ValidateBatchResultsOptions()
    options.raise_errors = True
    result = validate_batch_results(str(outputs.paths["megadetector"]), options)["validation_results"]
    assert not result["errors"] and not result["warnings"], result
    assert sum(result["classification_category_id_to_count"].values()) > 0
    md = json.loads(outputs.paths["megadetector"].read_text())
    classified = [d for i in md["images"] for d in (i.get("detections") or []) if "classifications" in d]
    assert classified
    for detection in classified:
        confs = [c for _, c in detection["classifications"]]
        assert confs == sorted(confs, reverse=True) and set(detection) >= {"category", "conf", "bbox"}
    by_file = {i["file"]: i for i in md["images"]}
    for row in outputs.table.filter(~pl.col("fallback")).iter_rows(named=True):
        top = [d for d in by_file[row["image"]]["detections"] if "classifications" in d]
        assert top and md["classification_categories"][top[0]["classifications"][0][0]] == row["top_class"]
    assert _whole_image_detections(md, outputs.table) > 0  # the demo's not_in_json photos and tiny boxes


def _whole_image_detections(md: dict, table: pl.DataFrame) -> int:
    """Every readable photo no member cropped a box of carries its classification on one whole-image detection
    (category 'unknown', bbox [0, 0, 1, 1], conf = the top probability), as MegaDetector's own converter writes
    whole-image classifications; unless its top class is blank, or the detector failed on it. Returns how many."""
    by_file = {i["file"]: i for i in md["images"]}
    whole_count = 0
    for row in table.filter(~pl.col("quarantined")).iter_rows(named=True):
        detections = by_file[row["image"]]["detections"]
        if detections is None:
            assert row["detector_status"] == "failure"
            continue
        whole = [d for d in detections if md["detection_categories"][d["category"]] == "unknown"]
        boxes = [d for d in detections if d not in whole and "classifications" in d]
        if boxes or row["top_class"] == "blank":
            assert not whole, (row, detections)
            continue
        assert len(whole) == 1, (row, detections)
        [detection] = whole
        assert detection["bbox"] == [0.0, 0.0, 1.0, 1.0] and detection["conf"] == round(row["top_probability"], 4)
        assert md["classification_categories"][detection["classifications"][0][0]] == row["top_class"]
        whole_count += 1
    return whole_count


def test_megadetector_json_text_is_the_json_one_image_per_line():
    from ens_assets.inference.outputs import megadetector_json_text

    md = {"info": {"format_version": "1.4"}, "detection_categories": {"1": "animal"},
          "classification_categories": {"0": "leopard"},
          "images": [{"file": "a/IMG_1.JPG", "detections": [{"category": "1", "conf": 0.5, "bbox": [0.1, 0.2, 0.3, 0.4],
                                                              "classifications": [["0", 0.9]]}]},
                     {"file": "IMG_2.JPG", "failure": "unreadable", "detections": None}]}
    text = megadetector_json_text(md)
    assert json.loads(text) == md
    lines = text.splitlines()
    assert [line for line in lines if '"file"' in line] == [json.dumps(i, sort_keys=True) + "," * (k == 0)
                                                           for k, i in enumerate(md["images"])]
    assert json.loads(megadetector_json_text({**md, "images": []})) == {**md, "images": []}
