"""What made an output: the checkpoints (by content), the input (where, its shape, and a
fingerprint of its pixels) and the settings, recorded with a restartable output so that a rerun
continues it only when the same things would make the rest."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from .places import Place

__all__ = ["file_sha256", "made_by_record", "recorded_made_by", "differences", "volume_fingerprint"]

_FINGERPRINT_SIDE = 256  # pixels per side of the window hashed in each fingerprinted section


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes (a URL: of its local cached copy)."""
    from .storage import local_copy

    digest = hashlib.sha256()
    with open(local_copy(path), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def volume_fingerprint(volume: Any) -> str:
    """A hash of the stored pixels of the first, middle and last sections (a centred window of
    each) and of the shape: two volumes of one shape but other contents differ here."""
    n, h, w = volume.shape
    y0, x0 = max(0, h // 2 - _FINGERPRINT_SIDE // 2), max(0, w // 2 - _FINGERPRINT_SIDE // 2)
    rows, cols = slice(y0, min(h, y0 + _FINGERPRINT_SIDE)), slice(x0, min(w, x0 + _FINGERPRINT_SIDE))
    digest = hashlib.sha256(repr(tuple(volume.shape)).encode())
    for z in sorted({0, n // 2, n - 1}):
        digest.update(np.ascontiguousarray(volume.raw(z, rows, cols)).tobytes())
    return digest.hexdigest()


def made_by_record(checkpoint_hashes: tuple[str, ...], source: str, volume: Any, settings: dict) -> dict:
    """The record of what makes an output, in JSON's own types (compared after a round trip)."""
    record = {"checkpoints": list(checkpoint_hashes),
              "input": {"path": str(Path(str(source)).resolve()) if "://" not in str(source) else str(source),
                        "shape": list(volume.shape), "fingerprint": volume_fingerprint(volume)},
              "settings": settings}
    return json.loads(json.dumps(record))


def recorded_made_by(output: Place) -> dict | None:
    """The record stored in an OME-Zarr's attributes (None for an output that has none)."""
    try:
        attrs = json.loads((output / ".zattrs").read_text())
    except (OSError, ValueError):
        return None
    return (attrs.get("emunet") or {}).get("made_by")


def differences(recorded: dict | None, wanted: dict) -> str:
    """'' when ``recorded`` equals ``wanted``; otherwise what differs, in words."""
    if recorded == wanted:
        return ""
    if recorded is None:
        return "something else (it has no record of its checkpoints, input and settings)"
    parts = []
    if recorded.get("checkpoints") != wanted["checkpoints"]:
        parts.append("other checkpoints")
    if (recorded.get("input") or {}).get("path") != wanted["input"]["path"]:
        parts.append(f"another input ({(recorded.get('input') or {}).get('path')})")
    elif recorded.get("input") != wanted["input"]:
        parts.append("another input at the same path (its shape or pixels differ)")
    old = recorded.get("settings") or {}
    changed = sorted(k for k in set(old) | set(wanted["settings"]) if old.get(k) != wanted["settings"].get(k))
    if changed:
        parts.append("other settings (" + ", ".join(changed) + ")")
    return ", ".join(parts) or "other settings"
