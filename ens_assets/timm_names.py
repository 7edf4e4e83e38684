"""What timm knows about a backbone name (is it a model, its pretrained input size), without importing timm.

Importing timm imports torch and torchvision (about 7 s here), and the plan is validated by every process that
loads it: the Dagster daemon, webserver and code server, each run worker, each dvc stage, the CLI. Most of them
never build a model. timm's answers are fixed for one installed version, so the first process that imports timm
to answer writes them to a small JSON file in the user's cache folder ($XDG_CACHE_HOME, else ~/.cache), named by
timm's version; later processes read the file. A name the file does not hold is asked of timm itself, so a
model timm registers by other means is still accepted, and an unknown name is always judged by timm.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

from ens_assets import atomic


def cache_file() -> Path | None:
    """The answers file for the installed timm, or None when timm's version cannot be read."""
    version = _timm_version()
    if version is None:
        return None
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "ens-assets" / f"timm-{version}-names.json"


@lru_cache(maxsize=1)
def _timm_version() -> str | None:
    """Read once per process: the lookup scans the installed distributions (about 1 ms), and the plan asks for
    every member's backbone and input size, some of them many times."""
    try:
        return metadata.version("timm")
    except metadata.PackageNotFoundError:
        return None


def is_model(name: str) -> bool:
    """timm.is_model(name): the architecture (a pretrained tag such as '.a1_in1k' ignored) is registered."""
    if name.split(".", 1)[0] in _known_models():
        return True
    import timm  # deferred: only a name the cache does not know pays for importing timm (and torch)

    _remember(models=timm.list_models())
    return timm.is_model(name)


def pretrained_input_size(backbone: str) -> int | None:
    """The input size timm's pretrained_cfg gives the backbone (resolve_data_config), e.g. 224; None when timm
    has no pretrained config for it."""
    known = _read(str(cache_file())).get("input_sizes", {})
    if backbone in known:
        return int(known[backbone])
    import timm  # deferred, as in is_model
    from timm.data import resolve_data_config

    cfg = timm.models.get_pretrained_cfg(backbone)
    if cfg is None:
        return None
    size = int(resolve_data_config(pretrained_cfg=cfg.to_dict())["input_size"][-1])
    _remember(models=timm.list_models(), input_sizes={backbone: size})
    return size


def _known_models() -> frozenset[str]:
    return frozenset(_read(str(cache_file())).get("models", ()))


@lru_cache(maxsize=4)
def _read(file: str) -> dict[str, Any]:
    try:
        known = json.loads(Path(file).read_text())
    except (OSError, ValueError):
        return {}
    return known if isinstance(known, dict) else {}


def _remember(models: list[str], input_sizes: dict[str, int] | None = None) -> None:
    """Write what timm answered; a cache folder that cannot be written only means timm is imported next time."""
    file = cache_file()
    if file is None:
        return
    known = _read(str(file))
    merged = {"models": sorted(models), "input_sizes": {**known.get("input_sizes", {}), **(input_sizes or {})}}
    if merged == known:
        return
    try:
        atomic.write_json(file, merged)
    except OSError:
        return
    _read.cache_clear()
