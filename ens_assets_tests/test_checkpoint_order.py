"""checkpoint_order: the smoke-first, gated, cheapest-first order the CLI's train stage and the nightly
schedule both follow (pure: the state is given, nothing is read from disk)."""

from ens_assets.checkpoint_order import CheckpointState, checkpoint_order
from ens_assets.plan import plan_from_dict
from ens_assets.training.smoke_gate import SmokeVerdict

PASSED = SmokeVerdict(passed=True, checks={"no_nan": True})
FAILED = SmokeVerdict(passed=False, checks={"no_nan": False}, reasons=["a loss was NaN"])


def _plan(tmp_path, k=3):
    members = [
        {"backbone": "test_resnet", "threshold": 0.05, "recipe": "geo", "stage": "cv"},  # a: heavy
        {"backbone": "test_efficientnet", "threshold": 0.05, "recipe": "geo", "stage": "cv"},  # b: cheap
        {"backbone": "test_vit", "threshold": 0.05, "recipe": "geo", "stage": "cv"},  # c: smoke failed
        {"backbone": "test_resnet", "threshold": 0.2, "recipe": "geo", "stage": "smoke"},  # d: not promoted
    ]
    raw = {"crops": {"thresholds": [0.05, 0.2], "image_size": 32}, "folds": {"k": k}, "recipes": {"geo": {}},
           "members": members, "workdir": "work"}  # fmt: skip
    return plan_from_dict(raw, tmp_path, check_backbones=False)


def test_smoke_first_then_earned_folds_cheapest_first(tmp_path):
    plan = _plan(tmp_path)
    a, b, c, d = plan.member_keys
    state = CheckpointState(verdicts={a: PASSED, b: PASSED, c: FAILED, d: None}, costs={a: 9e9, b: 1e6, c: 1e6})
    order = checkpoint_order(plan, state)
    smoke = [m for m, f in order.runs if f == "smoke"]
    assert order.runs[: len(smoke)] == [(m, "smoke") for m in smoke], "every smoke run comes before any k fold"
    assert smoke == [b, c, a, d]  # cheapest first; unmeasured (d) last
    assert order.runs[len(smoke) :] == [(b, f) for f in "012"] + [(a, f) for f in "012"]
    assert set(order.blocked) == {c} and "failed its smoke gate" in order.blocked[c] and "NaN" in order.blocked[c]


def test_fresh_checkpoints_and_missing_verdicts(tmp_path):
    plan = _plan(tmp_path)
    a, b, c, d = plan.member_keys
    state = CheckpointState(verdicts={a: PASSED, b: None, c: None, d: None}, fresh=frozenset({(a, "smoke"), (a, "1")}))
    order = checkpoint_order(plan, state)
    assert (a, "smoke") not in order.runs and (a, "1") not in order.runs and (a, "0") in order.runs
    assert "no smoke checkpoint yet" in order.blocked[b] and d not in order.blocked  # d has no k folds to block


def test_folds_sort_by_number_not_text(tmp_path):
    plan = _plan(tmp_path, k=11)
    a = plan.member_keys[0]
    order = checkpoint_order(plan, CheckpointState(verdicts={a: PASSED}))
    assert [f for m, f in order.runs if m == a] == ["smoke", *map(str, range(11))]
