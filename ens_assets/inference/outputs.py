"""What `predict` writes: predictions.csv, a MegaDetector batch JSON with classifications, summary.json.

The JSON is MegaDetector batch output format 1.4 (what Timelapse, AddaxAI and the MegaDetector
postprocessing tools read): the input's detections, each box some member cropped carrying the ensemble's
`classifications` ([[class id, probability], ...], most probable first), `classification_categories` naming
the classes. An unreadable photo is an image entry with a `failure` and no detections.

A photo classified on its full frame only (no box cropped by any member) gets one whole-image detection
(bbox [0, 0, 1, 1], conf = its top class's probability, category `unknown`, a detection category added for
it) that carries the classifications, unless its top class is a blank one: what the MegaDetector package does
when it converts whole-image SpeciesNet classifications to this format
(megadetector.utils.wi_taxonomy_utils.generate_md_results_from_predictions_json, behind speciesnet_to_md),
so Timelapse, AddaxAI and the postprocessing tools show the classification instead of an empty image.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from ens_assets.atomic import atomic_path, write_json, write_text
from ens_assets.inference.predict import Predictions

MD_FORMAT_VERSION = "1.4"
PREDICTIONS_FILE, DETECTIONS_FILE, SUMMARY_FILE = "predictions.csv", "md_predictions.json", "summary.json"
LEAST_CONFIDENT = 10
WHOLE_IMAGE_BBOX = [0.0, 0.0, 1.0, 1.0]
WHOLE_IMAGE_CATEGORY = "unknown"  # the detection category name MegaDetector's converter gives whole-image boxes
BLANK_CLASSES = ("blank", "empty")  # a top class so named: no animal, so no whole-image detection (as MD's)


@dataclass
class PredictOutputs:
    table: pl.DataFrame
    md: dict[str, Any]
    summary: dict[str, Any]
    paths: dict[str, Path]


def predictions_table(result: Predictions) -> pl.DataFrame:
    """One row per photo: image, top class, its probability, one column per class, fallback/quarantine flags."""
    probs = result.probs
    readable = np.array([p is None for p in result.problem], dtype=bool)
    top = np.where(readable, np.nanargmax(np.where(readable[:, None], probs, 0.0), axis=1), -1)
    frame = pl.DataFrame({
        "image": [i.name for i in result.images],
        "top_class": [result.classes[t] if t >= 0 else None for t in top],
        "top_probability": [float(probs[i, t]) if t >= 0 else None for i, t in enumerate(top)],
    }, schema={"image": pl.String, "top_class": pl.String, "top_probability": pl.Float64})
    columns = [pl.Series(c, np.where(readable, probs[:, k], np.nan), dtype=pl.Float64).fill_nan(None)
               for k, c in enumerate(result.classes)]
    flags = pl.DataFrame({
        "fallback": [bool(f) for f in result.fallback],
        "fallback_thresholds": [",".join(f) for f in result.fallback],
        "detector_status": [result.detections.status.get(i.name, "none") for i in result.images],
        "quarantined": [p is not None for p in result.problem],
        "reason": result.problem,
    }, schema={"fallback": pl.Boolean, "fallback_thresholds": pl.String, "detector_status": pl.String,
               "quarantined": pl.Boolean, "reason": pl.String})
    return pl.concat([frame.with_columns(columns), flags], how="horizontal")


def megadetector_json(result: Predictions) -> dict[str, Any]:
    """MegaDetector batch output 1.4 with per-detection classifications (see the module docstring)."""
    categories = dict(result.detections.categories)
    id_of_category = {name.strip().lower(): cid for cid, name in categories.items()}
    whole_image_category = None
    boxes: dict[str, list[tuple]] = {}
    for name, category, conf, x, y, w, h in result.detections.table.iter_rows():
        boxes.setdefault(name, []).append((category, conf, x, y, w, h))
    images = []
    for i, image in enumerate(result.images):
        entry: dict[str, Any] = {"file": image.name}
        if result.problem[i] is not None:
            images.append({**entry, "failure": result.problem[i], "detections": None})
            continue
        if image.name in result.detections.failure:
            entry["failure"] = result.detections.failure[image.name]
        # Ranked on the unrounded probabilities (stable: ties keep class order, as the CSV's argmax does).
        order = sorted(range(len(result.classes)), key=lambda k: -result.probs[i, k])
        classifications = [[str(k), round(float(result.probs[i, k]), 4)] for k in order if result.probs[i, k] >= 5e-5]
        used = {(round(b[1], 6), round(b[2], 6), round(b[3], 6), round(b[4], 6)) for b in result.boxes_used[i]}
        detections = []
        for category, conf, x, y, w, h in boxes.get(image.name, []):
            detection = {"category": id_of_category.get(category, category), "conf": round(conf, 4),
                         "bbox": [round(x, 4), round(y, 4), round(w, 4), round(h, 4)]}
            if (round(x, 6), round(y, 6), round(w, 6), round(h, 6)) in used:
                detection["classifications"] = classifications
            detections.append(detection)
        if "failure" not in entry and not result.boxes_used[i] and classifications \
                and result.classes[order[0]].strip().lower() not in BLANK_CLASSES:
            if whole_image_category is None:
                whole_image_category = _category_id(categories, WHOLE_IMAGE_CATEGORY)
            detections.append({"category": whole_image_category, "conf": classifications[0][1],
                               "bbox": list(WHOLE_IMAGE_BBOX), "classifications": classifications})
        entry["detections"] = None if "failure" in entry else detections
        images.append(entry)
    info = {
        "format_version": MD_FORMAT_VERSION,
        "detector": (result.detections.info or {}).get("detector", "none: full frames classified"),
        "classifier": f"ens-assets ensemble {result.artefact.version} ({result.artefact.method})",
        "classification_completion_time": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        "classifier_metadata": {"members": [m.key for m in result.artefact.members],
                                "ensemble": result.artefact.source},
    }
    return {"info": info, "detection_categories": categories,
            "classification_categories": {str(k): c for k, c in enumerate(result.classes)}, "images": images}


def megadetector_json_text(md: dict[str, Any]) -> str:
    """The JSON text: one image per line, the header indented. An indented dump runs Python's pure-Python
    encoder over every detection (a third of the time spent outside the models for 160 photos, bench_predict);
    each line here is one call of the C encoder, and the file stays readable and greppable by image."""
    head = json.dumps({k: v for k, v in md.items() if k != "images"}, indent=1, sort_keys=True, default=str)
    images = ",\n".join(json.dumps(image, sort_keys=True, default=str) for image in md["images"])
    return f'{head[:-2]},\n "images": [\n{images}\n ]\n}}\n'


def _category_id(categories: dict[str, str], name: str) -> str:
    """The id of the detection category `name`, added to `categories` (the next integer id) when missing."""
    for cid, existing in categories.items():
        if existing.strip().lower() == name:
            return cid
    cid = str(max((int(c) for c in categories if c.isdigit()), default=0) + 1)
    categories[cid] = name
    return cid


def least_confident(table: pl.DataFrame, n: int = LEAST_CONFIDENT) -> pl.DataFrame:
    return (table.filter(~pl.col("quarantined")).sort("top_probability").head(n)
            .select("image", "top_class", "top_probability", "fallback"))


def batch_summary(result: Predictions, table: pl.DataFrame) -> dict[str, Any]:
    counts = table.filter(~pl.col("quarantined")).group_by("top_class").len().sort("top_class")
    return {
        "images": len(result.images),
        "predicted": int((~table["quarantined"]).sum()),
        "fallbacks": int(table["fallback"].sum()),
        "quarantined": [{"image": i, "reason": r} for i, r in
                        table.filter(pl.col("quarantined")).select("image", "reason").iter_rows()],
        "class_counts": dict(counts.iter_rows()),
        "ensemble": {"version": result.artefact.version, "method": result.artefact.method,
                     "source": result.artefact.source},
        "detections": result.detections.source,
        "unmatched_detection_entries": len(result.detections.unmatched),
        "seconds": round(result.seconds, 3),
        "images_per_second": round(result.images_per_second, 2),
        "notes": result.notes,
    }


def write_outputs(result: Predictions, out_dir: str | Path) -> PredictOutputs:
    """predictions.csv, md_predictions.json and summary.json in out_dir, each written atomically."""
    out_dir = Path(out_dir)
    table = predictions_table(result)
    md = megadetector_json(result)
    summary = batch_summary(result, table)
    with atomic_path(out_dir / PREDICTIONS_FILE, suffix=".csv") as tmp:
        table.write_csv(tmp)
    paths = {"predictions": out_dir / PREDICTIONS_FILE,
             "megadetector": write_text(out_dir / DETECTIONS_FILE, megadetector_json_text(md)),
             "summary": write_json(out_dir / SUMMARY_FILE, summary)}
    return PredictOutputs(table, md, summary, paths)
