"""SIGKILL a training process after its first recovery checkpoint; the re-run ends bit-for-bit equal."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from ens_assets.training.checkpoint import load_checkpoint, load_recovery
from ens_assets.member_runs import train_member_fold
from ens_assets.training.run import RECOVERY_SUBDIR
from ens_assets_tests.training.tiny_project import make_tiny_plan, tiny_plan_dict

EPOCHS = 3

_CHILD = textwrap.dedent(
    """
    import sys, time, torch
    from pathlib import Path
    torch.set_num_threads(int(sys.argv[2]))
    from ens_assets_tests.training.tiny_project import make_tiny_plan, tiny_plan_dict
    from ens_assets.member_runs import train_member_fold
    raw = tiny_plan_dict(cv={"epochs": %d, "time_budget_s": 600, "patience": 10})
    plan = make_tiny_plan(Path(sys.argv[1]), raw)
    # Slow logging only widens the window between epochs for the kill; it does not touch any RNG.
    train_member_fold(plan, plan.members[0].key, "1", log=lambda message: time.sleep(1.0))
    """
    % EPOCHS
)


def _plan(base):
    return make_tiny_plan(base, tiny_plan_dict(cv={"epochs": EPOCHS, "time_budget_s": 600, "patience": 10}))


@pytest.mark.slow
def test_sigkilled_training_resumes_to_identical_weights(tmp_path, mlflow_store):
    killed_base, straight_base = tmp_path / "killed", tmp_path / "straight"
    plan = _plan(killed_base)
    recovery_dir = plan.checkpoint_dir(plan.members[0].key, "1") / RECOVERY_SUBDIR
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(killed_base), str(torch.get_num_threads())], env=env)
    try:
        deadline = time.monotonic() + 240
        while not (recovery_dir / "recovery.pt").exists():
            assert child.poll() is None, "training process ended before writing a recovery checkpoint"
            assert time.monotonic() < deadline, "no recovery checkpoint within 240 s"
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=60)
    done_before_kill = load_recovery(recovery_dir)["next_epoch"]
    assert 1 <= done_before_kill < EPOCHS, "the kill must land mid-run for this test to mean anything"

    resumed = train_member_fold(plan, plan.members[0].key, "1", log=lambda _: None)
    straight_plan = _plan(straight_base)
    straight = train_member_fold(straight_plan, straight_plan.members[0].key, "1", log=lambda _: None)

    assert resumed.metrics["resumed_from_epoch"] == done_before_kill and straight.metrics["resumed_from_epoch"] == 0
    assert resumed.fingerprint == straight.fingerprint
    weights_resumed, sidecar_resumed = load_checkpoint(resumed.checkpoint_dir)
    weights_straight, sidecar_straight = load_checkpoint(straight.checkpoint_dir)
    assert weights_resumed.keys() == weights_straight.keys()
    assert all(torch.equal(weights_resumed[k], weights_straight[k]) for k in weights_straight)
    assert [h["select_loss"] for h in sidecar_resumed["history"]] == [h["select_loss"] for h in sidecar_straight["history"]]
    assert sidecar_resumed["weights_sha256"] == sidecar_straight["weights_sha256"]
