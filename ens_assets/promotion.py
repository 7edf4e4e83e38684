"""Gating and promotion: which checkpoint partitions a member has earned, from its stored smoke verdict.

The verdict itself is judged at training time (ens_assets.training.smoke_gate.evaluate_smoke).
"""

from __future__ import annotations

from typing import Any

from ens_assets.plan import SMOKE_FOLD, Member, Plan
from ens_assets.training.checkpoint_store import CheckpointStore
from ens_assets.training.smoke_gate import SmokeVerdict


def gate_problem(member: Member, fold: str, verdict: SmokeVerdict | None) -> str | None:
    """Why partition `fold` of `member` may not run, given its stored smoke verdict; None when it may
    ("earn your long runs"): smoke always runs, a k fold once the member is at cv and its smoke passed."""
    if fold == SMOKE_FOLD:
        return None
    if member.stage != "cv":
        return (
            f"{member.key} is at stage '{member.stage}': fold {fold} runs only after promotion. Check its smoke "
            f"checkpoint, then `ens-assets promote {member.key}` (or stage: auto promotes it once smoke passes)"
        )
    if verdict is None:
        return f"{member.key} has no smoke checkpoint yet: materialize partition {member.key}|{SMOKE_FOLD} first"
    if not verdict.passed:
        return f"{member.key} failed its smoke gate, so it is never run on k folds: " + "; ".join(verdict.reasons)
    return None


def cv_gate_problem(plan: Plan, member_key: str, fold: str) -> str | None:
    """Why a checkpoint partition may not run now, or None when it may (gate_problem on the stored verdict)."""
    member = plan.member(member_key)
    needs_verdict = fold != SMOKE_FOLD and member.stage == "cv"
    return gate_problem(member, fold, CheckpointStore(plan).verdict(member_key) if needs_verdict else None)


def gate_summary(plan, member_key: str) -> str:
    """Which gate a member has passed, in one line (for the UI and reports)."""
    member = plan.member(member_key)
    verdict = CheckpointStore(plan).verdict(member_key)
    if verdict is None:
        return "no smoke run yet"
    if not verdict.passed:
        return "smoke gate failed: " + "; ".join(verdict.reasons)
    if member.stage == "cv":
        return "smoke gate passed; promoted to cv (k folds)"
    return "smoke gate passed; not promoted yet (`ens-assets promote MEMBER`, or stage: auto)"


PROMOTIONS_LOG = "promotions.jsonl"  # under plan.work: one line per stage:auto promotion, read by the report


def smoke_summary(verdict: SmokeVerdict, n_classes: int) -> str:
    acc = float(verdict.metrics.get("val_accuracy", 0.0))
    return f"acc {acc:.2f}, {acc * n_classes:.1f}x chance"


def record_promotion(plan, member: str, reason: str, by: str) -> dict[str, Any]:
    """Append a promotion decision to the log the morning report reads (a decision is never silent)."""
    import json
    import time

    entry = {"member": member, "reason": reason, "by": by, "unix": time.time()}
    log = plan.work / PROMOTIONS_LOG
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as fh:  # one short line per append; a torn last line is skipped when read
        fh.write(json.dumps(entry) + "\n")
    return entry


def promote_passed_auto_members(params_path, by: str) -> list[dict[str, Any]]:
    """Promote every `stage: auto` member whose smoke gate passed to cv in params.yaml; return the decisions."""
    from ens_assets.params_edit import promote_member
    from ens_assets.plan import load_plan

    plan = load_plan(params_path)
    store = CheckpointStore(plan)
    decisions = []
    for member in plan.members:
        if member.stage != "auto":
            continue
        verdict = store.verdict(member.key)
        if verdict is None or not verdict.passed:
            continue
        reason = f"smoke passed: {smoke_summary(verdict, len(store.smoke_classes(member.key)) or 1)}"
        promote_member(params_path, member.key)
        decisions.append(record_promotion(plan, member.key, reason, by))
    return decisions
