"""Processes that only orchestrate (Dagster's daemon, webserver and code server, sensors, the run coordinator,
CLI commands that do not train) load the code location without importing torch, timm or mlflow: timm alone cost
about 7 s of a 9-10 s `import ens_assets.definitions` here. The plan still rejects an unknown backbone at load:
timm_names answers from a cache of timm's names, and a name the cache lacks is judged by timm itself."""

import json
import os
import subprocess
import sys

import pytest
import yaml

from ens_assets import timm_names
from ens_assets.code_version import PACKAGE_DIR
from ens_assets.plan import PlanError, load_plan

REPO = PACKAGE_DIR.parent
HEAVY = ("torch", "timm", "torchvision", "mlflow", "sklearn")

_LOAD = f"""
import json, sys
import ens_assets.definitions as d
from ens_assets.plan import load_plan
plan = load_plan(sys.argv[1])
print(json.dumps({{"heavy": [m for m in {HEAVY!r} if m in sys.modules], "assets": len(list(d.defs.assets)),
                  "sizes": [plan.image_size(m) for m in plan.members]}}))
"""


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    """An empty cache folder for timm's answers (this process forgets what it read from the real one)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    timm_names._read.cache_clear()
    yield tmp_path / "cache"
    timm_names._read.cache_clear()


def _params(tmp_path, **member) -> str:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["members"][0].update(member)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_loading_the_definitions_imports_no_torch_timm_or_mlflow(tmp_path):
    params = _params(tmp_path, backbone="efficientnet_b0", image_size="pretrained")
    # What a fresh machine's first plan load does (imports timm once, in this process) before the fresh ones.
    assert timm_names.is_model("lcnet_050") and timm_names.pretrained_input_size("efficientnet_b0") == 224
    env = {k: v for k, v in os.environ.items() if k != "ENS_ASSETS_PARAMS"}
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", _LOAD, params], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert loaded["assets"] > 5 and loaded["sizes"][0] == 224
    assert loaded["heavy"] == [], f"importing ens_assets.definitions imported {loaded['heavy']}"


def test_a_cold_cache_is_filled_by_asking_timm_and_unknown_names_still_fail(own_cache, tmp_path):
    plan = load_plan(_params(tmp_path))
    assert plan.members[0].backbone == "test_resnet"
    assert timm_names.cache_file().parent == own_cache / "ens-assets"
    assert {"test_resnet", "lcnet_050"} <= set(json.loads(timm_names.cache_file().read_text())["models"])
    with pytest.raises(PlanError, match=r"members\[0\].backbone 'lcnet_0x' is not a timm model.*similar: \['lcnet_"):
        load_plan(_params(tmp_path, backbone="lcnet_0x"))


def test_a_cache_missing_a_name_asks_timm_and_is_rewritten(own_cache):
    file = timm_names.cache_file()
    file.parent.mkdir(parents=True)
    file.write_text(json.dumps({"models": ["resnet18"], "input_sizes": {}}))
    assert timm_names.is_model("lcnet_050.ra2_in1k")  # a pretrained tag is not part of the architecture
    assert "lcnet_050" in json.loads(file.read_text())["models"]
    assert timm_names.pretrained_input_size("no_such_net") is None


def test_an_unwritable_cache_folder_only_costs_the_timm_import(own_cache):
    own_cache.parent.mkdir(parents=True, exist_ok=True)
    own_cache.write_text("a file where the cache folder would go")
    assert timm_names.is_model("lcnet_050") and not timm_names.is_model("lcnet_0x")
