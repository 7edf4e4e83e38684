"""The DVC pipeline (dvc.yaml) end to end with the real dvc binary, in a throwaway git repository.

One tiny plan is reproduced once for the module; the tests then check what DVC users rely on: a
second `dvc repro` does nothing, metrics and plots are declared, and editing one member retrains only
that member's checkpoint partitions (the train stage reruns as a whole; training skips fresh
partitions and DVC keeps the persisted checkpoints). The last test edits params.yaml, so it runs last.
"""

import json
import re

import pytest

from ens_assets_tests.orchestration.dvc_sandbox import DVC_ENV, MEMBER_A, MEMBER_B, DvcSandbox, dvc_binary

pytestmark = pytest.mark.slow

STAGES = ("data", "crops", "train", "predict", "ensemble")
OUTS = (
    "data/demo/megadetector.json",
    "data/work/manifest.parquet",
    "data/work/detections.parquet",
    "data/work/folds.parquet",
    "data/work/folds.json",
    "data/work/crops/0.05/images.npy",
    "data/work/crops/0.20/images.npy",
    "data/work/oof/test_resnet.t005.geo.parquet",
    "data/work/test_predictions/test_resnet.t020.geo.parquet",
    "data/work/ensemble/spec.json",
    "data/work/ensemble/submission.csv",
    "data/work/ensemble/metrics.json",
    "data/work/diagnostics/roadmap.md",
    "data/work/diagnostics/per_class_recall.csv",
)


def _ran_stages(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory):
    dvc = dvc_binary()
    if dvc is None:
        pytest.skip(f"no dvc binary: set {DVC_ENV} or run `make dvc-env` (creates .venv-dvc/bin/dvc)")
    sandbox = DvcSandbox(tmp_path_factory.mktemp("dvc-repo"), dvc)
    first = sandbox.run_dvc("repro")
    return sandbox, first.stdout


def test_repro_runs_every_stage_in_order_and_produces_the_outs(reproduced):
    sandbox, output = reproduced
    assert _ran_stages(output) == list(STAGES)
    missing = [p for p in OUTS if not (sandbox.root / p).is_file()]
    assert not missing, f"dvc repro left these outs missing: {missing}"
    for member in (MEMBER_A, MEMBER_B):
        assert len(sandbox.checkpoint_files(member)) == 6, f"{member}: expected smoke + 2 folds x (json, weights)"
    # The stages ran on the instance DVC was pointed at (DAGSTER_HOME), not on the repo's.
    assert (sandbox.root / "dagster_home" / "history" / "runs.db").is_file()
    lock = (sandbox.root / "dvc.lock").read_text()
    assert "data/work/checkpoints" in lock and "members:" in lock


def test_generated_data_stays_out_of_git(reproduced):
    sandbox, _ = reproduced
    untracked = sandbox.git("status", "--porcelain", "--untracked-files=all").stdout.splitlines()
    leaked = [line for line in untracked if line[3:].startswith(("data/", "dagster_home/", "mlruns"))]
    assert not leaked, f"generated files would be committed: {leaked}"


def test_second_repro_runs_nothing(reproduced):
    sandbox, _ = reproduced
    again = sandbox.run_dvc("repro")
    assert _ran_stages(again.stdout) == []
    assert "Data and pipelines are up to date" in again.stdout
    assert "up to date" in sandbox.run_dvc("status").stdout


def test_metrics_and_plots_are_declared(reproduced):
    sandbox, _ = reproduced
    metrics = json.loads(sandbox.run_dvc("metrics", "show", "--json").stdout)
    shown = json.dumps(metrics)
    assert "data/work/ensemble/metrics.json" in shown
    assert '"ensemble"' in shown and '"best_member"' in shown and '"log_loss"' in shown
    plots = json.loads(sandbox.run_dvc("plots", "show", "--json").stdout)
    assert "data/work/diagnostics/per_class_recall.csv" in plots["data"]
    assert "data/work/diagnostics/recall_matrix.png" in plots["data"]


def test_editing_one_member_retrains_only_that_member(reproduced):
    sandbox, _ = reproduced
    untouched_before = sandbox.checkpoint_files(MEMBER_A)
    edited_before = sandbox.checkpoint_files(MEMBER_B)
    params = sandbox.read_params()
    edited = next(m for m in params["members"] if m["threshold"] == 0.2)
    edited["overrides"] = {"lr": 0.001}
    sandbox.write_params(params)

    output = sandbox.run_dvc("repro").stdout

    assert _ran_stages(output) == ["train", "predict", "ensemble"]
    assert sandbox.checkpoint_files(MEMBER_A) == untouched_before, f"{MEMBER_A} was retrained though unchanged"
    edited_after = sandbox.checkpoint_files(MEMBER_B)
    assert edited_after.keys() == edited_before.keys()
    stale = [str(p.relative_to(sandbox.root)) for p in edited_before if edited_after[p] <= edited_before[p]]
    assert not stale, f"{MEMBER_B}'s overrides changed but these were not rewritten: {stale}"
    sidecar = json.loads((sandbox.root / f"data/work/checkpoints/{MEMBER_B}/fold0/checkpoint.json").read_text())
    assert sidecar["member_spec"]["training"]["lr"] == 0.001, "the retrained checkpoint does not record the new lr"
