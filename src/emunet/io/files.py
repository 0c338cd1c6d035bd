"""Writing files so that a crash never leaves a torn one: a temporary file beside the target,
flushed to disk, then renamed over it. A kill at any moment leaves the old file or the new."""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

__all__ = ["atomic_write", "atomic_write_bytes", "write_json", "check_writable"]

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


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Indented JSON, written atomically."""
    atomic_write_bytes(Path(path), (json.dumps(payload, indent=2) + "\n").encode())


def check_writable(folder: Path) -> None:
    """Create ``folder`` if needed and prove a file can be written in it (OSError if not): run
    before hours of work, not after."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=folder)
    os.close(fd)
    os.unlink(probe)
