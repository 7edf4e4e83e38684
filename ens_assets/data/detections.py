"""MegaDetector batch output (format 1.0-1.5) -> one table row per detection, for every manifest image.

File names are matched to the manifest's rel_path after Unicode NFC normalisation (macOS writes NFD)
and with '/' separators; absolute or Windows paths match through their longest tail that is a
rel_path. JSON entries that describe no manifest image are counted and listed (DetectionsLoad.unmatched).
Category names are compared lower-case ("animal", "person", "vehicle"); which ones are cropped is
crops.categories.

Rows: status "ok" (one row per detection, or one row with null detection fields when nothing was
detected), "failure" (MegaDetector could not process the image; one row, `failure` holds its
message) or "not_in_json" (the image is missing from the file; one row); both of the latter fall back
to the full frame at crop time. Without a detector every image has one "no_detector" row. A detection with an impossible value (bbox outside [0, 1], NaN
confidence, unknown category) is kept with a `problem` and ignored for cropping.
"""

from __future__ import annotations

import json
import math
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import polars as pl

from ens_assets.atomic import atomic_path, write_json, write_parquet
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


def normalise_file(name: object) -> str:
    """The comparable form of an image path: NFC (macOS writes NFD), '/' separators, no leading './'."""
    text = unicodedata.normalize("NFC", str(name)).replace("\\", "/")
    while text.startswith("./"):
        text = text[2:]
    return PurePosixPath(text).as_posix() if text else text


def _path_suffixes(key: str) -> list[str]:
    """Shorter and shorter tails of a path ('C:/x/cam1/a.jpg' -> 'x/cam1/a.jpg', 'cam1/a.jpg', 'a.jpg')."""
    parts = [p for p in key.split("/") if p]
    return ["/".join(parts[i:]) for i in range(1, len(parts))]


def _read_json(json_path: Path) -> dict:
    if not json_path.is_file():
        raise DetectionsError(f"{json_path}: no such file; {_FIX_HINT}")
    try:
        data = json.loads(json_path.read_text(encoding="utf-8-sig"))  # -sig: tolerate a Windows BOM
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DetectionsError(f"{json_path}: not valid JSON ({exc}); re-run MegaDetector or repair the file") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DetectionsError(f"{json_path}: no 'images' list, so this is not MegaDetector batch output; {_FIX_HINT}")
    version = format_version(data)
    if not version.startswith("1."):
        raise DetectionsError(
            f"{json_path}: format_version {version!r} is not supported (only 1.x); convert the file with "
            "MegaDetector's tools or re-run it"
        )
    return data


def format_version(data: dict) -> str:
    """The file's format_version as text ('1.0' when absent, as in the earliest batch files)."""
    info = data.get("info") or {}
    if not isinstance(info, dict):
        return "?"
    version = info.get("format_version", "1.0")
    return f"{version:.1f}" if isinstance(version, float) else str(version).strip()


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


@dataclass
class DetectionsLoad:
    """A MegaDetector file joined onto the manifest, with what did not join."""

    table: pl.DataFrame  # DETECTIONS_SCHEMA, one row per detection of every manifest image
    format_version: str
    n_entries: int
    # JSON entries that describe no manifest image: {"file": as written, "reason": why}
    unmatched: list[dict] = field(default_factory=list)
    matched_by_suffix: int = 0  # entries matched through an absolute path or an extra leading folder

    def summary(self) -> dict:
        per_status = self.table.unique("image_id").group_by("status").len().sort("status")
        return {
            "format_version": self.format_version,
            "n_entries": self.n_entries,
            "n_images": self.table["image_id"].n_unique(),
            "images_by_status": dict(per_status.iter_rows()),
            "n_unmatched_entries": len(self.unmatched),
            "unmatched_entries": self.unmatched,
            "n_matched_by_path_suffix": self.matched_by_suffix,
        }


def _match_entries(json_path: Path, images: list, manifest: pl.DataFrame) -> tuple[dict[str, dict], list[dict], int]:
    """manifest rel_path -> JSON entry. Names are compared after normalise_file on both sides; an entry
    that is not a manifest rel_path matches through its longest tail that is (absolute paths, Windows
    drives, a parent folder MegaDetector was run from)."""
    index: dict[str, str] = {}
    for rel in manifest["rel_path"]:
        index.setdefault(normalise_file(rel), rel)
    keyed: dict[str, tuple[int, dict]] = {}
    for i, entry in enumerate(images):
        if not isinstance(entry, dict) or "file" not in entry:
            raise DetectionsError(f"{json_path}: images[{i}] has no 'file'; every entry names the image it describes")
        key = normalise_file(entry["file"])
        if key in keyed:
            raise DetectionsError(
                f"{json_path}: images[{i}] repeats file '{entry['file']}'; keep one entry per image (merge the runs)"
            )
        keyed[key] = (i, entry)
    matched: dict[str, dict] = {}
    unmatched: list[dict] = []
    leftovers = []
    for key, (_, entry) in keyed.items():  # exact names first, so they win over a tail match
        if key in index:
            matched[index[key]] = entry
        else:
            leftovers.append((key, entry))
    by_suffix = 0
    for key, entry in leftovers:
        rel = next((index[tail] for tail in _path_suffixes(key) if tail in index), None)
        if rel is None:
            unmatched.append({"file": str(entry["file"]), "reason": "no manifest image has this path"})
        elif rel in matched:
            unmatched.append({"file": str(entry["file"]), "reason": f"another entry already describes '{rel}'"})
        else:
            matched[rel] = entry
            by_suffix += 1
    return matched, unmatched, by_suffix


def read_detections(json_path: Path, manifest: pl.DataFrame) -> DetectionsLoad:
    """Join a MegaDetector JSON (format 1.0-1.5) onto the manifest (see the module docstring)."""
    json_path = Path(json_path)
    data = _read_json(json_path)
    categories = {
        str(k): str(v).strip().lower() for k, v in (data.get("detection_categories") or DEFAULT_CATEGORIES).items()
    }
    entries, unmatched, by_suffix = _match_entries(json_path, data["images"], manifest)
    if data["images"] and manifest.height and not entries:
        example = next((e["file"] for e in data["images"]), "")
        raise DetectionsError(
            f"{json_path}: none of its {len(data['images'])} file names matches a manifest rel_path "
            f"(JSON has e.g. '{example}', manifest has '{manifest['rel_path'][0]}'). "
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
    table = pl.DataFrame(rows, schema=DETECTIONS_SCHEMA) if rows else pl.DataFrame(schema=DETECTIONS_SCHEMA)
    return DetectionsLoad(table, format_version(data), len(data["images"]), unmatched, by_suffix)


def load_detections(json_path: Path, manifest: pl.DataFrame) -> pl.DataFrame:
    """The detections table of read_detections (one row per detection, for every manifest image)."""
    return read_detections(json_path, manifest).table


def write_detection_table(plan: Plan, frame: pl.DataFrame, summary: dict) -> None:
    """The detections table (detections.parquet) and its summary (detections.json), each written atomically."""
    write_parquet(plan.detections_path, frame)
    write_json(plan.detections_summary_path, summary)


def read_detection_table(plan: Plan) -> pl.DataFrame:
    """The detections table the detections asset wrote; a clear error when it has not run."""
    if not plan.detections_path.is_file():
        raise FileNotFoundError(f"{plan.detections_path}: no detections table; materialize the detections asset first")
    return pl.read_parquet(plan.detections_path)


def no_detector_table(manifest: pl.DataFrame) -> pl.DataFrame:
    """The detections of a plan without a detector: one 'no_detector' row per image (whole frames)."""
    return pl.DataFrame(
        {"image_id": manifest["image_id"], "rel_path": manifest["rel_path"], "status": ["no_detector"] * manifest.height},
        schema_overrides={"status": pl.String},
    ).with_columns(
        [pl.lit(None, dtype=dtype).alias(name) for name, dtype in DETECTIONS_SCHEMA.items() if name not in ("image_id", "rel_path", "status")]
    ).select(list(DETECTIONS_SCHEMA))


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
