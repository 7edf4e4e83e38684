"""Small camera-trap datasets that look like a user's own: real JPEGs written by PIL at odd frame sizes, with
EXIF (camera make/model, DateTimeOriginal in bursts of a few frames seconds apart), an animal of a
class-specific colour and shape somewhere in each frame, and a MegaDetector 1.4 batch JSON boxing it.

`write_images` makes the frames; the `write_*` layout functions describe the same frames the way each
layout does (a zamba labels.csv with or without sites, class folders, COCO Camera Traps with seq_id), so
one set of pixels serves every layout test (Camtrap DP packages: ens_assets_tests/data/camtrap_package.py).
"""

from __future__ import annotations

import csv
import datetime
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SPECIES = ("fox", "hare", "roe_deer")
_COLOURS = {"fox": (200, 90, 30), "hare": (120, 110, 90), "roe_deer": (150, 60, 40)}
FRAME_SIZES = ((97, 73), (120, 91), (83, 111), (131, 67))  # odd sizes, portrait and landscape
EXIF_MAKE, EXIF_MODEL, EXIF_IFD, EXIF_DATETIME_ORIGINAL = 0x010F, 0x0110, 0x8769, 0x9003
BURST = 3  # frames per trigger
BURST_GAP_S = 2  # seconds between frames of one burst


@dataclass(frozen=True)
class Frame:
    rel_path: str  # posix, relative to the dataset root
    label: str
    site: str
    seq_id: str  # one trigger of the camera: BURST frames
    taken: datetime.datetime
    box: tuple[float, float, float, float]  # normalised x, y, w, h of the animal
    size: tuple[int, int]


def _draw_frame(rng: np.random.Generator, label: str, size: tuple[int, int]) -> tuple[Image.Image, tuple]:
    width, height = size
    base = rng.integers(40, 120, size=3)
    pixels = np.clip(base + rng.normal(0, 18, (height, width, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    w, h = rng.uniform(0.3, 0.5) * width, rng.uniform(0.3, 0.5) * height
    x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
    draw = ImageDraw.Draw(image)
    colour = tuple(int(c) for c in _COLOURS[label])
    if label == "hare":
        draw.rectangle([x, y, x + w, y + h], fill=colour)
    else:
        draw.ellipse([x, y, x + w, y + h], fill=colour)
    return image, (x / width, y / height, w / width, h / height)


def _exif(taken: datetime.datetime, camera: str) -> Image.Exif:
    exif = Image.Exif()
    exif[EXIF_MAKE] = "Reconyx"
    exif[EXIF_MODEL] = camera
    exif.get_ifd(EXIF_IFD)[EXIF_DATETIME_ORIGINAL] = taken.strftime("%Y:%m:%d %H:%M:%S")
    return exif


def write_images(root: Path, *, sites: int = 4, bursts_per_class_and_site: int = 1, seed: int = 0,
                 folder_of=lambda label, site: f"{site}") -> list[Frame]:
    """BURST frames per (class, site, burst), saved as JPEG with EXIF under root/<folder_of(label, site)>/."""
    rng = np.random.default_rng(seed)
    start = datetime.datetime(2026, 5, 1, 6, 0, 0)
    frames: list[Frame] = []
    for s in range(sites):
        site = f"cam{s + 1:02d}"
        for c, label in enumerate(SPECIES):
            for b in range(bursts_per_class_and_site):
                trigger = start + datetime.timedelta(days=s, hours=c * 3 + b)
                seq_id = f"{site}-{label}-{b}"
                size = FRAME_SIZES[(s + c + b) % len(FRAME_SIZES)]
                for f in range(BURST):
                    taken = trigger + datetime.timedelta(seconds=f * BURST_GAP_S)
                    image, box = _draw_frame(rng, label, size)
                    rel = f"{folder_of(label, site)}/IMG_{len(frames):04d}.JPG"
                    path = root / rel
                    path.parent.mkdir(parents=True, exist_ok=True)
                    image.save(path, "JPEG", quality=85, exif=_exif(taken, f"HC600-{site}"))
                    frames.append(Frame(rel, label, site, seq_id, taken, box, size))
    return frames


def write_megadetector_json(path: Path, frames: list[Frame], prefix: str = "") -> Path:
    """MegaDetector 1.4 batch output: the animal at high confidence, plus a faint second guess."""
    images = [{"file": prefix + f.rel_path, "max_detection_conf": 0.92,
               "detections": [{"category": "1", "conf": 0.92, "bbox": [round(v, 4) for v in f.box]},
                              {"category": "1", "conf": 0.08, "bbox": [0.0, 0.0, 0.2, 0.2]}]}
              for f in frames]
    path.write_text(json.dumps({"info": {"format_version": "1.4", "detector": "md_v5a.0.0.pt"},
                                "detection_categories": {"1": "animal", "2": "person", "3": "vehicle"},
                                "images": images}))
    return path


def write_zamba_csv(root: Path, frames: list[Frame], *, with_site: bool) -> Path:
    path = root / "labels.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["filepath", "label", *(["site"] if with_site else [])])
        for f in frames:
            writer.writerow([f.rel_path, f.label, *([f.site] if with_site else [])])
    return path


def write_coco_json(root: Path, frames: list[Frame], name: str = "coco.json") -> Path:
    """COCO Camera Traps: images with location, seq_id, frame_num and datetime; boxes in pixels."""
    categories = [{"id": 0, "name": "empty"}] + [{"id": i + 1, "name": s} for i, s in enumerate(SPECIES)]
    ids = {s: i + 1 for i, s in enumerate(SPECIES)}
    images, annotations = [], []
    for i, f in enumerate(frames):
        images.append({"id": f"img{i:04d}", "file_name": f.rel_path, "location": f.site, "seq_id": f.seq_id,
                       "frame_num": i % BURST, "seq_num_frames": BURST, "width": f.size[0], "height": f.size[1],
                       "datetime": f.taken.strftime("%Y-%m-%d %H:%M:%S")})
        x, y, w, h = f.box
        annotations.append({"id": f"ann{i:04d}", "image_id": f"img{i:04d}", "category_id": ids[f.label],
                            "bbox": [x * f.size[0], y * f.size[1], w * f.size[0], h * f.size[1]]})
    path = root / name
    path.write_text(json.dumps({"info": {"version": "1.0"}, "images": images, "categories": categories,
                                "annotations": annotations}))
    return path
