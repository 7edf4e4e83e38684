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
from ens_assets_tests.tracking_store import new_tracking_store

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


def test_an_edit_changes_the_version_in_the_same_process(tmp_path, monkeypatch):
    """The parsed sources are cached per process, keyed by each file's mtime and size: an edit to a file already
    hashed is seen by the next call, and so is an import added to one (its target joins the closure)."""
    import ens_assets.code_version as cv

    package = tmp_path / "ens_assets"
    shutil.copytree(PACKAGE_DIR, package, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(cv, "PACKAGE_DIR", package)
    before = cv.code_version(["ens_assets.member_runs"])
    assert cv.code_version(["ens_assets.member_runs"]) == before
    loop = package / "training" / "loop.py"
    loop.write_text(loop.read_text() + "\nTRAINING_TWEAK = 2\n")
    edited = cv.code_version(["ens_assets.member_runs"])
    assert edited != before, "an edit to training/loop.py went unseen by a process that had hashed it"
    assert "ens_assets.ensemble.combiners" not in cv.module_closure(["ens_assets.member_runs"])
    runs = package / "member_runs.py"
    runs.write_text(runs.read_text() + "\nfrom ens_assets.ensemble import combiners  # noqa\n")
    assert "ens_assets.ensemble.combiners" in cv.module_closure(["ens_assets.member_runs"])
    assert cv.code_version(["ens_assets.member_runs"]) != edited


# One process checks each copy in turn: it forgets every ens_assets module and imports the next copy's (the
# third-party libraries stay imported, so a copy costs its own modules, not another torch import).
_FRESH = """
import importlib, sys
from pathlib import Path
params, member, packages = sys.argv[1], sys.argv[2], sys.argv[3:]
for package in packages:
    for name in [m for m in sys.modules if m == "ens_assets" or m.startswith("ens_assets.")]:
        del sys.modules[name]
    sys.path.insert(0, str(Path(package).parent))
    importlib.invalidate_caches()
    import ens_assets
    assert Path(ens_assets.__file__).resolve().parent == Path(package).resolve(), ens_assets.__file__
    from ens_assets.plan import load_plan
    from ens_assets.training.run import checkpoint_is_fresh
    print(package, checkpoint_is_fresh(load_plan(params), member, "smoke"))
    sys.path.remove(str(Path(package).parent))
"""


@pytest.mark.slow
def test_editing_training_code_makes_checkpoints_stale(tiny_data, tmp_path, monkeypatch):
    """A copy of the package: a docstring edit or an ensemble edit keeps the checkpoint fresh; one changed
    line in training/loop.py makes it stale."""
    from ens_assets.member_runs import train_member_fold
    from ens_assets.training.run import checkpoint_is_fresh

    monkeypatch.setenv("MLFLOW_TRACKING_URI", new_tracking_store(tmp_path / "mlflow.db"))
    plan = tiny_data["plan"]
    member = plan.members[0].key
    train_member_fold(plan, member, "smoke", log=lambda *_: None)
    assert checkpoint_is_fresh(plan, member, "smoke")

    # Three copies of the package, each checked by its own code: untouched, reworded, and changed.
    def package_copy(name: str) -> Path:
        shutil.copytree(PACKAGE_DIR, tmp_path / name / "ens_assets", ignore=shutil.ignore_patterns("__pycache__"))
        return tmp_path / name / "ens_assets"

    def reword(package: Path) -> None:
        loop, combiners = package / "training" / "loop.py", package / "ensemble" / "combiners.py"
        loop.write_text(loop.read_text().replace('"""', '"""Reworded. ', 1) + "\n# a comment\n")
        combiners.write_text(combiners.read_text() + "\nUNRELATED = 1\n")

    untouched, reworded, changed = package_copy("untouched"), package_copy("reworded"), package_copy("changed")
    reword(reworded)
    reword(changed)
    (changed / "training" / "loop.py").write_text((changed / "training" / "loop.py").read_text() + "\nTRAINING_TWEAK = 2\n")

    packages = (untouched, reworded, changed)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # only each copy's folder, in turn
    done = subprocess.run([sys.executable, "-c", _FRESH, str(tiny_data["params"]), member, *map(str, packages)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    fresh = dict(line.rsplit(" ", 1) for line in done.stdout.strip().splitlines()[-3:])
    assert list(fresh) == [str(p) for p in packages], done.stdout
    untouched_fresh, reworded_fresh, changed_fresh = (fresh[str(p)] == "True" for p in packages)
    assert untouched_fresh, "the untouched copy must agree with the original"
    assert reworded_fresh, "a docstring, a comment or an ensemble edit must not retrain checkpoints"
    assert not changed_fresh, "an edit to training/loop.py left the checkpoint fresh"
