"""Test-time augmentation: the prediction averaged over the 8 flips and 90-degree turns of the
image, the symmetries training augments with.

A membrane map turns back with the image. An affinity map needs more: after a turn, the channel
that the network filled for offset ``o`` holds, in the image's own frame, the affinity for the
turned offset, which is either another offset of the model or the negative of one. Affinity
between ``p`` and ``p - o`` is the affinity for ``o`` read at ``p - o``, so the negative case is
that channel shifted by ``o``; pairs whose partner leaves the image have no such reading and are
averaged over the transforms that do give one.

Everything works on a region of the image (``read(rows, cols)`` as :func:`tiling.predict_region`
takes it): a block of a large volume gets the same values as the whole section.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..model.unet import UNet
from .tiling import as_planes, predict_region

__all__ = ["DIHEDRAL", "dihedral", "undo_dihedral", "turned_offset", "check_offsets_for_tta",
           "add_turned_affinities", "predict_region_tta", "predict_image_tta"]

Rect = tuple[int, int, int, int]  # y0, y1, x0, x1 (ends exclusive)
Transform = tuple[int, bool]  # quarter turns (np.rot90's k), then a mirror of the columns

DIHEDRAL: tuple[Transform, ...] = tuple((k, flip) for k in range(4) for flip in (False, True))


def dihedral(image: np.ndarray, k: int, flip: bool) -> np.ndarray:
    """Turn the last two axes by ``k`` quarter turns, then mirror the columns if ``flip``."""
    out = np.rot90(image, k, axes=(-2, -1))
    return np.ascontiguousarray(out[..., ::-1] if flip else out)


def undo_dihedral(image: np.ndarray, k: int, flip: bool) -> np.ndarray:
    out = image[..., ::-1] if flip else image
    return np.ascontiguousarray(np.rot90(out, -k, axes=(-2, -1)))


def _inverse(k: int, flip: bool) -> Transform:
    # a mirror is its own inverse after any turn (F R^k F = R^-k); a pure turn undoes by turning back
    return (k, True) if flip else ((-k) % 4, False)


def _turned_shape(shape: tuple[int, int], k: int) -> tuple[int, int]:
    return shape if k % 2 == 0 else (shape[1], shape[0])


def _turned_point(y: int, x: int, shape: tuple[int, int], k: int, flip: bool) -> tuple[int, int]:
    """Where pixel (y, x) of an image of ``shape`` lies in ``dihedral(image, k, flip)``."""
    h, w = shape
    for _ in range(k % 4):  # np.rot90 once: out[i, j] = in[j, w - 1 - i]
        y, x, h, w = w - 1 - x, y, w, h
    return (y, w - 1 - x) if flip else (y, x)


def _turned_rect(rect: Rect, shape: tuple[int, int], k: int, flip: bool) -> Rect:
    """The rectangle ``rect`` of an image of ``shape`` occupies after the transform."""
    y0, y1, x0, x1 = rect
    (a, b), (c, d) = _turned_point(y0, x0, shape, k, flip), _turned_point(y1 - 1, x1 - 1, shape, k, flip)
    return min(a, c), max(a, c) + 1, min(b, d), max(b, d) + 1


def turned_offset(offset: tuple[int, int], k: int, flip: bool) -> tuple[int, int]:
    """The (dy, dx) step an offset becomes under the transform (its linear part)."""
    (ay, ax), (by, bx) = _turned_point(0, 0, (0, 0), k, flip), _turned_point(*offset, (0, 0), k, flip)
    return by - ay, bx - ax


def _channel_map(offsets: Sequence[tuple[int, int]], k: int, flip: bool) -> list[tuple[int, int]]:
    """For each output channel under the transform: (the model's channel it fills in the image's
    frame, +1 or -1 for the same or the reversed pair)."""
    inverse, index = _inverse(k, flip), {tuple(o): c for c, o in enumerate(offsets)}
    pairs = []
    for offset in offsets:
        back = turned_offset(offset, *inverse)
        if back in index:
            pairs.append((index[back], 1))
        elif (-back[0], -back[1]) in index:
            pairs.append((index[(-back[0], -back[1])], -1))
        else:
            return []
    return pairs


def check_offsets_for_tta(offsets: Sequence[tuple[int, int]]) -> None:
    """Test-time turns need offsets that the turns map onto each other (or onto their negatives)."""
    if not all(_channel_map(offsets, k, flip) for k, flip in DIHEDRAL):
        raise ConfigError(f"predict.tta turns the image, which needs model.offsets that turns and mirrors map onto each "
                          f"other (e.g. [-n, 0] with [0, -n]); this model's {list(map(list, offsets))} do not: turn tta off")


def predict_region_tta(model: UNet, read: Callable[[slice, slice], list[np.ndarray]], shape: tuple[int, int],
                       region: Rect, **settings: Any) -> np.ndarray:
    """:func:`tiling.predict_region` averaged over the 8 transforms, each predicted on the whole
    transformed image's tile grid, so a region equals the same pixels of the whole image."""
    offsets = [tuple(o) for o in model.cfg.offsets]
    if offsets:
        check_offsets_for_tta(offsets)
    reach = max((max(abs(dy), abs(dx)) for dy, dx in offsets), default=0)
    h, w = shape
    y0, y1, x0, x1 = region
    grown = (max(0, y0 - reach), min(h, y1 + reach), max(0, x0 - reach), min(w, x1 + reach))
    total = np.zeros((len(offsets), y1 - y0, x1 - x0) if offsets else (y1 - y0, x1 - x0), np.float64)
    counts = np.zeros(total.shape, np.float32)
    settings.pop("out", None)  # the transforms' predictions are summed here instead
    for k, flip in DIHEDRAL:
        turned = _turned_shape(shape, k)
        back = _inverse(k, flip)

        def read_turned(rows: slice, cols: slice, k=k, flip=flip, turned=turned, back=back) -> list[np.ndarray]:
            ty0, ty1, tx0, tx1 = _turned_rect((rows.start, rows.stop, cols.start, cols.stop), turned, *back)
            return [dihedral(p, k, flip) for p in read(slice(ty0, ty1), slice(tx0, tx1))]

        prediction = predict_region(model, read_turned, turned, _turned_rect(grown, shape, k, flip), **settings)
        prediction = undo_dihedral(prediction, k, flip)
        if offsets:
            add_turned_affinities(total, counts, prediction, (k, flip), offsets, grown, region, shape)
        else:
            total += prediction[y0 - grown[0] : y1 - grown[0], x0 - grown[2] : x1 - grown[2]]
            counts += 1
    return (total / counts).astype(np.float32)


def add_turned_affinities(total: np.ndarray, counts: np.ndarray, prediction: np.ndarray, transform: Transform,
                          offsets: Sequence[tuple[int, int]], grown: Rect, region: Rect, shape: tuple[int, int]) -> None:
    """Add the affinities predicted on the transformed image, turned back to the image's frame
    (``prediction``, over the rectangle ``grown``), into the model's channels over ``region``
    (``total`` and ``counts``, (C, rows, cols)): same pairs as they are, reversed pairs read at
    the partner, where it lies in the image (``shape``)."""
    y0, y1, x0, x1 = region
    h, w = shape
    offsets = [tuple(o) for o in offsets]
    for c, (target, sign) in enumerate(_channel_map(offsets, *transform)):
        dy, dx = (0, 0) if sign > 0 else offsets[target]
        # rows r of the region whose reading r + d lies in the image (it then lies in `grown`)
        ry0, ry1 = max(y0, -dy), min(y1, h - dy)
        rx0, rx1 = max(x0, -dx), min(x1, w - dx)
        if ry0 >= ry1 or rx0 >= rx1:
            continue
        source = prediction[c, ry0 + dy - grown[0] : ry1 + dy - grown[0], rx0 + dx - grown[2] : rx1 + dx - grown[2]]
        total[target, ry0 - y0 : ry1 - y0, rx0 - x0 : rx1 - x0] += source
        counts[target, ry0 - y0 : ry1 - y0, rx0 - x0 : rx1 - x0] += 1


def predict_image_tta(model: UNet, image, **settings: Any) -> np.ndarray:
    """:func:`tiling.predict_image` averaged over the 8 flips and 90-degree turns of the image;
    an affinity model's channels are put back in their own offsets (module docstring)."""
    planes = as_planes(image, model)
    h, w = planes[0].shape
    return predict_region_tta(model, lambda rows, cols: [p[rows, cols] for p in planes], (h, w), (0, h, 0, w), **settings)
