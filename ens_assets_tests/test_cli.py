"""The commands the Makefile and dvc.yaml run are commands the CLI accepts, and a bad plan is a clear error."""

import re
import subprocess
import sys
from pathlib import Path

import yaml

from ens_assets.cli import STAGES, main

REPO = Path(__file__).resolve().parent.parent
STAGE_WORDS = (*STAGES, "all")


def _cli_invocations() -> list[list[str]]:
    """Every `-m ens_assets.cli ...` argument list in the Makefile and in dvc.yaml's stage commands."""
    texts = [(REPO / "Makefile").read_text()]
    texts += [stage["cmd"] for stage in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"].values()]
    found = []
    for text in texts:
        for match in re.finditer(r"-m ens_assets\.cli([^\n]*)", text):
            found.append(match.group(1).split())
    return found


def test_makefile_and_dvc_commands_parse(monkeypatch, capsys):
    invocations = _cli_invocations()
    assert any("demo" in args for args in invocations) and any("materialize" in args for args in invocations)
    for args in invocations:
        # Swap the command for `check` (same parser, nothing run), keeping every option where it was written.
        checked = ["check" if a in ("demo", "instance", "materialize") else a for a in args if a not in STAGE_WORDS]
        monkeypatch.chdir(REPO)
        assert main(checked) == 0, f"{args} -> {capsys.readouterr()}"


def test_bad_plan_is_a_clear_error_not_a_traceback(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text((REPO / "params.yaml").read_text().replace("backbone: lcnet_050", "backbone: no_such_net"))
    result = subprocess.run([sys.executable, "-m", "ens_assets.cli", "--params", str(params), "check"],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 2
    assert "no_such_net" in result.stderr and "is not a timm model" in result.stderr
    assert "Traceback" not in result.stderr


def test_final_summary_names_the_grouping_and_its_fallback_warning(tmp_path):
    """The demo's closing summary repeats how the folds were grouped (folds.json), warning included."""
    import json
    from types import SimpleNamespace

    from ens_assets.cli import _print_where_to_look

    work = tmp_path / "work"
    work.mkdir()
    (work / "folds.json").write_text(json.dumps(
        {"group_by": "image", "n_groups": 21, "reason": "no site, sequence or EXIF time", "warning": "OOF scores may be optimistic"}))
    plan = SimpleNamespace(folds_summary_path=work / "folds.json", ensemble_dir=work / "ensemble",
                           diagnostics_dir=work / "diagnostics")
    lines: list[str] = []
    _print_where_to_look(plan, out=lines.append)
    assert "folds grouped by image: 21 groups (no site, sequence or EXIF time)" in lines
    assert "warning: OOF scores may be optimistic" in lines
