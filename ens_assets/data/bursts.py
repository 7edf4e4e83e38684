"""Camera bursts recovered from EXIF capture times: frames of one trigger are near duplicates and must
share a fold.

A camera trap fires 3-10 frames within seconds. Frames of one stream (same folder, same site and, when
the EXIF names it, the same camera body) whose capture times are at most `gap_s` apart form a burst;
a frame without a readable DateTimeOriginal is a burst of its own.
"""

from __future__ import annotations

import warnings
from datetime import datetime, timedelta
from pathlib import PurePosixPath

import polars as pl
from PIL import Image

_EXIF_IFD = 0x8769
_DATETIME = 0x0132  # IFD0 DateTime: last resort when the Exif IFD has no DateTimeOriginal
_DATETIME_ORIGINAL = 0x9003
_SUBSEC_ORIGINAL = 0x9291
_MAKE, _MODEL = 0x010F, 0x0110
_BODY_SERIAL = 0xA431

CAPTURE_SCHEMA = pl.Schema({"image_id": pl.String, "captured_at": pl.Datetime("ms"), "camera": pl.String})


def _parse_exif_time(value: object, subsec: object = None) -> datetime | None:
    if isinstance(value, bytes):
        value = value.decode("ascii", "ignore")
    if not isinstance(value, str):
        return None
    text = value.strip().rstrip("\x00")
    for fmt in ("%Y:%m:%d %H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y:%m:%d %H:%M"):
        try:
            moment = datetime.strptime(text[:19] if fmt.endswith("%S") else text[:16], fmt)
            break
        except ValueError:
            continue
    else:
        return None
    digits = "".join(ch for ch in str(subsec or "") if ch.isdigit())
    if digits:
        moment += timedelta(seconds=float(f"0.{digits}"))
    return moment


def read_capture(path: str) -> tuple[datetime | None, str]:
    """(DateTimeOriginal or None, camera identity from Make/Model/BodySerialNumber) of one image.

    Only the header is read; an unreadable file or EXIF block gives (None, "") and the image is
    grouped on its own (the crop stage quarantines files that cannot be decoded).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as image:
                exif = image.getexif()
                sub = exif.get_ifd(_EXIF_IFD)
                moment = _parse_exif_time(sub.get(_DATETIME_ORIGINAL), sub.get(_SUBSEC_ORIGINAL)) or _parse_exif_time(
                    exif.get(_DATETIME)
                )
                camera = "/".join(str(v).strip().rstrip("\x00") for v in (exif.get(_MAKE), exif.get(_MODEL), sub.get(_BODY_SERIAL)) if v)
                return moment, camera
    except Exception:  # any decoder/EXIF failure: no capture time, the image stays a group of its own
        return None, ""


def capture_table(train: pl.DataFrame) -> pl.DataFrame:
    """image_id, captured_at, camera for every row of `train` (needs image_id and path)."""
    rows = []
    for image_id, path in train.select("image_id", "path").iter_rows():
        moment, camera = read_capture(path)
        rows.append({"image_id": image_id, "captured_at": moment, "camera": camera})
    return pl.DataFrame(rows, schema=CAPTURE_SCHEMA) if rows else pl.DataFrame(schema=CAPTURE_SCHEMA)


def burst_ids(train: pl.DataFrame, captures: pl.DataFrame, gap_s: float) -> pl.DataFrame:
    """image_id -> burst id. Needs train (image_id, rel_path, site) and capture_table's output."""
    frame = train.select("image_id", "rel_path", "site").join(captures, on="image_id", how="left")
    frame = frame.with_columns(
        pl.col("rel_path").map_elements(lambda p: PurePosixPath(p).parent.as_posix(), return_dtype=pl.String).alias("folder")
    )
    timed = frame.filter(pl.col("captured_at").is_not_null()).with_columns(
        pl.concat_str(pl.col("site"), pl.col("folder"), pl.col("camera").fill_null(""), separator="|").alias("stream")
    )
    timed = timed.sort("stream", "captured_at", "image_id").with_columns(
        (
            (pl.col("captured_at").diff().over("stream").dt.total_milliseconds() > gap_s * 1000)
            | (pl.col("captured_at").diff().over("stream").is_null())
        )
        .cum_sum()
        .alias("burst_no")
    )
    timed = timed.with_columns(
        pl.concat_str(
            pl.col("stream"),
            pl.col("captured_at").min().over("burst_no").dt.strftime("%Y-%m-%dT%H:%M:%S"),
            separator="@",
        ).alias("burst")
    )
    untimed = frame.filter(pl.col("captured_at").is_null()).select("image_id", ("image:" + pl.col("image_id")).alias("burst"))
    return pl.concat([timed.select("image_id", "burst"), untimed])
