"""The morning report: what the night trained, what the gates said, what the ensemble gained, what to do next.

One report per date, under <workdir>/reports/<date>/: report.md (the full report), summary.json (what the
next night's report compares against), proposals.json (each proposal a params.yaml edit that
`ens-assets apply-proposals` applies, see ens_assets.params_edit) and ensemble_oof.parquet (tonight's
nested OOF probabilities, the "before" of tomorrow's paired deltas).

"Better" and "worse" are claimed only when the paired bootstrap interval of the difference (resampling
sites) excludes zero; anything else is reported as within the noise.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import polars as pl

from ens_assets.atomic import write_json, write_parquet, write_text
from ens_assets.ensemble.build import (
    BEST_PREFIX,
    ENSEMBLE_PREFIX,
    nested_probs,
    read_metrics,
    read_nested_oof,
    read_per_class_recall,
    read_spec,
)
from ens_assets.ensemble.diagnostics import all_fail_classes
from ens_assets.ensemble.intervals import Resampler, compare
from ens_assets.plan import Plan
from ens_assets.promotion import PROMOTIONS_LOG
from ens_assets.training.checkpoint_store import CheckpointStore

REPORT_FILE, SUMMARY_FILE, PROPOSALS_FILE, OOF_FILE = "report.md", "summary.json", "proposals.json", "ensemble_oof.parquet"
LOWEST_THRESHOLD = 0.01


@dataclass
class NightEvent:
    """One checkpoint partition the night touched (from the Dagster instance's run records)."""

    member: str
    fold: str
    status: str  # trained | skipped_fresh | failed
    wall_seconds: float = 0.0
    peak_memory_mb: float = 0.0
    note: str = ""
    run_id: str = ""


@dataclass
class MorningReport:
    date: str
    markdown: str
    short: str
    summary: dict[str, Any]
    proposals: list[dict[str, Any]]
    paths: dict[str, Path] = field(default_factory=dict)


def reports_dir(plan: Plan) -> Path:
    return plan.work / "reports"


def read_report(plan: Plan, date: str) -> str | None:
    """The markdown report of `date` (report.md); None when that night has no report."""
    path = reports_dir(plan) / date / REPORT_FILE
    return path.read_text() if path.is_file() else None


def read_short_report(plan: Plan, date: str) -> str | None:
    """The few lines `make demo` prints of the report of `date` (summary.json's short); None when there is none."""
    path = reports_dir(plan) / date / SUMMARY_FILE
    return json.loads(path.read_text())["short"] if path.is_file() else None


def previous_report(plan: Plan, date: str) -> Path | None:
    """The latest report folder dated before `date` that holds a summary, or None."""
    root = reports_dir(plan)
    if not root.is_dir():
        return None
    earlier = sorted(d for d in root.iterdir() if d.name < date and (d / SUMMARY_FILE).is_file())
    return earlier[-1] if earlier else None


def window_start(plan: Plan, date: str) -> float:
    """Unix time the night began: when the previous report was made (0 before the first report)."""
    previous = previous_report(plan, date)
    return float(json.loads((previous / SUMMARY_FILE).read_text())["as_of"]) if previous else 0.0


def latest_proposals(plan: Plan) -> tuple[str, list[dict[str, Any]]]:
    """(date, proposals) of the newest report; raises FileNotFoundError when there is none."""
    root = reports_dir(plan)
    dated = sorted(d for d in root.iterdir() if (d / PROPOSALS_FILE).is_file()) if root.is_dir() else []
    if not dated:
        raise FileNotFoundError(f"no morning report under {root}: run `ens-assets report` first")
    return dated[-1].name, json.loads((dated[-1] / PROPOSALS_FILE).read_text())


def promotions_since(plan: Plan, since: float) -> list[dict[str, Any]]:
    log = plan.work / PROMOTIONS_LOG
    if not log.is_file():
        return []
    out = []
    for line in log.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if entry.get("unix", 0) >= since:
            out.append(entry)
    return out


# --- pieces ---------------------------------------------------------------------------------------
def smoke_verdicts(plan: Plan) -> list[dict[str, Any]]:
    """Every member's smoke verdict (from its smoke checkpoint), with a one-line reason."""
    rows = []
    store = CheckpointStore(plan)
    for member in plan.members:
        verdict = store.verdict(member.key)
        if verdict is None:
            rows.append({"member": member.key, "stage": member.stage, "verdict": "not run", "why": "no smoke checkpoint yet"})
            continue
        n_classes = len(store.smoke_classes(member.key)) or 1
        acc = float(verdict.metrics.get("val_accuracy", 0.0))
        why = f"acc {acc:.2f}, {acc * n_classes:.1f}x chance"
        if not verdict.passed:
            why = "; ".join(verdict.reasons or ["failed"])
        rows.append({"member": member.key, "stage": member.stage, "verdict": "passed" if verdict.passed else "failed",
                     "why": why, "val_accuracy": acc, "times_chance": acc * n_classes})
    return rows


def _what_ran(events: Sequence[NightEvent]) -> dict[str, Any]:
    trained = [e for e in events if e.status == "trained"]
    return {
        "trained": len(trained),
        "skipped_fresh": sum(e.status == "skipped_fresh" for e in events),
        "failed": sum(e.status == "failed" for e in events),
        "compute_minutes": sum(e.wall_seconds for e in trained) / 60.0,
        "peak_memory_mb": max((e.peak_memory_mb for e in trained), default=0.0),
    }


def _ensemble_now(plan: Plan) -> dict[str, Any] | None:
    d = plan.ensemble_dir
    metrics, oof = read_metrics(d), read_nested_oof(d)
    if metrics is None or oof is None:
        return None
    return {"metrics": metrics, "spec": read_spec(d), "oof": oof}


def _deltas(now_oof: pl.DataFrame, before_oof: pl.DataFrame | None, classes: list[str], replicates: int) -> dict[str, Any]:
    """Paired deltas (tonight's ensemble - before) on the images both cover; before = last night's ensemble,
    or tonight's best single member on the first night."""
    if before_oof is not None:
        joined = now_oof.join(before_oof.select("image_id", *[f"{ENSEMBLE_PREFIX}{c}" for c in classes]),
                              on="image_id", how="inner", suffix="_before")
        new = nested_probs(joined, ENSEMBLE_PREFIX, classes)
        old = joined.select([f"{ENSEMBLE_PREFIX}{c}_before" for c in classes]).to_numpy().astype(np.float64)
        against = "last night's ensemble"
    else:
        joined = now_oof
        new, old = nested_probs(joined, ENSEMBLE_PREFIX, classes), nested_probs(joined, BEST_PREFIX, classes)
        against = "tonight's best single member (first report: no earlier night)"
    y = np.array([classes.index(v) for v in joined["label"].to_list()])
    resampler = Resampler(joined["site"].to_list(), len(y), replicates=replicates)
    return {"against": against, "images": len(y), "unit": resampler.unit, "deltas": compare(new, old, y, resampler, classes)}


def _fmt_delta(d: dict[str, float]) -> str:
    tag = "better" if d["better"] else ("worse" if d["worse"] else "within noise")
    return f"{d['value']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}] {tag}"


def _lower_threshold(plan: Plan) -> float | None:
    thresholds = [t for t in plan.crops.thresholds if isinstance(t, (int, float))]
    if plan.detection_source == "none" or not thresholds:
        return None
    lowest = min(thresholds)
    proposal = math.floor(lowest * 100 / 2) / 100
    return proposal if proposal >= LOWEST_THRESHOLD and proposal < lowest else None


def build_proposals(plan: Plan, verdicts: list[dict], recall: pl.DataFrame | None, ensemble: dict | None,
                    zero_streak: dict[str, int]) -> list[dict[str, Any]]:
    """The diagnostics turned into params.yaml edits (see ens_assets.params_edit for the operations)."""
    proposals: list[dict[str, Any]] = []
    for v in verdicts:
        if v["verdict"] == "passed" and v["stage"] != "cv":
            proposals.append({
                "kind": "promote", "member": v["member"],
                "text": f"promote {v['member']} to cv (smoke passed: {v['why']})",
                "ops": [{"op": "set_member", "member": v["member"], "field": "stage", "value": "cv"}],
            })
    lower = _lower_threshold(plan)
    if recall is not None and lower is not None and ensemble is not None:
        failing = all_fail_classes(recall, plan.ensemble.fail_recall)
        best = ensemble["metrics"]["best_member"].get("name")
        model = plan.member(best) if best in plan.member_keys else plan.members[0]
        new_member = {"backbone": model.backbone, "threshold": lower, "recipe": model.recipe, "stage": "smoke"}
        exists = any(m.backbone == model.backbone and m.recipe == model.recipe and m.threshold == lower for m in plan.members)
        for c in failing:
            members = recall.filter(pl.col("member") != "ensemble")
            top = float(members[c].max())
            proposals.append({
                "kind": "threshold", "class": c,
                "text": (f"add threshold {lower:g} for class {c} (recall {top:.2f} or less for every member; "
                         "low-threshold crops recover small animals)"),
                "ops": [{"op": "add_threshold", "value": lower}]
                + ([] if exists else [{"op": "add_member", "value": new_member}]),
            })
            break  # one threshold change covers every failing class; the text names the worst first
    for member, nights in sorted(zero_streak.items()):
        if nights >= plan.ensemble.drop_after_nights and member in plan.member_keys and len(plan.members) > 1:
            proposals.append({"kind": "drop", "member": member,
                              "text": f"drop member {member} (weight 0 for {nights} nights)",
                              "ops": [{"op": "remove_member", "member": member}]})
    if ensemble is not None and plan.ensemble.method != "auto":
        methods = ensemble["metrics"].get("methods", {})
        better = {m: r for m, r in methods.items() if m not in (plan.ensemble.method, "auto")
                  and r.get("delta_hi") is not None and r["delta_hi"] < 0}
        if better:
            m, r = min(better.items(), key=lambda kv: kv[1]["log_loss"])
            configured = methods[plan.ensemble.method]["log_loss"]
            proposals.append({
                "kind": "method", "method": m,
                "text": (f"set ensemble.method: {m} (nested log loss {r['log_loss']:.3f} vs {configured:.3f} for "
                         f"{plan.ensemble.method}; paired difference {r['delta_vs_configured']:+.3f} "
                         f"[{r['delta_lo']:+.3f}, {r['delta_hi']:+.3f}] excludes zero)"),
                "ops": [{"op": "set", "path": ["ensemble", "method"], "value": m}],
            })
    return proposals


# --- the report -----------------------------------------------------------------------------------
def build_morning_report(plan: Plan, date: str, events: Sequence[NightEvent], *, now: float | None = None) -> MorningReport:
    """Assemble, write and return the report of `date` (see the module docstring for the files)."""
    now = time.time() if now is None else now
    out = reports_dir(plan) / date
    previous = previous_report(plan, date)
    prev_summary = json.loads((previous / SUMMARY_FILE).read_text()) if previous else {}
    since = float(prev_summary.get("as_of", 0.0))
    ran = _what_ran(events)
    verdicts = smoke_verdicts(plan)
    promotions = promotions_since(plan, since)
    ensemble = _ensemble_now(plan)
    recall = read_per_class_recall(plan.diagnostics_dir)

    weights = (ensemble or {}).get("spec", {}).get("weights", {})
    zero = [m for m, w in weights.items() if w <= 0]
    streak_before = prev_summary.get("zero_weight_streak", {})
    zero_streak = {m: int(streak_before.get(m, 0)) + 1 for m in zero}

    lines = [f"# Morning report {date}", "", *_night_lines(since, ran, events, verdicts, promotions)]
    summary: dict[str, Any] = {"date": date, "as_of": now, "ran": ran, "verdicts": verdicts, "promotions": promotions,
                               "zero_weight": zero, "zero_weight_streak": zero_streak, "previous": previous.name if previous else None}
    short = [f"morning report {date}: trained {ran['trained']}, fresh {ran['skipped_fresh']}, failed {ran['failed']} "
             f"({ran['compute_minutes']:.1f} min)"]
    if ensemble is None:
        lines += ["## Ensemble", "- no ensemble yet: promote members to cv and build it", ""]
    else:
        section, headline, short_line = _ensemble_section(plan, ensemble, previous, zero, zero_streak)
        lines += section
        summary.update(headline)
        short.append(short_line)

    proposals = build_proposals(plan, verdicts, recall, ensemble, zero_streak)
    lines += ["## Proposals (each a params.yaml change)"]
    lines += [f"{i}. {p['text']}" for i, p in enumerate(proposals, 1)] or ["- none"]
    if proposals:
        lines += ["", "Apply: `ens-assets apply-proposals` (shows the diff; `--yes` writes params.yaml)."]
    short += [f"  proposal: {p['text']}" for p in proposals] or ["  no proposals"]
    summary["proposals"] = [p["text"] for p in proposals]
    markdown = "\n".join(lines) + "\n"
    summary["short"] = "\n".join(short)

    paths = {"report": write_text(out / REPORT_FILE, markdown), "proposals": write_json(out / PROPOSALS_FILE, proposals)}
    if ensemble is not None:
        paths["ensemble_oof"] = write_parquet(out / OOF_FILE, ensemble["oof"])
    paths["summary"] = write_json(out / SUMMARY_FILE, summary)  # last: it marks the report complete
    return MorningReport(date, markdown, "\n".join(short), summary, proposals, paths)


def _night_lines(since: float, ran: dict[str, Any], events: Sequence[NightEvent], verdicts: list[dict[str, Any]],
                 promotions: list[dict[str, Any]]) -> list[str]:  # fmt: skip
    """What ran since the last report, every smoke verdict and the automatic promotions, as Markdown lines."""
    lines: list[str] = []
    when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(since)) + " UTC" if since else "the beginning"
    lines += [f"## What ran (since {when})",
              f"- trained {ran['trained']}, skipped as fresh {ran['skipped_fresh']}, failed {ran['failed']}; "
              f"compute {ran['compute_minutes']:.1f} min; peak memory {ran['peak_memory_mb']:.0f} MB", ""]
    if events:
        lines += ["| member | fold | status | minutes | peak MB | note |", "| --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {e.member} | {e.fold} | {e.status} | {e.wall_seconds / 60:.1f} | {e.peak_memory_mb:.0f} | {e.note} |"
                  for e in events]
        lines.append("")
    lines += ["## Smoke verdicts", "| member | stage | verdict | why |", "| --- | --- | --- | --- |"]
    lines += [f"| {v['member']} | {v['stage']} | {v['verdict']} | {v['why']} |" for v in verdicts]
    lines.append("")
    if promotions:
        lines += ["## Promoted automatically (stage: auto)"]
        lines += [f"- {p['member']} -> cv by {p['by']}: {p['reason']}" for p in promotions]
        lines.append("")

    return lines


def _ensemble_section(plan: Plan, ensemble: dict[str, Any], previous, zero: list[str],
                      zero_streak: dict[str, int]) -> tuple[list[str], dict[str, Any], str]:  # fmt: skip
    """Tonight's ensemble against last night's (paired deltas) and its zero-weight members: Markdown lines, the
    summary's headline fields and the short report's line."""
    metrics, spec = ensemble["metrics"], ensemble["spec"]
    e, b = metrics["ensemble"], metrics["best_member"]
    classes = list(spec["classes"])
    before = pl.read_parquet(previous / OOF_FILE) if previous and (previous / OOF_FILE).is_file() else None
    deltas = _deltas(ensemble["oof"], before, classes, plan.ensemble.bootstrap_replicates)
    d = deltas["deltas"]
    picked = f" (auto picked {spec['method']})" if spec.get("selected_by") == "auto" else ""
    lines = [f"## Ensemble `{plan.ensemble.method}`{picked}, nested OOF, 95% intervals over {deltas['unit']}",
             f"- log loss {e['log_loss']:.3f} [{e['log_loss_lo']:.3f}, {e['log_loss_hi']:.3f}]; "
             f"temperature-scaled {e['calibrated_log_loss']:.3f} (T = {spec.get('temperature', 1.0):.2f}); "
             f"accuracy {e['accuracy']:.3f} [{e['accuracy_lo']:.3f}, {e['accuracy_hi']:.3f}]",
             f"- best member `{b.get('name')}`: log loss {b['log_loss']:.3f} [{b['log_loss_lo']:.3f}, "
             f"{b['log_loss_hi']:.3f}], accuracy {b['accuracy']:.3f}",
             "", f"### Before/after: tonight vs {deltas['against']} ({deltas['images']} paired images)",
             f"- log loss {_fmt_delta(d['log_loss'])}", f"- accuracy {_fmt_delta(d['accuracy'])}", "",
             "| class | recall delta [95%] |", "| --- | --- |"]
    lines += [f"| {k.split('/', 1)[1]} | {_fmt_delta(v)} |" for k, v in d.items() if k.startswith("recall/")]
    lines.append("")
    lines += ["## Members with zero weight"]
    lines += [f"- `{m}` (zero for {zero_streak[m]} night(s) in a row)" for m in zero] or ["- none"]
    lines.append("")
    headline = dict(ensemble=e, best_member=b, method=spec["method"], deltas=deltas)
    short = (f"  ensemble log loss {e['log_loss']:.3f} [{e['log_loss_lo']:.3f}, {e['log_loss_hi']:.3f}], "
             f"vs {deltas['against'].split(' (')[0]}: {_fmt_delta(d['log_loss'])}")
    return lines, headline, short
