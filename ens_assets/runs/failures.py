"""One line per failed step of a run: which asset, which partition, and the cause a user can act on."""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg

GATE_CHECK = "smoke_gate"


@dataclass(frozen=True)
class StepFailure:
    step_key: str
    partition: str | None
    cause: str

    @property
    def is_gate_verdict(self) -> bool:
        """A smoke gate that says "no" is a verdict about a member, not a broken pipeline."""
        return self.step_key.endswith(GATE_CHECK)

    def line(self) -> str:
        where = f"asset {self.step_key}" + (f", partition {self.partition}" if self.partition else "")
        return f"{where}: {self.cause}"


def gate_said_no(result: dg.ExecuteInProcessResult) -> bool:
    """The run succeeded but its smoke gate failed: a verdict recorded as a failed check, not a step failure."""
    return any(not e.passed for e in result.get_asset_check_evaluations() if e.check_name == GATE_CHECK)


def run_failures(result: dg.ExecuteInProcessResult, partition: str | None) -> list[StepFailure]:
    return [
        StepFailure(event.step_key, partition, _cause(event.step_failure_data))
        for event in result.all_events
        if event.is_step_failure
    ]


def _cause(data) -> str:
    user = data.user_failure_data
    if user is not None and user.description:
        return user.description.strip().splitlines()[0]
    error = data.error
    # The library's wrapper ("Error occurred while executing op") hides the cause users need to see.
    while error is not None and error.cause is not None and "Error occurred while executing" in error.message:
        error = error.cause
    if error is None:
        return "failed (no error recorded)"
    message = error.message.strip().splitlines()[0] if error.message.strip() else error.cls_name or "failed"
    # "ens_assets.data.detections.DetectionsError: ..." -> "DetectionsError: ..."
    head, sep, rest = message.partition(": ")
    if sep and "." in head and " " not in head:
        message = f"{head.rsplit('.', 1)[-1]}: {rest}"
    return message
