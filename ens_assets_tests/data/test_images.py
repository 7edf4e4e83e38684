import numpy as np
import pytest
from PIL import Image

from ens_assets.data.images import ImageProblem, load_rgb

from . import bad_images

MAX = 40_000_000


def _reason(path, max_pixels=MAX) -> str:
    with pytest.raises(ImageProblem) as info:
        load_rgb(path, max_pixels)
    return info.value.reason


def test_plain_jpeg_is_rgb_uint8(small_demo):
    image = load_rgb(next((small_demo / "images").iterdir()), MAX)
    assert image.dtype == np.uint8 and image.shape == (48, 64, 3)


def test_missing_file(tmp_path):
    assert _reason(tmp_path / "gone.jpg").startswith("missing file")


def test_truncated_jpeg(tmp_path):
    assert _reason(bad_images.truncated_jpeg(tmp_path / "cut.jpg")).startswith("truncated image data")


def test_non_image_file(tmp_path):
    assert _reason(bad_images.not_an_image(tmp_path / "table.jpg")).startswith("not an image")


def test_cmyk_becomes_rgb(tmp_path):
    image = load_rgb(bad_images.cmyk_jpeg(tmp_path / "cmyk.jpg"), MAX)
    assert image.shape == (30, 40, 3)
    r, g, b = image[15, 20].astype(int)
    assert r > 200 and g < 60 and b < 60


def test_sixteen_bit_is_scaled_to_eight(tmp_path):
    image = load_rgb(bad_images.sixteen_bit_png(tmp_path / "16.png"), MAX)
    assert image.shape == (30, 40, 3)
    assert (image[:, :20] == 0).all() and (image[:, 20:] == 255).all()


def test_rgba_transparency_becomes_grey(tmp_path):
    image = load_rgb(bad_images.rgba_png(tmp_path / "rgba.png"), MAX)
    assert image.shape == (30, 40, 3)
    assert tuple(image[5, 5]) == (0, 0, 255) and tuple(image[5, 35]) == (128, 128, 128)


def test_grayscale_and_palette_become_rgb(tmp_path):
    grey = load_rgb(bad_images.grayscale_jpeg(tmp_path / "l.jpg"), MAX)
    assert grey.shape == (30, 40, 3) and abs(int(grey[10, 10, 0]) - 77) <= 2
    assert (grey[..., 0] == grey[..., 2]).all()
    palette = load_rgb(bad_images.palette_png(tmp_path / "p.png"), MAX)
    assert palette.shape == (30, 40, 3) and palette[10, 10, 1] > 150


def test_exif_orientation_is_applied(tmp_path):
    image = load_rgb(bad_images.exif_rotated_jpeg(tmp_path / "rotated.jpg"), MAX)
    assert image.shape == (60, 20, 3)  # displayed portrait, not the stored landscape
    top, bottom = image[5, 10].astype(int), image[55, 10].astype(int)
    assert top[0] > 150 and top[2] < 100  # red on top
    assert bottom[2] > 150 and bottom[0] < 100  # blue at the bottom


def test_decompression_bomb_against_max_pixels(tmp_path):
    path = bad_images.huge_png(tmp_path / "bomb.png")
    reason = _reason(path, max_pixels=1_000_000)
    assert reason.startswith("decompression bomb") and "data.max_image_pixels" in reason
    assert load_rgb(path, max_pixels=10_000_000).shape == (2000, 3000, 3)


def test_data_max_image_pixels_is_pillows_limit_too(tmp_path, monkeypatch):
    """Pillow refuses images above twice its own limit before any check of ours runs; the project sets that
    limit from data.max_image_pixels, so raising the setting (as the message says) really lets the image in."""
    path = bad_images.huge_png(tmp_path / "bomb.png")  # 3000 x 2000 = 6 M pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)  # Pillow would raise above 2 M
    assert load_rgb(path, max_pixels=10**9).shape == (2000, 3000, 3)
    reason = _reason(path, max_pixels=2_000_000)  # above twice the limit: Pillow's own error, our advice
    assert reason.startswith("decompression bomb") and "data.max_image_pixels (now 2000000)" in reason
