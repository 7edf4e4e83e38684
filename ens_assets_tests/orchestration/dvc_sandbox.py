"""A throwaway git + DVC repository holding this repo's pipeline (dvc.yaml, code) and a tiny plan.

Used by test_dvc.py and bench/bench_dvc.py. The real `dvc` binary lives in its own virtualenv
(.venv-dvc, see the Makefile); the sandbox links the project's .venv so the stages' commands run as
they do in the repo, and copies ens_assets/ so the code deps of dvc.yaml hash as real files.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from ens_assets_tests.instance_home import make_dagster_home
from ens_assets_tests.tiny_plan import FINITE_LOSS_GATE, tiny_plan
from ens_assets_tests.tracking_store import new_tracking_store

REPO = Path(__file__).resolve().parents[2]
DVC_ENV = "ENS_ASSETS_DVC"

MEMBER_A = "test_resnet.t005.geo"
MEMBER_B = "test_resnet.t020.geo"

# Small enough that the whole pipeline (6 checkpoints of 1 epoch) runs in well under a minute on 2 cores.
TINY_PARAMS: dict[str, Any] = tiny_plan(
    data={"root": "data/demo", "detections": "data/demo/megadetector.json"},
    crops={"workers": 1},
    recipes={"geo": {"hflip": 0.5, "scale": [0.6, 1.0]}, "mixup": None},
    training={"warmup_epochs": None},
    # One epoch on 64 images proves nothing about learning; let the smoke gate pass so cv folds train.
    promotion=FINITE_LOSS_GATE,
    # 20 bootstrap replicates (the fewest the plan allows): no test reads an interval.
    ensemble={"method": "mean", "bootstrap_replicates": 20},
    tracking={"experiment": "dvc-sandbox"},
    workdir="data/work",
)


def dvc_binary() -> Path | None:
    """The dvc executable: $ENS_ASSETS_DVC (exported by the Makefile), else <repo>/.venv-dvc/bin/dvc."""
    candidate = Path(os.environ.get(DVC_ENV) or REPO / ".venv-dvc" / "bin" / "dvc")
    return candidate if candidate.is_file() and os.access(candidate, os.X_OK) else None


def with_stage_sections(params: dict[str, Any]) -> dict[str, Any]:
    """params plus every section dvc.yaml's stages list as params that it lacks, as the repo's params.yaml has
    it: DVC refuses to run a stage whose params are missing."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    listed = {p.split(".")[0] for stage in stages.values() for p in stage.get("params", []) if isinstance(p, str)}
    default = yaml.safe_load((REPO / "params.yaml").read_text())
    return {**params, **{key: default[key] for key in sorted(listed - set(params)) if key in default}}


class DvcSandbox:
    """A git repository in `root` with dvc.yaml, .dvcignore, ens_assets/, a tiny params.yaml and DVC initialised."""

    def __init__(self, root: Path, dvc: Path, params: dict[str, Any] | None = None, *, build: bool = True):
        self.root = Path(root)
        self.dvc = Path(dvc)
        self.env = {
            **os.environ,
            "DAGSTER_HOME": str(self.root / "dagster_home"),
            "MLFLOW_TRACKING_URI": f"sqlite:///{self.root / 'mlruns.db'}",
            "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
            "GIT_AUTHOR_NAME": "sandbox", "GIT_AUTHOR_EMAIL": "sandbox@localhost",
            "GIT_COMMITTER_NAME": "sandbox", "GIT_COMMITTER_EMAIL": "sandbox@localhost",
        }  # fmt: skip
        self.env.pop("ENS_ASSETS_PARAMS", None)  # the stages must read the sandbox's params.yaml
        if build:
            self._build(params or TINY_PARAMS)

    @classmethod
    def reuse(cls, root: Path, dvc: Path) -> "DvcSandbox":
        """A sandbox built earlier (e.g. by the bench), used as it is."""
        if not (Path(root) / "dvc.yaml").is_file():
            raise FileNotFoundError(f"{root}: no sandbox here (no dvc.yaml); build one with DvcSandbox(root, dvc)")
        return cls(root, dvc, build=False)

    def _build(self, params: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / "dvc.yaml", self.root / "dvc.yaml")
        shutil.copy2(REPO / ".dvcignore", self.root / ".dvcignore")
        # The CLI runs each stage's job against the code location workspace.yaml names.
        shutil.copy2(REPO / "workspace.yaml", self.root / "workspace.yaml")
        # The repo's ignores, plus the .venv link (a link is not matched by `.venv/`) and DVC's site cache.
        gitignore = (REPO / ".gitignore").read_text() + "/.venv\n/.dvc-site-cache/\n"
        (self.root / ".gitignore").write_text(gitignore)
        shutil.copytree(REPO / "ens_assets", self.root / "ens_assets", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        make_dagster_home(self.root)
        (self.root / ".venv").symlink_to(REPO / ".venv", target_is_directory=True)
        self.write_params(with_stage_sections(params))
        self.git("init", "-q")
        self.run_dvc("init", "-q")
        self.run_dvc("config", "core.analytics", "false")
        # DVC's per-repo site cache (locks, index) defaults to /var/tmp/dvc; keep it inside the sandbox.
        self.run_dvc("config", "--local", "core.site_cache_dir", str(self.root / ".dvc-site-cache"))
        self.git("add", "-A")
        self.git("commit", "-q", "-m", "sandbox")
        new_tracking_store(self.root / "mlruns.db")  # the store MLFLOW_TRACKING_URI names, already migrated

    def write_params(self, params: dict[str, Any]) -> None:
        (self.root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    def read_params(self) -> dict[str, Any]:
        return yaml.safe_load((self.root / "params.yaml").read_text())

    def git(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=self.root, env=self.env, check=True, capture_output=True, text=True)

    def run_dvc(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        """Run dvc in the sandbox; on failure raise with its full output (the stage's own error is in it)."""
        done = subprocess.run(
            [str(self.dvc), *args], cwd=self.root, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"`dvc {' '.join(args)}` exited {done.returncode} in {self.root}\n"
                f"--- stdout ---\n{done.stdout[-6000:]}\n--- stderr ---\n{done.stderr[-6000:]}"
            )
        return done

    def checkpoint_files(self, member: str) -> dict[Path, int]:
        """mtime (ns) of every checkpoint.json and model.safetensors of one member, all partitions."""
        member_dir = self.root / "data" / "work" / "checkpoints" / member
        found = {p: p.stat().st_mtime_ns for p in sorted(member_dir.glob("*/checkpoint.json"))}
        found.update({p: p.stat().st_mtime_ns for p in sorted(member_dir.glob("*/model.safetensors"))})
        return found
