"""What the CLI prints after the data and crops stages: quarantined label rows and images by reason and where
the full list is (before, these lived only in parquet files and UI warnings)."""

from __future__ import annotations

import re

from ens_assets.data.crops import QUARANTINE_FILE as CROP_QUARANTINE_FILE
from ens_assets.data.ingest import read_label_quarantine
from ens_assets.plan import Plan
from ens_assets.training.checkpoint_store import CheckpointStore

MAX_REASONS = 6
_FILE_ROW_PREFIX = re.compile(r"^/.*?: ")  # label-row reasons start with '<absolute file> row N (id X): '


def reason_kind(reason: str) -> str:
    """'truncated image data: re-copy...' -> 'truncated image data'; a label row's file/row prefix dropped."""
    return re.split(r"[;:(]", _FILE_ROW_PREFIX.sub("", reason, count=1), maxsplit=1)[0].strip()


def reason_table(counts: dict[str, int], indent: str = "        ") -> list[str]:
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    lines = [f"{indent}{n:6d}  {kind}" for kind, n in ordered[:MAX_REASONS]]
    if len(ordered) > MAX_REASONS:
        rest = sum(n for _, n in ordered[MAX_REASONS:])
        lines.append(f"{indent}{rest:6d}  ({len(ordered) - MAX_REASONS} other kinds)")
    return lines


def data_stage_report(plan: Plan) -> list[str]:
    rows = read_label_quarantine(plan)
    if rows is None or not rows.height:
        return []
    counts: dict[str, int] = {}
    for reason in rows["reason"].to_list():
        counts[reason_kind(reason)] = counts.get(reason_kind(reason), 0) + 1
    return [f"      quarantined {rows.height} label row(s), by reason (full list: {plan.manifest_quarantine_path}):",
            *reason_table(counts)]


def crops_stage_report(plan: Plan, key: str) -> list[str]:
    try:
        summary = CheckpointStore(plan).crop_summary(key)
    except (OSError, ValueError):
        summary = {}
    n = int(summary.get("n_quarantined", 0) or 0)
    if not n:
        return []
    lines = [f"      quarantined {n} of {summary.get('n_images', '?')} images, by reason "
             f"(full list: {plan.crops_dir(key) / CROP_QUARANTINE_FILE}):"]  # fmt: skip
    return lines + reason_table(summary.get("quarantined_by_reason") or {"(see the list)": n})
