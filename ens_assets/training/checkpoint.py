"""Checkpoints on disk: the final one (safetensors + JSON sidecar) and the per-epoch recovery state.

Every file is written atomically, so a run killed at any instant leaves either the previous file or
the new one. Torch pickles are only ever read with `weights_only=True` (no arbitrary code on load).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ens_assets.atomic import atomic_path, disk_errors_named, write_json

WEIGHTS_FILE = "model.safetensors"
SIDECAR_FILE = "checkpoint.json"
RECOVERY_FILE = "recovery.pt"

# torch and safetensors are imported where tensors are read or written: reading a sidecar (the smoke verdicts the
# CLI, the sensors and the schedule read) must not cost a torch import.
if TYPE_CHECKING:
    import torch


class CheckpointError(RuntimeError):
    """A checkpoint folder that is missing or unreadable; the message names it and the fix."""


def save_checkpoint(directory: str | Path, state_dict: dict[str, torch.Tensor], sidecar: dict[str, Any]) -> Path:
    """Write model.safetensors then checkpoint.json; the sidecar last, so its presence marks a whole checkpoint."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # Drop the old sidecar first: new weights must never sit beside an old sidecar that vouches for them.
    (directory / SIDECAR_FILE).unlink(missing_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    with disk_errors_named(directory / WEIGHTS_FILE, _nbytes(tensors)):
        with atomic_path(directory / WEIGHTS_FILE, suffix=".safetensors") as tmp:
            save_file(tensors, str(tmp))
    weights_sha = hashlib.sha256((directory / WEIGHTS_FILE).read_bytes()).hexdigest()
    write_json(directory / SIDECAR_FILE, {**sidecar, "weights_file": WEIGHTS_FILE, "weights_sha256": weights_sha})
    return directory


def read_sidecar(directory: str | Path) -> dict[str, Any] | None:
    """The checkpoint's sidecar, or None when there is no complete checkpoint in the folder."""
    directory = Path(directory)
    sidecar_path = directory / SIDECAR_FILE
    if not sidecar_path.is_file() or not (directory / WEIGHTS_FILE).is_file():
        return None
    try:
        return json.loads(sidecar_path.read_text())
    except json.JSONDecodeError:
        return None


def load_checkpoint(directory: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state_dict, sidecar) of a final checkpoint."""
    from safetensors.torch import load_file

    directory = Path(directory)
    sidecar = read_sidecar(directory)
    if sidecar is None:
        raise CheckpointError(
            f"{directory}: no complete checkpoint ({WEIGHTS_FILE} + {SIDECAR_FILE}); "
            "materialize (train) this member's fold partition first"
        )
    try:
        state_dict = load_file(str(directory / WEIGHTS_FILE))
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise CheckpointError(f"{directory / WEIGHTS_FILE}: unreadable ({exc}); delete the folder and retrain") from None
    return state_dict, sidecar


# --- per-epoch recovery state ---------------------------------------------------------------------
def save_recovery(directory: str | Path, state: dict[str, Any]) -> Path:
    """Everything needed to continue after the epoch just finished (tensors, numbers, strings only)."""
    import torch

    target = Path(directory) / RECOVERY_FILE
    with disk_errors_named(target, _nbytes(state)):
        with atomic_path(target, suffix=".pt") as tmp:
            torch.save(state, tmp)
    return target


def _nbytes(obj: Any) -> int:
    """Bytes of the tensors in a (nested) state: what writing it needs on disk, about."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_nbytes(v) for v in obj)
    return 0


def load_recovery(directory: str | Path) -> dict[str, Any] | None:
    """The saved recovery state, or None when there is none (or it is unreadable, e.g. an older format)."""
    import torch

    path = Path(directory) / RECOVERY_FILE
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # an unreadable recovery file only costs a restart from epoch 0
        return None


def discard_recovery(directory: str | Path) -> None:
    shutil.rmtree(Path(directory), ignore_errors=True)
