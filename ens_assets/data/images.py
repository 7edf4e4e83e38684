"""Safe image loading: any readable photo becomes an (H, W, 3) uint8 RGB array, anything else an
ImageProblem whose reason says what is wrong and how to fix it (it becomes a quarantine row)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}
_GREY_FILL = (128, 128, 128)  # what transparent pixels become


class ImageProblem(Exception):
    """An image that cannot be used; `reason` is a short human sentence naming the fix."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def load_rgb(path: str | Path, max_pixels: int) -> np.ndarray:
    """Decode `path` to RGB uint8 with EXIF orientation applied, or raise ImageProblem."""
    path = Path(path)
    if path.is_dir():
        raise ImageProblem("is a folder, not an image file: point its row at the image inside it or remove the row")
    if not path.is_file():
        raise ImageProblem("missing file: restore it or remove its row from the labels")
    # Pillow's own limit (about 89 M pixels, an error above twice that) is the project's: data.max_image_pixels
    # decides, so raising it lets large panoramas through and the message below is the one that applies.
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own max_pixels rules
            with Image.open(path) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise ImageProblem(_bomb_reason(width, height, max_pixels))
                image.load()
                return _to_rgb_array(image)
    except ImageProblem:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageProblem(
            f"decompression bomb ({exc}); downscale the image or raise data.max_image_pixels (now {max_pixels})"
        ) from None
    except UnidentifiedImageError:
        raise ImageProblem("not an image (unrecognised format): replace it with a JPEG/PNG or remove its row") from None
    except OSError as exc:
        if "truncated" in str(exc).lower():
            raise ImageProblem("truncated image data: re-copy the file from the camera or source") from None
        raise ImageProblem(f"unreadable image ({exc}): re-copy or re-export the file") from None
    except Exception as exc:  # the decoder boundary: any decoder failure becomes a reason, not a traceback
        raise ImageProblem(f"unreadable image ({type(exc).__name__}: {exc}): re-export it as JPEG or PNG") from None


def _bomb_reason(width: int, height: int, max_pixels: int) -> str:
    return (
        f"decompression bomb: {width}x{height} = {width * height} pixels exceeds data.max_image_pixels "
        f"({max_pixels}); downscale the image or raise the limit"
    )


def _to_rgb_array(image: Image.Image) -> np.ndarray:
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # a malformed EXIF block must not cost the image: keep the stored orientation
        pass
    if image.mode in _SIXTEEN_BIT_MODES:
        # 16-bit (or 32-bit integer) greyscale: scale the full 16-bit range to 8 bits.
        grey = np.asarray(image, dtype=np.float64)
        grey = np.clip(grey / 257.0, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=-1))
    if image.mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64))
        lo, hi = float(values.min()), float(values.max())
        grey = ((values - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(values)).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=-1))
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _GREY_FILL + (255,))
        image = Image.alpha_composite(background, rgba)
    rgb = image.convert("RGB")  # CMYK, YCbCr, L, 1, P ... all have PIL conversions to RGB
    return np.array(rgb, dtype=np.uint8)
