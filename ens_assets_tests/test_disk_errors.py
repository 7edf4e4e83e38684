"""A full or read-only disk during a checkpoint save or a crop build is an error naming the path, the space it
needed and the fix, not "[Errno 28]" or torch's "unexpected pos"; the previous files stay intact."""

import errno
import shutil
from collections import namedtuple

import pytest
import safetensors.torch
import torch

import ens_assets.data.crops as crops_module
from ens_assets.atomic import DiskWriteError
from ens_assets.data.crops import build_crop_cache, open_crop_cache
from ens_assets.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, save_recovery


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_checkpoint_save_on_a_full_disk_names_the_file_and_the_space(tmp_path, monkeypatch):
    state = {"w": torch.zeros(256, 256)}  # 256 KB of float32
    save_checkpoint(tmp_path, state, {"fingerprint": "old"})
    monkeypatch.setattr(safetensors.torch, "save_file", _enospc)  # checkpoint imports it when saving
    with pytest.raises(DiskWriteError) as caught:
        save_checkpoint(tmp_path, {"w": torch.ones(256, 256)}, {"fingerprint": "new"})
    message = str(caught.value)
    assert str(tmp_path / "model.safetensors") in message
    assert "no space left" in message and "needs about 256.0 KB" in message and "free space there" in message
    assert list(tmp_path.glob(".model.safetensors.*")) == [], "a temp file was left behind"
    # The old sidecar is gone (it must never vouch for other weights), so the folder reads as "no checkpoint".
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path)


def test_torch_full_disk_error_without_errno_is_recognised(tmp_path, monkeypatch):
    def unexpected_pos(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(torch, "save", unexpected_pos)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9, 0))
    with pytest.raises(DiskWriteError, match=r"recovery\.pt: cannot write it: no space left on the device \(0 B free"):
        save_recovery(tmp_path, {"model": {"w": torch.zeros(10)}, "epoch": 1})


def test_other_write_errors_are_not_mistaken_for_a_full_disk(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "save", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug") as caught:
        save_recovery(tmp_path, {"epoch": 1})
    assert not isinstance(caught.value, DiskWriteError)


def test_crop_build_on_a_full_disk_names_the_cache_and_keeps_the_old_one(tiny_data, tmp_path, monkeypatch):
    plan = tiny_data["plan"]
    out_dir = tmp_path / "crops" / "0.05"
    build_crop_cache(tiny_data["manifest"], tiny_data["detections"], 0.05, plan.crops, out_dir, workers=1)
    before = open_crop_cache(out_dir).index.height
    monkeypatch.setattr(crops_module, "_raw_to_npy", _enospc)
    with pytest.raises(DiskWriteError) as caught:
        build_crop_cache(tiny_data["manifest"], tiny_data["detections"], 0.05, plan.crops, out_dir, workers=1)
    message = str(caught.value)
    assert str(out_dir) in message and "no space left" in message and "needs about" in message
    assert open_crop_cache(out_dir).index.height == before
    assert [p.name for p in out_dir.parent.iterdir()] == ["0.05"], "the half-built folder was left behind"
