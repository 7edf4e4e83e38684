"""The crop cache of one detector threshold: every manifest image becomes detection crops, a
full-frame fallback, or a quarantine row with a reason (nothing is dropped silently). Without a
detector the one cache 'full' holds every image's whole frame, letterboxed to square.

On disk (out_dir): images.npy (uint8 N x S x S x 3, memory-mappable), index.parquet (one row per
crop), quarantine.parquet, summary.json. Built into a temp folder beside out_dir with all cores,
then swapped in, so a killed build leaves the previous cache intact.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import signal
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image, ImageOps

from ens_assets.atomic import building_dir, disk_errors_named, replace_dir
from ens_assets.data.images import ImageProblem, load_rgb
from ens_assets.data.quarantine import QUARANTINE_SCHEMA, quarantine_frame
from ens_assets.plan import ANNOTATED_BOXES_KEY, NO_DETECTOR_KEY, CropConfig, DataConfig, threshold_key

# The cache's files, named once here, where they are written (readers elsewhere import the names).
INDEX_FILE = "index.parquet"  # one row per crop: row in images.npy, image_id, split, ...
QUARANTINE_FILE = "quarantine.parquet"  # QUARANTINE_SCHEMA: the images with no crop, and why
SUMMARY_FILE = "summary.json"

INDEX_SCHEMA = pl.Schema(
    {
        "row": pl.Int64,
        "image_id": pl.String,
        "label": pl.String,
        "site": pl.String,
        "split": pl.String,
        "source": pl.String,
        "conf": pl.Float64,
        "x": pl.Float64,
        "y": pl.Float64,
        "w": pl.Float64,
        "h": pl.Float64,
    }
)
_COPY_BLOCK_ROWS = 2048
_LETTERBOX_FILL = (128, 128, 128)
_ROW_PREFIX = re.compile(r"^/.*?: ")  # ingest reasons start with '<absolute file> row N (id X): '  # the grey images.py composites transparency onto


@dataclass(frozen=True)
class _Job:
    """Everything a worker needs for one image (plain data, cheap to pickle)."""

    image_id: str
    path: str
    rel_path: str
    label: str | None
    site: str
    split: str
    boxes: tuple[tuple[float, float, float, float, float], ...]  # (conf, x, y, w, h), best first


@dataclass(frozen=True)
class CropSettings:
    """One crop rule, as plain data: what the crop cache builds with and what inference applies to new images."""

    image_size: int
    padding: float
    square: bool
    min_size_px: int
    max_pixels: int
    top_only: bool
    letterbox: bool = False  # whole frames padded to square (no detector) instead of stretched


_Settings = CropSettings  # the name the crop tests use


def crop_settings(cfg: CropConfig, threshold: float | str, max_pixels: int) -> CropSettings:
    """The crop rule of one crops partition: letterboxed whole frames for 'full', detection crops otherwise."""
    return CropSettings(cfg.image_size, cfg.padding, cfg.square, cfg.min_size_px, max_pixels, cfg.mode == "top",
                        letterbox=threshold_key(threshold) == NO_DETECTOR_KEY)


def crop_pixels(box: tuple[float, float, float, float], width: int, height: int, s: CropSettings):
    """Pixel rectangle (left, top, right, bottom) of a normalized box after padding and squaring,
    shifted inside the frame where it fits and clamped where it does not; None when too small."""
    x, y, w, h = box
    bw, bh = w * width, h * height
    if bw < s.min_size_px or bh < s.min_size_px:
        return None
    cx, cy = (x + w / 2) * width, (y + h / 2) * height
    bw, bh = bw * (1 + 2 * s.padding), bh * (1 + 2 * s.padding)
    if s.square:
        bw = bh = max(bw, bh)

    def place(centre: float, size: float, limit: int) -> tuple[float, float]:
        if size >= limit:
            return 0.0, float(limit)
        start = min(max(centre - size / 2, 0.0), limit - size)
        return start, start + size

    left, right = place(cx, bw, width)
    top, bottom = place(cy, bh, height)
    return left, top, right, bottom


def image_crops(image: Image.Image, boxes, s: CropSettings) -> list[tuple[np.ndarray, tuple | None]]:
    """The crops of one decoded image under one rule: (uint8 S x S x 3, the (conf, x, y, w, h) box used), or
    one full-frame fallback with box None when no box (best first) is large enough."""
    size = (s.image_size, s.image_size)
    out: list[tuple[np.ndarray, tuple | None]] = []
    for box in boxes:
        rect = crop_pixels(box[1:], image.width, image.height, s)
        if rect is None:
            continue
        out.append((np.asarray(image.resize(size, Image.BILINEAR, box=rect)), tuple(box)))
        if s.top_only:  # the best box that is large enough; runners-up only stand in for tiny ones
            break
    if out:
        return out
    if s.letterbox:
        return [(np.asarray(ImageOps.pad(image, size, Image.BILINEAR, color=_LETTERBOX_FILL)), None)]
    return [(np.asarray(image.resize(size, Image.BILINEAR)), None)]


def _process_chunk(args: tuple[list[_Job], CropSettings]):
    """Worker: crops for a chunk of images -> (uint8 array, index rows, quarantine rows)."""
    jobs, s = args
    size = (s.image_size, s.image_size)
    crops: list[np.ndarray] = []
    rows: list[dict] = []
    quarantine: list[dict] = []
    for job in jobs:
        base = {"image_id": job.image_id, "label": job.label, "site": job.site, "split": job.split}
        try:
            pixels = load_rgb(job.path, s.max_pixels)
        except ImageProblem as problem:
            quarantine.append({"image_id": job.image_id, "rel_path": job.rel_path, "split": job.split, "reason": problem.reason})
            continue
        for pixels_of_crop, box in image_crops(Image.fromarray(pixels), job.boxes, s):
            crops.append(pixels_of_crop)
            if box is None:
                rows.append({**base, "source": "fallback", "conf": None, "x": None, "y": None, "w": None, "h": None})
            else:
                conf, x, y, w, h = box
                rows.append({**base, "source": "detection", "conf": conf, "x": x, "y": y, "w": w, "h": h})
    array = np.stack(crops) if crops else np.zeros((0, *size, 3), dtype=np.uint8)
    return array, rows, quarantine


def usable_boxes(detections: pl.DataFrame, threshold: float, categories: tuple[str, ...] = ("animal",)) -> dict[str, list[tuple]]:
    """image_id -> its croppable boxes (conf, x, y, w, h), best first: usable detections of the cropped
    categories at or above the threshold (a detection with a problem never is)."""
    usable = detections.filter(
        (pl.col("status") == "ok")
        & pl.col("category").is_in(list(categories))
        & pl.col("problem").is_null()
        & (pl.col("conf") >= threshold)
    ).sort(["image_id", "conf"], descending=[False, True])
    boxes: dict[str, list[tuple]] = {}
    for image_id, conf, x, y, w, h in usable.select("image_id", "conf", "x", "y", "w", "h").iter_rows():
        boxes.setdefault(image_id, []).append((conf, x, y, w, h))
    return boxes


def _jobs(
    manifest: pl.DataFrame, detections: pl.DataFrame, threshold: float, categories: tuple[str, ...] = ("animal",)
) -> list[_Job]:
    boxes = usable_boxes(detections, threshold, categories)
    jobs = []
    for row in manifest.iter_rows(named=True):
        candidates = boxes.get(row["image_id"], [])
        jobs.append(
            _Job(row["image_id"], row["path"], row["rel_path"], row["label"], row["site"], row["split"], tuple(candidates))
        )
    return jobs


def _resolve_workers(workers: int | None, cfg: CropConfig) -> int:
    if workers is None:
        workers = cfg.workers
    return max(1, workers or os.cpu_count() or 1)


def _worker_init() -> None:
    # Forked workers inherit the parent's signal handlers (Dagster installs its own); pool shutdown
    # terminates them, which must end them quietly rather than raise inside the orchestrator's handler.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _pool_context():
    # fork starts workers in milliseconds; spawn would re-import numpy/PIL/polars in each one.
    return multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")


def build_crop_cache(
    manifest: pl.DataFrame,
    detections: pl.DataFrame,
    threshold: float | str,
    cfg: CropConfig,
    out_dir: Path,
    workers: int | None = None,
    *,
    max_pixels: int = DataConfig().max_image_pixels,
    label_rows: pl.DataFrame | None = None,
) -> dict:
    """Build the crop cache for one threshold into out_dir (replacing it atomically); return the summary.

    threshold: a detector confidence, or the crops key 'full' (no detector: every image is its whole
    frame, letterboxed to square). workers: processes to use; None takes cfg.workers, 0 means all cores.
    label_rows: label rows the ingest quarantined (QUARANTINE_SCHEMA); listed and counted with the bad
    images, so the summary accounts for every input row.
    """
    label_rows = quarantine_frame([]) if label_rows is None else label_rows.select(list(QUARANTINE_SCHEMA))
    out_dir = Path(out_dir)
    whole_frames = threshold_key(threshold) == NO_DETECTOR_KEY
    settings = crop_settings(cfg, threshold, max_pixels)
    if whole_frames:
        jobs = _jobs(manifest, detections.clear(), 1.0, cfg.categories)
    elif threshold_key(threshold) == ANNOTATED_BOXES_KEY:  # annotated boxes: no confidence to threshold
        jobs = _jobs(manifest, detections, 0.0, cfg.categories)
    else:
        jobs = _jobs(manifest, detections, float(threshold), cfg.categories)
    n_workers = _resolve_workers(workers, cfg)
    chunk_size = max(4, min(64, len(jobs) // (n_workers * 8) or 1))
    chunks = [(jobs[i : i + chunk_size], settings) for i in range(0, len(jobs), chunk_size)]

    # The raw crops and the .npy copy of them sit on disk together for a moment (at least one crop per image).
    needed = 2 * len(jobs) * cfg.image_size * cfg.image_size * 3
    with building_dir(out_dir) as building, disk_errors_named(out_dir, needed):
        index_rows: list[dict] = []
        quarantine_rows: list[dict] = []
        raw_path = building / "images.raw"
        with open(raw_path, "wb") as raw:

            def collect(result):
                array, rows, quarantine = result
                for row in rows:
                    row["row"] = len(index_rows)
                    index_rows.append(row)
                quarantine_rows.extend(quarantine)
                raw.write(np.ascontiguousarray(array, dtype=np.uint8).tobytes())

            if n_workers == 1 or len(chunks) <= 1:
                for chunk in chunks:
                    collect(_process_chunk(chunk))
            else:
                with _pool_context().Pool(min(n_workers, len(chunks)), initializer=_worker_init) as pool:
                    for result in pool.imap(_process_chunk, chunks):
                        collect(result)
        _raw_to_npy(raw_path, building / "images.npy", len(index_rows), cfg.image_size)
        raw_path.unlink()

        index = pl.DataFrame(index_rows, schema=INDEX_SCHEMA) if index_rows else pl.DataFrame(schema=INDEX_SCHEMA)
        quarantine = pl.concat([label_rows, quarantine_frame(quarantine_rows)])
        summary = _summary(manifest, detections, index, quarantine, threshold, cfg, n_label_rows=label_rows.height)
        index.write_parquet(building / INDEX_FILE)
        quarantine.write_parquet(building / QUARANTINE_FILE)
        (building / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        replace_dir(building, out_dir)
    return summary


def _raw_to_npy(raw_path: Path, npy_path: Path, n: int, size: int) -> None:
    shape = (n, size, size, 3)
    if n == 0:
        np.save(npy_path, np.zeros(shape, dtype=np.uint8))  # a zero-byte array cannot be memory-mapped
        return
    source = np.memmap(raw_path, dtype=np.uint8, mode="r", shape=shape)
    target = np.lib.format.open_memmap(npy_path, mode="w+", dtype=np.uint8, shape=shape)
    for start in range(0, n, _COPY_BLOCK_ROWS):
        target[start : start + _COPY_BLOCK_ROWS] = source[start : start + _COPY_BLOCK_ROWS]
    target.flush()
    del source, target


def _by_reason(quarantine: pl.DataFrame) -> dict[str, int]:
    """Counts per kind of problem: the reason without its 'file row N: ' prefix, up to the first ';' or ':'."""
    counts: dict[str, int] = {}
    for reason in quarantine["reason"].to_list():
        kind = re.split(r"[;:(]", _ROW_PREFIX.sub("", reason, count=1), maxsplit=1)[0].strip()
        counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items()))


def _per_label(frame: pl.DataFrame) -> dict[str, int]:
    counts = frame.with_columns(pl.col("label").fill_null("(unlabelled)")).group_by("label").len().sort("label")
    return dict(counts.iter_rows())


def _summary(
    manifest: pl.DataFrame,
    detections: pl.DataFrame,
    index: pl.DataFrame,
    quarantine: pl.DataFrame,
    threshold: float | str,
    cfg: CropConfig,
    n_label_rows: int = 0,
) -> dict:
    detection_rows = index.filter(pl.col("source") == "detection")
    fallback_rows = index.filter(pl.col("source") == "fallback")
    n_used = detection_rows["image_id"].n_unique()
    n_fallback = fallback_rows["image_id"].n_unique()
    summary = {
        "threshold": threshold_key(threshold),
        "cfg": cfg.model_dump(mode="json", exclude={"thresholds", "workers"}),
        "n_images": manifest.height + n_label_rows,  # label rows quarantined at ingest count as inputs
        "n_quarantined_label_rows": n_label_rows,
        "n_used": n_used,
        "n_fallback_only": n_fallback,
        "n_quarantined": quarantine.height,
        "n_crops": index.height,
        "n_detection_crops": detection_rows.height,
        "crops_per_class": _per_label(detection_rows),
        "fallbacks_per_class": _per_label(fallback_rows),
        "quarantined_per_class": _per_label(quarantine.join(manifest.select("image_id", "label"), on="image_id", how="left")),
        "quarantined_by_reason": _by_reason(quarantine),
        "per_split": {
            split: {
                "detection": detection_rows.filter(pl.col("split") == split).height,
                "fallback": fallback_rows.filter(pl.col("split") == split).height,
                "quarantined": quarantine.filter(pl.col("split") == split).height,
            }
            for split in sorted(manifest["split"].unique().to_list())
        },
        "detection_status": dict(
            detections.group_by("status").agg(pl.col("image_id").n_unique()).sort("status").iter_rows()
        ),
        "n_problem_detections": detections.filter(pl.col("problem").is_not_null()).height,
    }
    if summary["n_images"] != n_used + n_fallback + summary["n_quarantined"]:
        raise RuntimeError(f"crop cache lost images: {summary}")  # an internal bug, never bad input
    return summary


@dataclass
class CropCache:
    """A built crop cache, opened read-only (images memory-mapped)."""

    out_dir: Path
    images: np.ndarray
    index: pl.DataFrame
    quarantine: pl.DataFrame
    summary: dict

    def content_hash(self) -> str:
        """Cheap stable fingerprint of summary + index (not the pixels): training's skip-when-fresh key."""
        digest = hashlib.sha256(json.dumps(self.summary, sort_keys=True).encode())
        digest.update(self.index.write_csv().encode())
        return digest.hexdigest()[:16]


def read_crop_quarantine(out_dir: Path) -> pl.DataFrame:
    """The images a crop cache quarantined, with the reason (one row per image)."""
    path = Path(out_dir) / QUARANTINE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no crop quarantine table; materialize the crops partition first")
    return pl.read_parquet(path)


def open_crop_cache(out_dir: Path) -> CropCache:
    out_dir = Path(out_dir)
    needed = ["images.npy", INDEX_FILE, QUARANTINE_FILE, SUMMARY_FILE]
    missing = [name for name in needed if not (out_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{out_dir}: no complete crop cache (missing {missing}); build it with build_crop_cache")
    try:
        images = np.load(out_dir / "images.npy", mmap_mode="r")
    except ValueError:  # an empty cache (every image quarantined) cannot be memory-mapped
        images = np.load(out_dir / "images.npy")
    index = pl.read_parquet(out_dir / INDEX_FILE)
    if images.shape[0] != index.height:
        raise ValueError(f"{out_dir}: images.npy holds {images.shape[0]} crops but index.parquet {index.height}; rebuild the cache")
    return CropCache(
        out_dir=out_dir,
        images=images,
        index=index,
        quarantine=read_crop_quarantine(out_dir),
        summary=json.loads((out_dir / SUMMARY_FILE).read_text()),
    )
