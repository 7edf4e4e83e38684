"""Imports run one way: the import-linter layers contract in pyproject.toml holds, with nothing ignored, and
every module of the package sits in one of its layers (a new module cannot slip past the contract)."""

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import ens_assets

REPO = Path(ens_assets.__file__).resolve().parent.parent


def _contract() -> dict:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = config["contracts"]
    return contract


def test_the_layers_contract_holds_lazy_imports_included():
    out = subprocess.run(
        [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())",
         "--no-cache"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "1 kept, 0 broken" in out.stdout


def test_the_contract_ignores_nothing_and_places_every_module():
    contract = _contract()
    assert contract["type"] == "layers" and "ignore_imports" not in contract
    placed = {name.strip() for layer in contract["layers"] for name in layer.replace(":", "|").split("|")}
    package = REPO / "ens_assets"
    modules = {f"ens_assets.{p.stem}" for p in package.glob("*.py") if p.stem != "__init__"}
    modules |= {f"ens_assets.{p.parent.name}" for p in package.glob("*/__init__.py")}
    assert modules <= placed, f"modules in no layer of pyproject's import contract: {sorted(modules - placed)}"
