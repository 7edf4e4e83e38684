"""Small real JPEGs that look like camera-trap photos: odd sizes, EXIF DateTimeOriginal and camera body,
written by Pillow the way cameras write them (Exif IFD 0x8769)."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from PIL import Image

EXIF_IFD, DATETIME_ORIGINAL, MAKE, MODEL, BODY_SERIAL = 0x8769, 0x9003, 0x010F, 0x0110, 0xA431


def write_photo(
    path: Path,
    seed: int,
    size: tuple[int, int] = (40, 30),
    taken: datetime | None = None,
    camera: tuple[str, str, str] | None = ("Reconyx", "HF2X", "SN0001"),
) -> Path:
    """A noisy JPEG of `size`; `taken` becomes EXIF DateTimeOriginal (None: no EXIF time at all)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(40, 200, size=3)
    pixels = np.clip(base + rng.normal(0, 20, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    exif = Image.Exif()
    if camera is not None:
        exif[MAKE], exif[MODEL] = camera[0], camera[1]
        exif.get_ifd(EXIF_IFD)[BODY_SERIAL] = camera[2]
    if taken is not None:
        exif.get_ifd(EXIF_IFD)[DATETIME_ORIGINAL] = taken.strftime("%Y:%m:%d %H:%M:%S")
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, "JPEG", quality=85, exif=exif)
    return path


def write_burst_dataset(root: Path, cameras: int = 3, bursts_per_camera: int = 4, frames: int = 3) -> dict[str, str]:
    """zamba-layout data without a site column: one folder per camera, bursts of `frames` shots 2 s apart,
    bursts 10 minutes apart, one species per burst. Returns rel_path -> burst name (the ground truth)."""
    classes = ["bird", "civet_genet", "rodent"]
    truth: dict[str, str] = {}
    lines = ["filepath,label"]
    start = datetime(2024, 5, 1, 6, 0, 0)
    n = 0
    for c in range(cameras):
        for b in range(bursts_per_camera):
            label = classes[(c + b) % len(classes)]
            for f in range(frames):
                rel = f"cam{c}/IMG_{b:02d}{f:02d}.JPG"
                taken = start + timedelta(minutes=10 * b, seconds=2 * f)
                write_photo(root / rel, seed=n, size=(40 + c, 30 + b), taken=taken, camera=("Reconyx", "HF2X", f"SN{c:04d}"))
                truth[rel] = f"cam{c}-burst{b}"
                lines.append(f"{rel},{label}")
                n += 1
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return truth
