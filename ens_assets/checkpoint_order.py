"""The order checkpoint partitions train in, smoke first and gated: one function for the CLI and the nightly schedule.

Every member's smoke run comes before any k-fold run; a member's k folds are listed only once it is at stage
cv and its smoke checkpoint passed the gate ("earn your long runs"), and within each of the two groups
cheaper members (FLOPs per image, unmeasured last) go first. `checkpoint_order` is pure: what it needs from
disk (verdicts, costs, which checkpoints are fresh) comes in a `CheckpointState` that `read_checkpoint_state`
reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from ens_assets.plan import SMOKE_FOLD, Plan
from ens_assets.promotion import gate_problem
from ens_assets.training.checkpoint_store import CheckpointStore
from ens_assets.training.run import checkpoint_is_fresh
from ens_assets.training.smoke_gate import SmokeVerdict


@dataclass(frozen=True)
class CheckpointState:
    """What the order depends on beyond the plan: per member its stored smoke verdict and its cost, and the
    (member, fold) partitions whose checkpoints are fresh (left out of the order)."""

    verdicts: Mapping[str, SmokeVerdict | None]
    costs: Mapping[str, float] = field(default_factory=dict)  # FLOPs per image; missing = not measured yet
    fresh: frozenset[tuple[str, str]] = frozenset()


@dataclass(frozen=True)
class CheckpointOrder:
    runs: list[tuple[str, str]]  # (member, fold) in the order they should train
    blocked: dict[str, str]  # member -> why its k folds may not run now


def checkpoint_order(plan: Plan, state: CheckpointState) -> CheckpointOrder:
    """Smoke partitions first, then the k folds each member has earned; cheapest member first in each group."""
    wanted: list[tuple[tuple, str, str]] = []
    blocked: dict[str, str] = {}
    for member in plan.members:
        cost = state.costs.get(member.key, float("inf"))
        for index, fold in enumerate(plan.checkpoint_folds(member)):
            problem = gate_problem(member, fold, state.verdicts.get(member.key))
            if problem:
                blocked.setdefault(member.key, problem)
                continue
            if (member.key, fold) not in state.fresh:
                wanted.append(((fold != SMOKE_FOLD, cost, member.key, index), member.key, fold))
    return CheckpointOrder(runs=[(member, fold) for _, member, fold in sorted(wanted)], blocked=blocked)


def read_checkpoint_state(plan: Plan, *, freshness: bool = True) -> CheckpointState:
    """The plan's checkpoint folders as a CheckpointState. `freshness=False` marks nothing fresh (the CLI asks
    for every partition and the asset itself skips a fresh one); with it, only partitions that may run are
    checked (a freshness check reads the crop cache and the folds table)."""
    store = CheckpointStore(plan)
    verdicts = {m.key: store.verdict(m.key) for m in plan.members}
    costs = {m.key: store.flops_per_image(m.key) for m in plan.members}
    fresh = frozenset(
        (m.key, fold)
        for m in plan.members
        for fold in plan.checkpoint_folds(m)
        if freshness and not gate_problem(m, fold, verdicts[m.key]) and checkpoint_is_fresh(plan, m.key, fold)
    )
    return CheckpointState(verdicts=verdicts, costs=costs, fresh=fresh)
