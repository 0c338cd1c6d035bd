"""Writing files so that a crash never leaves a torn one: a temporary file beside the target,
flushed to disk, then renamed over it. A kill at any moment leaves the old file or the new."""

from __future__ import annotations

import errno
import io
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

__all__ = ["atomic_write", "atomic_write_bytes", "finite_json", "write_json", "check_writable", "atomic_update"]

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: Path, write: Callable[[io.BufferedWriter], None]) -> None:
    """Call ``write`` on a temporary file beside ``path``, flush it to disk, rename it over
    ``path``: a crash leaves the old file or the new one, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_UMASK)
    try:
        os.close(fd)
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:  # a full disk: torch.save reports it as a RuntimeError
        error = _write_error(path, exc)
        if os.path.exists(tmp):
            os.unlink(tmp)
        if error is None:
            raise
        raise error from None
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def _write_error(path: Path, exc: BaseException) -> OSError | None:
    """The failed write as an OSError naming ``path`` (the old file is kept); None for an error
    that is not about the disk (a RuntimeError of another kind: raised as it is)."""
    free = shutil.disk_usage(path.parent).free
    if isinstance(exc, OSError):
        reason = exc.strerror or str(exc)
    elif free < 1 << 20:
        reason = os.strerror(errno.ENOSPC)
        exc = OSError(errno.ENOSPC, reason)
    elif "unexpected pos" in str(exc) or "write" in str(exc).lower():
        reason = f"the write failed ({exc})"
    else:
        return None
    where = f"; {free / 2**20:.1f} MiB free there" if free < 1 << 30 else ""
    error = OSError(getattr(exc, "errno", None) or errno.EIO, f"{reason}{where}; the file before this write is kept")
    error.filename = str(path)
    return error


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def finite_json(value: Any) -> Any:
    """``value`` with every NaN or infinite float as None: standard JSON (``null``), which
    JavaScript's ``JSON.parse`` and strict readers accept; Python's bare ``NaN`` is not JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Indented standard JSON (non-finite floats as ``null``), written atomically."""
    text = json.dumps(finite_json(payload), indent=2, allow_nan=False)
    atomic_write_bytes(Path(path), (text + "\n").encode())


def atomic_update(path: Path, update: Callable[[Path], None]) -> None:
    """Change a file that may exist (an HDF5 file gaining a dataset) on a copy beside it, flushed
    to disk and renamed over it: a crash or an error in ``update`` leaves the old file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        if path.exists():
            shutil.copyfile(path, tmp)
        else:
            os.unlink(tmp)
        update(Path(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def check_writable(folder: Path) -> None:
    """Prove a file can be written in ``folder``, or where it would be created (its nearest
    existing parent), without creating it (OSError if not): run before hours of work, not after,
    and leave no empty folder behind when the work then fails to start."""
    folder = Path(folder).absolute()
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    if not folder.is_dir():
        raise NotADirectoryError(20, "not a folder", str(folder))
    fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=folder)
    os.close(fd)
    os.unlink(probe)
