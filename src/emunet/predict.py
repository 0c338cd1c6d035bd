"""Segment images of any size and write the results atomically.

The probability stack is float32 with 1 = foreground (cell interior) and 0 = membrane, the
ISBI 2012 submission convention. Binary masks (0/255 PNG) and overlays (membrane in red over
the image) are optional, for people who would rather look than read.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from .checkpoint import atomic_write, atomic_write_bytes
from .data import Volume

__all__ = ["write_probabilities", "write_masks", "write_overlays"]


def write_probabilities(path: Path, probs: np.ndarray) -> None:
    """A float32 (multi-page) TIFF, one page per slice."""
    import tifffile

    atomic_write(Path(path), lambda f: tifffile.imwrite(f, probs.astype(np.float32, copy=False), photometric="minisblack"))


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def write_masks(folder: Path, volume: Volume, probs: np.ndarray, threshold: float = 0.5) -> list[Path]:
    """One 8-bit PNG per slice: 255 where the foreground probability exceeds ``threshold``."""
    paths = []
    for name, p in zip(volume.names, probs):
        path = Path(folder) / f"{name}_mask.png"
        atomic_write_bytes(path, _png(np.where(p > threshold, 255, 0).astype(np.uint8)))
        paths.append(path)
    return paths


def write_overlays(folder: Path, volume: Volume, probs: np.ndarray, alpha: float = 0.5) -> list[Path]:
    """One RGB PNG per slice: the image with the membrane probability blended in red."""
    paths = []
    for name, img, p in zip(volume.names, volume.images, probs):
        grey = np.repeat(img[..., None], 3, axis=-1)
        red = np.zeros_like(grey)
        red[..., 0] = 1.0
        weight = (alpha * (1.0 - p))[..., None]
        rgb = np.clip((1 - weight) * grey + weight * red, 0, 1)
        path = Path(folder) / f"{name}_overlay.png"
        atomic_write_bytes(path, _png((rgb * 255).round().astype(np.uint8)))
        paths.append(path)
    return paths
