"""MegaDetector batch output (format 1.x) -> one table row per detection, for every manifest image.

Rows: status "ok" (one row per detection, or one row with null detection fields when nothing was
detected), "failure" (MegaDetector could not process the image; one row, `failure` holds its
message) or "not_in_json" (the image is missing from the file; one row). Both of the latter fall back
to the full frame at crop time. A detection with an impossible value (bbox outside [0, 1], NaN
confidence, unknown category) is kept with a `problem` and ignored for cropping.
"""

from __future__ import annotations

import json
import math
from pathlib import Path, PurePosixPath

import polars as pl

from ens_assets.atomic import atomic_path
from ens_assets.plan import Plan

DETECTIONS_SCHEMA = pl.Schema(
    {
        "image_id": pl.String,
        "rel_path": pl.String,
        "status": pl.String,
        "failure": pl.String,
        "category": pl.String,
        "conf": pl.Float64,
        "x": pl.Float64,
        "y": pl.Float64,
        "w": pl.Float64,
        "h": pl.Float64,
        "problem": pl.String,
    }
)
DEFAULT_CATEGORIES = {"1": "animal", "2": "person", "3": "vehicle"}
MIN_KEPT_CONF = 0.005  # what MegaDetector batch runs keep, so any threshold can be applied later
BBOX_TOLERANCE = 0.005  # MegaDetector rounds to 4 decimals; x + w may overshoot 1 by a hair
_FIX_HINT = (
    "set data.detections to a MegaDetector batch output JSON (format 1.x, e.g. from "
    "`python -m megadetector.detection.run_detector_batch MDV5A <data root> out.json "
    "--output_relative_filenames --threshold 0.005`)"
)


class DetectionsError(ValueError):
    """A detections file that cannot be used; names the file and the fix."""


def _normalise_file(name: str) -> str:
    text = str(name).replace("\\", "/")
    while text.startswith("./"):
        text = text[2:]
    return PurePosixPath(text).as_posix()


def _read_json(json_path: Path) -> dict:
    if not json_path.is_file():
        raise DetectionsError(f"{json_path}: no such file; {_FIX_HINT}")
    try:
        data = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DetectionsError(f"{json_path}: not valid JSON ({exc}); re-run MegaDetector or repair the file") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DetectionsError(f"{json_path}: no 'images' list, so this is not MegaDetector batch output; {_FIX_HINT}")
    info = data.get("info") or {}
    version = str(info.get("format_version", "1.0")) if isinstance(info, dict) else "?"
    if not version.startswith("1."):
        raise DetectionsError(
            f"{json_path}: format_version {version!r} is not supported (only 1.x); convert the file with "
            "MegaDetector's tools or re-run it"
        )
    return data


def _detection_problem(det: dict, categories: dict[str, str]) -> tuple[dict, str | None]:
    """Parse one detection; return its fields and a problem (None when usable)."""
    problems = []
    raw_category = str(det.get("category"))
    category = categories.get(raw_category, raw_category)
    if raw_category not in categories:
        problems.append(f"unknown category '{raw_category}'")
    conf = det.get("conf")
    if isinstance(conf, bool) or not isinstance(conf, (int, float)):
        problems.append("confidence is not a number")
        conf = None
    elif math.isnan(conf):
        problems.append("NaN confidence")
        conf = None
    elif not 0.0 <= conf <= 1.0:
        problems.append("confidence outside [0,1]")
    bbox = det.get("bbox")
    x = y = w = h = None
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox
    ):
        problems.append("bbox is not four numbers [x, y, w, h]")
    else:
        x, y, w, h = (float(v) for v in bbox)
        if any(math.isnan(v) for v in (x, y, w, h)):
            problems.append("NaN in bbox")
        elif (
            x < -BBOX_TOLERANCE
            or y < -BBOX_TOLERANCE
            or w <= 0
            or h <= 0
            or x + w > 1 + BBOX_TOLERANCE
            or y + h > 1 + BBOX_TOLERANCE
        ):
            problems.append("bbox outside [0,1]")
    fields = {"category": category, "conf": None if conf is None else float(conf), "x": x, "y": y, "w": w, "h": h}
    return fields, "; ".join(problems) or None


def load_detections(json_path: Path, manifest: pl.DataFrame) -> pl.DataFrame:
    """Join a MegaDetector JSON onto the manifest: one row per detection (see the module docstring)."""
    json_path = Path(json_path)
    data = _read_json(json_path)
    categories = {str(k): str(v) for k, v in (data.get("detection_categories") or DEFAULT_CATEGORIES).items()}
    entries: dict[str, dict] = {}
    for i, entry in enumerate(data["images"]):
        if not isinstance(entry, dict) or "file" not in entry:
            raise DetectionsError(f"{json_path}: images[{i}] has no 'file'; every entry names the image it describes")
        key = _normalise_file(entry["file"])
        if key in entries:
            raise DetectionsError(
                f"{json_path}: images[{i}] repeats file '{entry['file']}'; keep one entry per image (merge the runs)"
            )
        entries[key] = entry

    if entries and manifest.height and not any(rel in entries for rel in manifest["rel_path"]):
        raise DetectionsError(
            f"{json_path}: none of its {len(entries)} file names matches a manifest rel_path "
            f"(JSON has e.g. '{next(iter(entries))}', manifest has '{manifest['rel_path'][0]}'). "
            "Run MegaDetector on the data root with relative file names, or point data.root at the folder the "
            "JSON's paths are relative to"
        )

    empty = {"failure": None, "category": None, "conf": None, "x": None, "y": None, "w": None, "h": None, "problem": None}
    rows: list[dict] = []
    for image_id, rel_path in manifest.select("image_id", "rel_path").iter_rows():
        base = {"image_id": image_id, "rel_path": rel_path}
        entry = entries.get(rel_path)
        if entry is None:
            rows.append({**base, "status": "not_in_json", **empty})
            continue
        if entry.get("failure"):
            rows.append({**base, "status": "failure", **empty, "failure": str(entry["failure"])})
            continue
        detections = entry.get("detections") or []
        if not isinstance(detections, list):
            rows.append({**base, "status": "ok", **empty, "problem": "detections is not a list"})
            continue
        if not detections:
            rows.append({**base, "status": "ok", **empty})
            continue
        for det in detections:
            if not isinstance(det, dict):
                rows.append({**base, "status": "ok", **empty, "problem": "detection is not an object"})
                continue
            fields, problem = _detection_problem(det, categories)
            rows.append({**base, "status": "ok", "failure": None, **fields, "problem": problem})
    return pl.DataFrame(rows, schema=DETECTIONS_SCHEMA) if rows else pl.DataFrame(schema=DETECTIONS_SCHEMA)


def max_detection_conf(detections: pl.DataFrame) -> pl.DataFrame:
    """Per image, the highest usable animal confidence (0 when none): what older MD files stored."""
    usable = (pl.col("category") == "animal") & pl.col("problem").is_null() & pl.col("conf").is_not_null()
    return detections.group_by("image_id", maintain_order=True).agg(
        pl.col("conf").filter(usable).max().fill_null(0.0).alias("max_detection_conf")
    )


def detector_from_megadetector(manifest: pl.DataFrame, plan: Plan, out_json: Path | None = None) -> Path:
    """Run MegaDetector (optional package) on every manifest image and write its batch JSON atomically
    (default: <workdir>/megadetector.json, file names relative to the data root, everything >= 0.005).

    Raises DetectionsError explaining how to provide detections when the package or weights are missing.
    """
    try:
        from megadetector.detection import run_detector_batch  # optional dependency
    except ImportError:
        raise DetectionsError(
            "no detections available: data.detections is not set and the optional 'megadetector' package is "
            f"not installed. Either {_FIX_HINT}, or `pip install 'ens-assets[megadetector]'` and set "
            "data.megadetector_weights to a local MegaDetector model file"
        ) from None
    weights = plan.path(plan.data.megadetector_weights) if plan.data.megadetector_weights else None
    if weights is None or not weights.is_file():
        raise DetectionsError(
            f"data.megadetector_weights = {plan.data.megadetector_weights!r} is not a local file; download "
            f"MegaDetector weights once and point data.megadetector_weights at them, or {_FIX_HINT}"
        )
    out_json = Path(out_json) if out_json else plan.work / "megadetector.json"
    results = run_detector_batch.load_and_run_detector_batch(
        str(weights), manifest["path"].to_list(), confidence_threshold=MIN_KEPT_CONF
    )
    with atomic_path(out_json, suffix=".json") as tmp:
        run_detector_batch.write_results_to_file(
            results, str(tmp), relative_path_base=str(plan.data_root), detector_file=str(weights)
        )
    return out_json


def resolve_detections_json(plan: Plan, manifest: pl.DataFrame) -> Path:
    """The plan's detections JSON: the configured file, or one MegaDetector writes into the workdir."""
    if plan.data.detections:
        return plan.path(plan.data.detections)
    return detector_from_megadetector(manifest, plan)
