"""Turning core results (dicts, polars tables, PNG bytes) into Dagster UI metadata."""


from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit

import polars as pl

import dagster as dg


# Short headers keep tables inside the UI's metadata column (it cuts wide tables off on the right).
SHORT_NAMES = {
    "log_loss": "log loss",
    "accuracy": "acc",
    "in_sample_log_loss": "in-sample LL",
    "in_sample_accuracy": "in-sample acc",
    "flops_per_image": "FLOPs/img",
    "n_members": "n",
    "members_used": "members",
    "param_count": "params",
}
LONG_CELL = 36  # longer text goes to a numbered note under the table


def frame_markdown(frame: pl.DataFrame, float_digits: int = 4, max_rows: int = 60, max_columns: int = 6) -> str:
    """A polars table as Markdown tables the UI shows whole: short headers, long text as numbered notes
    below, big integers in k/M/G, and more than max_columns columns split into several tables that each
    repeat the first column."""
    notes: list[str] = []

    def cell(v: Any) -> str:
        if isinstance(v, bool) or v is None:
            return "" if v is None else ("yes" if v else "no")
        if isinstance(v, float):
            return f"{v:.{float_digits}f}"
        if isinstance(v, int):
            return _si(v)
        text = str(v).replace("|", "\\|").replace("\n", " ")
        if len(text) > LONG_CELL:
            if text not in notes:  # a note many rows share is listed once
                notes.append(text)
            return f"[{notes.index(text) + 1}]"
        return text

    rows = [[cell(v) for v in row] for row in frame.head(max_rows).iter_rows()]
    headers = [SHORT_NAMES.get(c, c) for c in frame.columns]
    groups = [list(range(len(headers)))]
    if len(headers) > max_columns:
        rest = list(range(1, len(headers)))
        step = max_columns - 1
        groups = [[0, *rest[i : i + step]] for i in range(0, len(rest), step)]
    tables = []
    for group in groups:
        head = "| " + " | ".join(headers[i] for i in group) + " |"
        rule = "| " + " | ".join("---" for _ in group) + " |"
        tables.append("\n".join([head, rule, *("| " + " | ".join(r[i] for i in group) + " |" for r in rows)]))
    more = [f"_{frame.height - max_rows} more rows_"] if frame.height > max_rows else []
    listed = ["\n".join(f"{n}. {text}" for n, text in enumerate(notes, 1))] if notes else []
    return "\n\n".join([*tables, *more, *listed])


# The UI's metadata value column is about 280-350 px wide at a 1280 px window, and a table cell never breaks
# inside a word: a table whose unbreakable cells sum wider than that is cut off on the right. Tables of
# members x classes are therefore shown transposed and split, and row records as wrapping bullet lines.
NARROW_TABLE_VALUE_COLUMNS = 3


def member_class_markdown(frame: pl.DataFrame, label: str = "member", float_digits: int = 2) -> str:
    """A table with one row per member (a `label` column, then one column per class) shown transposed: one
    row per class, members as short columns m1, m2, ... (the ensemble's row as 'ens'), at most
    NARROW_TABLE_VALUE_COLUMNS member columns per table, the members' names listed under the tables."""
    names = frame[label].to_list()
    short = ["ens" if n == "ensemble" else f"m{i}" for i, n in enumerate(names, 1)]
    classes = [c for c in frame.columns if c != label]
    rows = frame.select(classes).rows()
    tables = []
    for start in range(0, len(names), NARROW_TABLE_VALUE_COLUMNS):
        cols = range(start, min(start + NARROW_TABLE_VALUE_COLUMNS, len(names)))
        lines = ["| class | " + " | ".join(short[j] for j in cols) + " |", "| --- |" + " --- |" * len(cols)]
        for k, c in enumerate(classes):
            cells = [("" if rows[j][k] is None else f"{rows[j][k]:.{float_digits}f}") for j in cols]
            lines.append(f"| {c} | " + " | ".join(cells) + " |")
        tables.append("\n".join(lines))
    legend = "\n".join(f"- {s}: `{n}`" for s, n in zip(short, names) if s != "ens" or n != "ensemble")
    return "\n\n".join([*tables, legend])


def records_markdown(frame: pl.DataFrame, label: str, float_digits: int = 4) -> str:
    """One bullet line per row, `label` in bold, then every other column as 'name value': wraps at any width."""
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "yes" if v else "no"
        if isinstance(v, float):
            return f"{v:.{float_digits}f}"
        if isinstance(v, int):
            return _si(v)
        return str(v)

    lines = []
    for row in frame.iter_rows(named=True):
        parts = [f"{SHORT_NAMES.get(k, k)} {value(v)}" for k, v in row.items() if k != label and v is not None]
        lines.append(f"- **{row[label]}**: " + ", ".join(parts))
    return "\n".join(lines) or "none"


def reasons_markdown(reasons: Mapping[str, str]) -> str:
    """name -> why, as wrapping bullet lines ('none' when empty)."""
    return "\n".join(f"- `{name}`: {why}" for name, why in reasons.items()) or "none"


def members_markdown(members: pl.DataFrame) -> str:
    """The members table (member_outputs.member_table) as one wrapping line per member: its stage, its smoke
    gate, and its weight or why it is not in the ensemble. A table row of a full member name and four more
    cells is wider than the value column and never breaks; a line wraps at any width."""
    lines = []
    for row in members.iter_rows(named=True):
        parts = [row["stage"], f"smoke gate {row['smoke gate']}"]
        if row["weight"] is not None:
            parts.append(f"weight {row['weight']:.2f}")
        else:
            why = row["why not in"] or ""
            if row["smoke gate"] == "FAILED":  # already said just before
                why = why.removeprefix("smoke gate failed: ")
            parts.append("not in the ensemble" + (f": {why}" if why else ""))
        lines.append(f"- **{row['member']}**: " + ", ".join(parts))
    return "\n".join(lines) or "none"


def mlflow_run_link(url: str, run_id: str) -> dg.MetadataValue:
    """The run's page in the MLflow UI as a link whose text is short and wraps ('MLflow run 30c90406 at
    127.0.0.1:5000'). A url value shows the whole address as its text: the run page's address is over 60
    characters, one word wider than the value column at a 1280 px window, and Dagster never shortens it."""
    return dg.MetadataValue.md(f"[MLflow run {run_id[:8]} at {urlsplit(url).netloc}]({url})")


def workdir_metadata(work: Path, project: Path) -> dg.MetadataValue:
    """The plan's workdir as params.yaml says it: relative to the project folder (params.yaml's) when inside it."""
    return _relative_path(work, project)


def work_path(work: Path, path: Path) -> dg.MetadataValue:
    """A file of the plan as its asset page shows it: relative to the workdir (the page's `workdir` entry says
    where that is)."""
    return _relative_path(path, work)


def _relative_path(path: Path, base: Path) -> dg.MetadataValue:
    """`path` relative to `base` when inside it, else whole: an absolute path is one word wider than the value
    column at a 1280 px window."""
    inside = Path(path).is_relative_to(base)
    return dg.MetadataValue.path(str(Path(path).relative_to(base)) if inside else str(path))


def _si(value: int) -> str:
    for size, suffix in ((10**9, "G"), (10**6, "M"), (10**4, "k")):
        if abs(value) >= size:
            return f"{value / (size if suffix != 'k' else 1000):.3g}{suffix}"
    return str(value)


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



# --- checkpoints: a few headline numbers, the rest in tables ----------------------------------------
PER_CLASS_PREFIXES = ("precision_", "recall_", "f1_")


def checkpoint_metadata(metrics: Mapping[str, Any], classes: list[str]) -> dict[str, Any]:
    """What a person reads first (log loss, accuracy, best epoch, stop reason, minutes, peak memory) as
    first-class metadata, plotted across materializations; per-class scores and every other number as one
    table each, instead of dozens of rows of raw floats."""
    headline = {
        "val_log_loss": round(float(metrics["val_loss"]), 4) if "val_loss" in metrics else None,
        "val_accuracy": round(float(metrics["val_acc"]), 4) if "val_acc" in metrics else None,
        "best_epoch": metrics.get("best_epoch"),
        "stop_reason": metrics.get("stopped_reason"),
        # 4 decimals (6 ms): the morning report sums these, and a tiny step rounded to 2 decimals reads as 0 minutes.
        "minutes": round(float(metrics["wall_seconds"]) / 60, 4) if "wall_seconds" in metrics else None,
        "peak_memory_mb": round(float(metrics["peak_memory_mb"]), 1) if "peak_memory_mb" in metrics else None,
    }
    out: dict[str, Any] = {k: (dg.MetadataValue.text(v) if isinstance(v, str) else v) for k, v in headline.items() if v is not None}
    shown = {"val_loss", "val_acc", "best_epoch", "stopped_reason", "wall_seconds", "peak_memory_mb"}
    per_class = [
        {"class": c, **{p.rstrip("_"): metrics.get(f"{p}{c}") for p in PER_CLASS_PREFIXES}} for c in classes
    ]
    if per_class:
        out["per_class"] = dg.MetadataValue.md(frame_markdown(pl.DataFrame(per_class), float_digits=3))
    per_class_keys = {f"{p}{c}" for p in PER_CLASS_PREFIXES for c in classes}
    rest = [
        {"metric": k, "value": _number(v)}
        for k, v in metrics.items()
        if k not in shown and k not in per_class_keys and isinstance(v, (int, float, str)) and not isinstance(v, bool)
    ]
    if rest:
        out["details"] = dg.MetadataValue.md(frame_markdown(pl.DataFrame(rest, schema={"metric": pl.String, "value": pl.String})))
    return out


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e6 else f"{value:.3e}"
    return str(value)


def verdict_metadata(verdict) -> dict[str, Any]:
    """The smoke verdict on its checkpoint partition: passed/failed and why (training.smoke_gate.SmokeVerdict)."""
    if verdict is None:
        return {"smoke_gate": dg.MetadataValue.text("no verdict: retrain this checkpoint")}
    text = "passed" if verdict.passed else "FAILED: " + "; ".join(verdict.reasons)
    checks = "\n".join(f"| {name} | {'pass' if ok else 'FAIL'} |" for name, ok in verdict.checks.items())
    return {
        "smoke_gate": dg.MetadataValue.text(text),
        "smoke_checks": dg.MetadataValue.md("| check | result |\n| --- | --- |\n" + checks),
    }
