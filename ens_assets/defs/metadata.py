"""Turning core results (dicts, polars tables, PNG bytes) into Dagster UI metadata."""


from typing import Any, Mapping

import polars as pl

import dagster as dg


def frame_markdown(frame: pl.DataFrame, float_digits: int = 4, max_rows: int = 60) -> str:
    """A polars table as a markdown table (the UI renders it; no pandas round-trip needed)."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.{float_digits}f}"
        return "" if v is None else str(v)

    head = "| " + " | ".join(frame.columns) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.head(max_rows).iter_rows()]
    more = [f"\n_{frame.height - max_rows} more rows_"] if frame.height > max_rows else []
    return "\n".join([head, rule, *rows, *more])


def table_metadata(summary: Mapping[str, Any]) -> dict[str, dg.MetadataValue | int | float | str]:
    """Numbers stay numbers (plotted across materializations); tables become markdown; the rest JSON."""
    out: dict[str, Any] = {}
    for key, value in summary.items():
        if isinstance(value, bool):
            out[key] = dg.MetadataValue.bool(value)
        elif isinstance(value, (int, float)):
            out[key] = value
        elif isinstance(value, str):
            out[key] = dg.MetadataValue.text(value)
        elif isinstance(value, pl.DataFrame):
            out[key] = dg.MetadataValue.md(frame_markdown(value))
        else:
            out[key] = dg.MetadataValue.json(value)
    return out

