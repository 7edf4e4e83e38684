"""Atomic file writes: write to a temporary file beside the target, fsync, then rename.

A run killed mid-write leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import glob
import hashlib
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


@contextmanager
def atomic_path(target: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temp path in the target's folder; on success it is renamed onto the target."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix or ".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_bytes(target: str | Path, data: bytes) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def write_text(target: str | Path, text: str) -> Path:
    return write_bytes(target, text.encode())


def write_json(target: str | Path, obj: Any) -> Path:
    return write_text(target, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_parquet(target: str | Path, frame: Any) -> Path:
    """Write a polars DataFrame atomically."""
    with atomic_path(target, suffix=".parquet") as tmp:
        frame.write_parquet(tmp)
    return Path(target)


# --- folders ---------------------------------------------------------------------------------------
_RENAME_EXCHANGE = 2  # linux/fs.h: swap two paths in one step


def _libc_renameat2():
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.renameat2
    except (OSError, AttributeError):  # not glibc >= 2.28 (macOS, musl, old Linux)
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return function


_renameat2 = _libc_renameat2() if sys.platform.startswith("linux") else None
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths atomically (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # this filesystem cannot exchange
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


@contextmanager
def _folder_lock(target: Path) -> Iterator[None]:
    """An exclusive lock on the folder's parent directory, held only for the swap (no lock file is left behind);
    the kernel drops it if its holder dies."""
    fd = os.open(target.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def replace_dir(new: str | Path, target: str | Path) -> Path:
    """Swap a fully built folder into place; the old one is removed after the swap.

    Readers see the old folder or the new one, never neither: on Linux the two are exchanged in one rename
    (renameat2 RENAME_EXCHANGE). Concurrent callers take turns on a lock of the target's parent directory, so no swap
    can fail half way (the last one to swap wins, whole). Where exchange is unsupported, a kill between the
    two renames leaves the old folder as .<target>.old-<pid>, which the next swap removes.
    """
    new, target = Path(new), Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _folder_lock(target):
        _remove_dead_leftovers(target, ".old-")
        if target.exists() and _exchange(new, target):
            shutil.rmtree(new, ignore_errors=True)  # `new` now holds the previous folder
            return target
        if target.exists():
            old = target.parent / f".{target.name}.old-{_owner()}"
            shutil.rmtree(old, ignore_errors=True)
            os.rename(target, old)
            os.rename(new, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(new, target)
    return target


@contextmanager
def building_dir(target: str | Path) -> Iterator[Path]:
    """A fresh folder beside `target` to build into (then replace_dir it onto target); removed afterwards.

    Named .<target>.building-<pid>-<random>: leftovers of builds whose process is gone (killed) are removed
    first, while the folders of builds still running elsewhere are left alone.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_leftovers(target, ".building-")
    building = Path(tempfile.mkdtemp(prefix=f".{target.name}.building-{_owner()}-", dir=target.parent))
    try:
        yield building
    finally:
        shutil.rmtree(building, ignore_errors=True)


def _owner() -> str:
    """<pid>_<host hash>: a folder on storage shared by several machines is judged only by its own host."""
    return f"{os.getpid()}_{_HOST}"


def _remove_dead_leftovers(target: Path, marker: str) -> None:
    started = time.time()
    prefix = f".{target.name}{marker}"
    for leftover in target.parent.glob(f"{glob.escape(prefix)}*"):
        pid, _, host = leftover.name[len(prefix) :].split("-", 1)[0].partition("_")
        if pid.isdigit() and host == _HOST:
            dead = int(pid) != os.getpid() and not process_alive(int(pid))
        else:  # another machine's, or from before folders named their builder: judged by age alone
            dead = _mtime(leftover) < started - _UNOWNED_GRACE_S
        if dead:
            shutil.rmtree(leftover, ignore_errors=True)


_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
_UNOWNED_GRACE_S = 6 * 3600.0  # an unowned build folder this old cannot belong to a build still running


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return float("inf")


def process_alive(pid: int) -> bool:
    """Whether a process of this host runs (a zombie, killed and not yet reaped by its parent, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


# --- disk full / read-only ------------------------------------------------------------------------
_DISK_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
                errno.EROFS: "the file system is read-only"}  # fmt: skip


class DiskWriteError(OSError):
    """A write that failed because its disk is full or read-only; the message names the path, the space it
    needed and the fix (libraries report these as "[Errno 28]" or "unexpected pos" with no path)."""


@contextmanager
def disk_errors_named(path: str | Path, needed_bytes: int | None = None) -> Iterator[None]:
    """Turn a disk-full or read-only failure of the writes inside into a DiskWriteError about `path`."""
    try:
        yield
    except DiskWriteError:
        raise
    except Exception as exc:
        message = _disk_problem(Path(path), exc, needed_bytes)
        if message is None:
            raise
        raise DiskWriteError(getattr(exc, "errno", None) or errno.ENOSPC, message) from exc


def _disk_problem(path: Path, exc: BaseException, needed_bytes: int | None) -> str | None:
    folder = next((p for p in (path, *path.parents) if p.exists()), Path("/"))
    usage = shutil.disk_usage(folder)
    need = f"; this write needs about {_size(needed_bytes)}" if needed_bytes else ""
    where = f"{_size(usage.free)} free on the disk holding {folder}{need}"
    cause = _DISK_ERRNOS.get(getattr(exc, "errno", None))
    if cause is None:
        # torch/safetensors report a full disk in their own words ("unexpected pos"): judge by the disk itself.
        if usage.free < max(needed_bytes or 0, 1 << 20):
            cause = _DISK_ERRNOS[errno.ENOSPC]
        elif not os.access(folder, os.W_OK):
            cause = "the folder is not writable"
        else:
            return None
    fix = "make it writable" if "read-only" in cause or "writable" in cause else "free space there"
    fix += " or point workdir in params.yaml at a larger, writable disk"
    return f"{path}: cannot write it: {cause} ({where}). Fix: {fix}"


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"
