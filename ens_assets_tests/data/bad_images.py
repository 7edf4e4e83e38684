"""Writers of the broken and unusual image files the data core must survive."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def truncated_jpeg(path: Path) -> Path:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buffer, format="JPEG")
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return path


def not_an_image(path: Path) -> Path:
    path.write_text("id,filepath\nthis is a CSV saved with a .jpg name\n")
    return path


def cmyk_jpeg(path: Path) -> Path:
    Image.new("CMYK", (40, 30), (0, 255, 255, 0)).save(path, format="JPEG", quality=95)  # pure red in CMYK
    return path


def sixteen_bit_png(path: Path) -> Path:
    values = np.zeros((30, 40), dtype=np.uint16)
    values[:, 20:] = 65535
    Image.fromarray(values).save(path, format="PNG")
    return path


def rgba_png(path: Path) -> Path:
    pixels = np.zeros((30, 40, 4), dtype=np.uint8)
    pixels[:, :20] = (0, 0, 255, 255)  # opaque blue on the left, fully transparent on the right
    Image.fromarray(pixels, mode="RGBA").save(path, format="PNG")
    return path


def grayscale_jpeg(path: Path) -> Path:
    Image.new("L", (40, 30), 77).save(path, format="JPEG", quality=95)
    return path


def palette_png(path: Path) -> Path:
    Image.new("RGB", (40, 30), (10, 200, 10)).convert("P").save(path, format="PNG")
    return path


def exif_rotated_jpeg(path: Path) -> Path:
    """Stored 60 wide x 20 high, red on the left, blue on the right; EXIF orientation 6 says "rotate 90
    degrees clockwise to display", so the displayed photo is 20 wide x 60 high with red on top."""
    pixels = np.zeros((20, 60, 3), dtype=np.uint8)
    pixels[:, :30] = (220, 20, 20)
    pixels[:, 30:] = (20, 20, 220)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(path, format="JPEG", quality=95, exif=exif.tobytes())
    return path


def huge_png(path: Path, width: int = 3000, height: int = 2000) -> Path:
    """6 megapixels that compress to a few kilobytes: a bomb against a small max_pixels."""
    Image.new("1", (width, height)).save(path, format="PNG")
    return path
