"""The quarantine table: every input that cannot be used, with the reason and the fix.

Bad images are quarantined at crop time (crops/<t>/quarantine.parquet); bad label rows (an empty
label, a duplicate path, a path outside the root, ...) at ingest time (manifest_quarantine.parquet),
and the crop builder copies those into each crop cache's quarantine table and counts, so one table
accounts for every row and image. `data.strict: true` turns a bad label row back into an error.
"""

from __future__ import annotations

import polars as pl

QUARANTINE_SCHEMA = pl.Schema({"image_id": pl.String, "rel_path": pl.String, "split": pl.String, "reason": pl.String})


def quarantine_frame(rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=QUARANTINE_SCHEMA) if rows else pl.DataFrame(schema=QUARANTINE_SCHEMA)


class RowQuarantine:
    """Collects label rows that cannot be used; strict mode raises the row's error instead."""

    def __init__(self, strict: bool, encoding: str | None = None):
        self.strict = strict
        self.encoding = encoding  # data.encoding: None = UTF-8, else cp1252/latin-1 with a note
        self.rows: list[dict] = []
        self.notes: list[str] = []  # things the user should know that are not a quarantined row

    def reject(self, error: Exception, *, row_ref: str, rel_path: str | None = None, split: str = "train") -> None:
        """Quarantine one row (row_ref: 'labels.csv:7', unique and pointing at the row), or raise `error`."""
        if self.strict:
            raise error
        self.rows.append({"image_id": row_ref, "rel_path": rel_path, "split": split, "reason": str(error)})

    def frame(self) -> pl.DataFrame:
        return quarantine_frame(self.rows)
