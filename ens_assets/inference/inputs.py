"""What `predict` is given: the images (a folder, recursive, or a CSV of paths) and their MegaDetector boxes."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from ens_assets.data.crops import usable_boxes
from ens_assets.data.detections import DEFAULT_CATEGORIES, DetectionsError, normalise_file, read_detections
from ens_assets.inference.artefact import CropRule

# What a folder listing treats as a photo; anything else in the folder is counted and named, not read.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
PATH_COLUMNS = ("path", "filepath", "file", "file_name", "image")


class InputError(ValueError):
    """Images or detections that cannot be read; the message names the file and the fix."""


@dataclass(frozen=True)
class ImageInput:
    name: str  # as written in the outputs and matched to the MegaDetector JSON: relative, '/' separators
    path: Path


@dataclass
class ImageList:
    images: list[ImageInput]
    root: Path  # the folder names are relative to
    skipped: list[str] = field(default_factory=list)  # folder entries that are not photos (by suffix)


def list_images(source: str | Path) -> ImageList:
    """A folder (every photo below it, sorted) or a CSV with a path column (relative to the CSV's folder)."""
    source = Path(source)
    if source.is_dir():
        images, skipped = [], []
        for path in sorted(p for p in source.rglob("*") if p.is_file()):
            rel = normalise_file(path.relative_to(source).as_posix())
            (images if path.suffix.lower() in IMAGE_SUFFIXES else skipped).append(rel)
        return ImageList([ImageInput(rel, source / rel) for rel in images], source, skipped)
    if source.is_file() and source.suffix.lower() == ".csv":
        return _csv_images(source)
    if not source.exists():
        raise InputError(f"{source}: no such folder or CSV; give the folder of new images (searched recursively) "
                         "or a CSV with a 'path' column")
    raise InputError(f"{source}: neither a folder nor a .csv; give the folder of new images or a CSV of paths")


def _csv_images(path: Path) -> ImageList:
    with open(path, newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        raise InputError(f"{path}: empty CSV; write one image path per row under a 'path' header")
    header = [h.strip().lower() for h in rows[0]]
    column = next((header.index(c) for c in PATH_COLUMNS if c in header), None)
    if column is None:
        raise InputError(f"{path}: no path column (looked for {list(PATH_COLUMNS)}; header is {rows[0]}); "
                         "name the column of image paths 'path'")
    names, seen = [], set()
    for i, row in enumerate(rows[1:], start=2):
        value = row[column].strip() if column < len(row) else ""
        if not value:
            raise InputError(f"{path} row {i}: empty path; remove the row or fill in the image's path")
        name = normalise_file(value)
        if name in seen:
            raise InputError(f"{path} row {i}: '{value}' is listed twice; keep one row per image")
        seen.add(name)
        names.append(name)
    root = path.parent
    return ImageList([ImageInput(n, Path(n) if Path(n).is_absolute() else root / n) for n in names], root)


@dataclass
class Detections:
    """The MegaDetector boxes of the images, per crop rule, and what the output JSON repeats."""

    boxes: dict[CropRule, dict[str, list[tuple]]]  # rule -> image name -> croppable boxes, best first
    status: dict[str, str]  # image name -> ok | failure | not_in_json | none (no JSON given)
    failure: dict[str, str]
    table: pl.DataFrame  # one row per usable detection (name, category, conf, x, y, w, h)
    categories: dict[str, str]  # detection category id -> name, as the input JSON has them
    info: dict
    source: str | None
    unmatched: list[dict] = field(default_factory=list)

    @property
    def given(self) -> bool:
        return self.source is not None


def read_image_detections(json_path: str | Path | None, images: list[ImageInput], rules: list[CropRule]) -> Detections:
    """Boxes of the images at every rule's threshold; without a JSON every member uses its full-frame fallback."""
    names = [i.name for i in images]
    if json_path is None:
        empty = pl.DataFrame(schema={"image_id": pl.String, "category": pl.String, "conf": pl.Float64,
                                     "x": pl.Float64, "y": pl.Float64, "w": pl.Float64, "h": pl.Float64})
        return Detections({r: {} for r in rules}, dict.fromkeys(names, "none"), {}, empty, dict(DEFAULT_CATEGORIES),
                          {}, None)
    json_path = Path(json_path)
    manifest = pl.DataFrame({"image_id": names, "rel_path": names}, schema={"image_id": pl.String, "rel_path": pl.String})
    try:
        load = read_detections(json_path, manifest)
    except DetectionsError as exc:
        if "matches a manifest rel_path" not in str(exc):
            raise
        raise InputError(f"{json_path}: none of its file names is one of the {len(names)} photos given (e.g. "
                         f"'{names[0] if names else ''}'); run MegaDetector on this folder with relative file names "
                         "(--output_relative_filenames) or give the folder its paths are relative to") from None
    table = load.table
    raw = json.loads(json_path.read_text(encoding="utf-8"))
    boxes = {r: ({} if r.min_conf is None else usable_boxes(table, r.min_conf, r.categories)) for r in rules}
    per_image = table.unique("image_id", keep="first")
    status = dict(per_image.select("image_id", "status").iter_rows())
    failure = {i: f for i, f in per_image.select("image_id", "failure").iter_rows() if f}
    usable = table.filter((pl.col("status") == "ok") & pl.col("problem").is_null() & pl.col("conf").is_not_null())
    categories = {str(k): str(v) for k, v in (raw.get("detection_categories") or DEFAULT_CATEGORIES).items()}
    return Detections(boxes, status, failure, usable.select("image_id", "category", "conf", "x", "y", "w", "h"),
                      categories, raw.get("info") or {}, str(json_path), load.unmatched)
