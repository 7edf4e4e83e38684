"""Checkpoint fingerprints carry the version of the code that trains them, and dvc.yaml's stage deps list
every project source each stage runs (derived from the imports, not written by hand)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ens_assets.code_version import PACKAGE_DIR, code_version, has_code, module_closure, module_path

REPO = PACKAGE_DIR.parent

# The modules whose functions each DVC stage's assets call; the closure of their imports is what it runs.
STAGE_CODE = {
    "data": (["ens_assets.defs.data_assets", "ens_assets.data.demo", "ens_assets.data.ingest",
              "ens_assets.data.detections", "ens_assets.data.folds"], ["ens_assets.data.crops"]),
    "crops": (["ens_assets.defs.data_assets", "ens_assets.data.crops"],
              ["ens_assets.data.demo", "ens_assets.data.ingest", "ens_assets.data.detections", "ens_assets.data.folds",
               "ens_assets.data.camtrap_dp"]),
    "train": (["ens_assets.defs.training_assets", "ens_assets.training.run", "ens_assets.promotion",
               "ens_assets.member_outputs"], []),
    "predict": (["ens_assets.defs.training_assets", "ens_assets.training.run", "ens_assets.member_outputs"], []),
    "ensemble": (["ens_assets.defs.ensemble_assets", "ens_assets.member_outputs"], []),
}  # fmt: skip


@pytest.mark.parametrize("stage", sorted(STAGE_CODE))
def test_dvc_stage_deps_list_every_source_the_stage_runs(stage):
    roots, skip = STAGE_CODE[stage]
    deps = [d.rstrip("/") for d in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][stage]["deps"]]
    ran = [str(module_path(m).relative_to(REPO)) for m in module_closure(roots, skip) if has_code(m)]
    missing = [f for f in ran if not any(f == d or f.startswith(d + "/") for d in deps)]
    assert not missing, f"dvc.yaml stage {stage} runs these sources but does not list them as deps: {missing}"
    assert "ens_assets/cli.py" in deps and "ens_assets/plan.py" in deps


def test_train_stage_lists_the_subset_trainer_and_atomic_writes():
    deps = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["train"]["deps"]
    assert "ens_assets/subsets" in deps and "ens_assets/atomic.py" in deps


def test_code_version_follows_imports_and_ignores_docstrings(tmp_path):
    closure = module_closure(["ens_assets.member_runs"])
    assert {"ens_assets.training.loop", "ens_assets.atomic", "ens_assets.subsets.member_training"} <= set(closure)
    assert not any(m.startswith("ens_assets.ensemble") for m in closure)
    standard = module_closure(["ens_assets.member_runs"], skip=["ens_assets.subsets.member_training"])
    assert "ens_assets.subsets.soup" not in standard and "ens_assets.training.loop" in standard
    assert code_version(["ens_assets.member_runs"]) == code_version(["ens_assets.member_runs"])


_FRESH = """
import sys
from pathlib import Path
import ens_assets
assert Path(ens_assets.__file__).resolve().parent == Path(sys.argv[2]).resolve(), ens_assets.__file__
from ens_assets.plan import load_plan
from ens_assets.training.run import checkpoint_is_fresh
plan = load_plan(sys.argv[1])
print(checkpoint_is_fresh(plan, sys.argv[3], "smoke"))
"""


@pytest.mark.slow
def test_editing_training_code_makes_checkpoints_stale(tiny_data, tmp_path):
    """A copy of the package: a docstring edit or an ensemble edit keeps the checkpoint fresh; one changed
    line in training/loop.py makes it stale."""
    from ens_assets.member_runs import train_member_fold
    from ens_assets.training.run import checkpoint_is_fresh

    plan = tiny_data["plan"]
    member = plan.members[0].key
    train_member_fold(plan, member, "smoke", log=lambda *_: None)
    assert checkpoint_is_fresh(plan, member, "smoke")

    copy = tmp_path / "src"
    shutil.copytree(PACKAGE_DIR, copy / "ens_assets", ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "PYTHONPATH": str(copy)}

    def fresh() -> bool:
        out = subprocess.run(
            [sys.executable, "-c", _FRESH, str(tiny_data["params"]), str(copy / "ens_assets"), member],
            capture_output=True, text=True, env=env, cwd=copy, timeout=300,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        return out.stdout.strip().splitlines()[-1] == "True"

    loop = copy / "ens_assets" / "training" / "loop.py"
    combiners = copy / "ens_assets" / "ensemble" / "combiners.py"
    assert fresh(), "the untouched copy must agree with the original"
    loop.write_text(loop.read_text().replace('"""', '"""Reworded. ', 1) + "\n# a comment\n")
    combiners.write_text(combiners.read_text() + "\nUNRELATED = 1\n")
    assert fresh(), "a docstring, a comment or an ensemble edit must not retrain checkpoints"
    loop.write_text(loop.read_text() + "\nTRAINING_TWEAK = 2\n")
    assert not fresh(), "an edit to training/loop.py left the checkpoint fresh"
