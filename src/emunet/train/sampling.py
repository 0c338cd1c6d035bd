"""What training draws from: the lab's cross-validation split, and random tiles cut from the
training sections, whether they are in memory (:class:`~emunet.io.data.Volume`) or left on disk
(:class:`LazyLabelled`, tiles read as they are drawn). One sampler serves both, so a run on a
volume trains the same as on the same sections in memory."""

from __future__ import annotations

import collections
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from ..io.data import Intensity, Volume, masks_to_labels, mirror_index
from ..io.volumes import LazyVolume, open_volume, volume_stem

__all__ = ["fold_split", "TileSampler", "LazyLabelled", "load_volume_split", "tile_centres"]


def fold_split(n: int, fold: int, ratio: float = 0.8) -> tuple[list[int], list[int]]:
    """The lab's split: shuffle 0..n-1 with NumPy seed 0, rotate right by fold*round((1-ratio)*n),
    the first round(ratio*n) train and the rest validate (for n=30: 24 / 6, fold 1 -> 4,6,7,9,18,19).

    A dedicated ``RandomState(0)`` draws the same permutation as ``np.random.seed(0)`` without
    touching NumPy's global generator.
    """
    if not 0.0 < ratio < 1.0:
        raise DataError(f"split ratio must be in (0, 1), got {ratio}")
    n_train = round(ratio * n)
    if n < 2 or n_train < 1 or n_train >= n:
        raise DataError(f"{n} labelled image(s) are too few for a train/validation split; need at least 2 (ISBI has 30)")
    indices = np.arange(n)
    np.random.RandomState(0).shuffle(indices)
    rotated = collections.deque(indices.tolist())
    rotated.rotate(fold * round((1.0 - ratio) * n))
    order = list(rotated)
    return order[:n_train], order[n_train:]


@dataclass
class LazyLabelled:
    """The training sections of a volume too large to read whole (Zarr, OME-Zarr, HDF5): images
    and masks opened lazily, and the sections that tiles are drawn from."""

    images: LazyVolume
    labels: LazyVolume
    sections: list[int]
    foreground: int = 255
    threshold: float | None = None

    @property
    def intensity(self) -> Intensity:
        return self.images.intensity

    def __len__(self) -> int:
        return len(self.sections)

    def tile(self, k: int, top: int, left: int, size: int, context: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Training section ``k``'s ``size`` x ``size`` window from (``top``, ``left``), mirrored
        at the borders: (C, size, size) scaled pixels of it and its ``context`` neighbours on
        each side, and its (size, size) labels."""
        z = self.sections[k]
        n, height, width = self.images.shape
        rows, cols = mirror_index(top, size, height), mirror_index(left, size, width)
        planes = [_window(self.images, j, rows, cols, scaled=True) for j in mirror_index(z - context, 2 * context + 1, n)]
        raw = _window(self.labels, z, rows, cols, scaled=False)
        labels = masks_to_labels([raw], [Path(self.labels.source)], self.labels.source, self.foreground, self.threshold,
                                 warn=False)[0]
        return np.stack(planes), labels


def _window(volume: LazyVolume, z: int, rows: np.ndarray, cols: np.ndarray, scaled: bool) -> np.ndarray:
    """Pixels at the index arrays ``rows`` x ``cols`` of section ``z``, read as one box."""
    box = (slice(int(rows.min()), int(rows.max()) + 1), slice(int(cols.min()), int(cols.max()) + 1))
    block = volume.read(z, *box) if scaled else volume.raw(z, *box)
    return block[np.ix_(rows - box[0].start, cols - box[1].start)]


class _PaddedSections:
    """Sections in memory, mirror-padded once (as :func:`mirror_index` mirrors), so that a tile
    is a view: no copy per tile on the training path."""

    def __init__(self, volume: Volume, size: int, context: int) -> None:
        self.pad = (size + 1) // 2 + 1
        plane = ((self.pad, self.pad), (self.pad, self.pad))
        channels = np.stack([np.stack(volume.planes(i, context)) for i in range(len(volume))])  # (N, C, H, W)
        self.images = np.pad(channels, ((0, 0), (0, 0), *plane), mode="symmetric")
        self.labels = np.pad(volume.labels, ((0, 0), *plane), mode="symmetric")

    def tile(self, k: int, top: int, left: int, size: int) -> tuple[np.ndarray, np.ndarray]:
        window = (slice(top + self.pad, top + self.pad + size), slice(left + self.pad, left + self.pad + size))
        return self.images[k][(slice(None), *window)], self.labels[k][window]


def load_volume_split(images: str, labels: str, fold: int, train_ratio: float = 0.8, foreground: int = 255,
                      threshold: float | None = None, channel: int | None = None, intensity_mode: str = "auto"
                      ) -> tuple[LazyLabelled, Volume | None]:
    """A volume's fold: the training sections left on disk (tiles are read from them as they
    are drawn), the validation sections read into memory, scaled and checked (None with
    ``train_ratio`` 1: every section trains)."""
    image_volume, mask_volume = open_volume(images, channel), open_volume(labels)
    n, h, w = image_volume.shape
    if mask_volume.shape != image_volume.shape:
        raise DataError(f"{labels}: masks are {mask_volume.shape} but images in {images} are {image_volume.shape}")
    image_volume.choose_scaling(None, intensity_mode)
    train_idx, val_idx = (list(range(n)), []) if train_ratio == 1 else fold_split(n, fold, train_ratio)
    whole = (slice(0, h), slice(0, w))
    masks = masks_to_labels([mask_volume.raw(z, *whole) for z in [*val_idx, train_idx[0]]], [Path(labels)] * (len(val_idx) + 1),
                            labels, foreground, threshold)
    if masks.min() == masks.max():
        raise DataError(f"{labels}: every mask pixel is of one class; training needs both cell interior and membrane "
                        "(check data.foreground and data.mask_threshold)")
    if not val_idx:
        return LazyLabelled(image_volume, mask_volume, train_idx, foreground, threshold), None
    stem = volume_stem(images)
    val = Volume(np.stack([image_volume.read(z, *whole) for z in val_idx]), [f"{stem}_{z:03d}" for z in val_idx],
                 Path(str(images)), masks[: len(val_idx)], calibration=image_volume.calibration,
                 intensity=image_volume.intensity)
    return LazyLabelled(image_volume, mask_volume, train_idx, foreground, threshold), val


def tile_centres(generator: torch.Generator, n: int, extent: int, out_size: int) -> torch.Tensor:
    """Random centres of ``n`` output windows along an axis of ``extent`` pixels, each window
    inside the image where the image is large enough."""
    half = out_size / 2
    lo, hi = (half, extent - half) if extent >= out_size else (extent / 2, extent / 2)
    return (lo + torch.rand(n, generator=generator, dtype=torch.float64) * (hi - lo)).floor().long()


class TileSampler:
    """Draws random training tiles at native resolution from sections in memory or on disk.

    Each tile is the network's input window (``in_size``) around a random output window
    (``out_size``) that lies inside the section where the section is large enough, mirrored
    at its borders. The labels are cut with the same input window, so that augmentation can
    warp both; the caller crops them to the output window. With ``context`` k, a tile's
    channels are the section and its k neighbouring sections on each side (mirrored at the
    stack's ends, as :meth:`Volume.planes`). All randomness comes from ``generator``.
    """

    def __init__(self, source: Volume | LazyLabelled, in_size: int, out_size: int, generator: torch.Generator,
                 context: int = 0) -> None:
        if isinstance(source, Volume) and source.labels is None:
            raise DataError(f"{source.source}: training needs labels")
        self.source, self.context = source, context
        self.in_size, self.out_size, self.generator = in_size, out_size, generator
        self.height, self.width = source.images.shape[1:]  # (N, H, W), in memory or on disk
        self._padded = _PaddedSections(source, in_size, context) if isinstance(source, Volume) else None

    def _tile(self, k: int, top: int, left: int) -> tuple[np.ndarray, np.ndarray]:
        if self._padded is not None:
            return self._padded.tile(k, top, left, self.in_size)
        return self.source.tile(k, top, left, self.in_size, self.context)

    def sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, C, in, in) float32 images in [0, 1] (C = 2 * context + 1) and (n, in, in) int64 labels."""
        which = torch.randint(0, len(self.source), (n,), generator=self.generator)
        cy = tile_centres(self.generator, n, self.height, self.out_size)
        cx = tile_centres(self.generator, n, self.width, self.out_size)
        half = self.in_size // 2
        xs, ys = [], []
        for i in range(n):
            x, y = self._tile(int(which[i]), int(cy[i]) - half, int(cx[i]) - half)
            xs.append(torch.from_numpy(np.ascontiguousarray(x)))
            ys.append(torch.from_numpy(np.ascontiguousarray(y)))
        return torch.stack(xs), torch.stack(ys).long()
