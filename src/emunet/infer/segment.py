"""From predictions to cells: instance label images (uint32, ids 1..n each one cell; 0 only
where the mutex watershed left a pixel alone and ``min_size`` is 0 or 1).

- affinities: the mutex watershed (Wolf et al. 2019, the ``mwatershed`` package): every edge, short
  range and long range, is taken in order of confidence; an attractive one joins two clusters unless
  a repulsive edge taken earlier keeps them apart. Long-range edges carry the "apart" evidence
  across faint walls that a threshold of the nearest-neighbour map would cross.
- an interior probability map (the membrane head): a seeded watershed, seeds where the map is
  confidently interior, flooded over the membrane probability.

Segments smaller than ``min_size`` pixels (specks on membranes) are given to their neighbours.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy import ndimage

from ..device import usable_cores
from ..model.affinities import Offsets, nearest_channels, pair_slices
from ..config import SegmentConfig
from .flood import flood
from .peaks import h_maxima
from .link import link_sections

__all__ = ["SegmentConfig", "mutex_watershed", "mutex_stack", "calibration_windows", "calibrated_bias", "unsupported_wall_share", "wall_counts", "long_range_biases", "supported", "seeded_watershed", "flood_from_seeds", "dynamic_seeds", "merge_small_segments", "fill_from_nearest",
           "segment_stack"]

log = logging.getLogger("emunet")

_FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)
_FOUR_CONNECTED.flags.writeable = False  # shared by every call: nobody may change it

# The long-range bias's calibration (SegmentConfig.calibrate): on ISBI 2-3 % of the cells' walls
# cut a pixel pair whose nearest-neighbour affinity says "connected" (held-out and trained-on
# slices alike), on another lab's ssTEM stack 10 %, from long-range edges inside cells that the
# model is unsure of; 5 % lies between (docs/transfer.md#cells-as-good-as-their-map).
MOST_UNSUPPORTED_WALLS = 0.05
BIAS_STEP, LOWEST_LONG_RANGE_BIAS = 0.05, 0.4
# A stack larger than this many windows of this side is calibrated on that many windows spread
# through it (2 MP), then cut once: each candidate bias on the whole of a large stack was 85 % of
# an affinity model's cells' time (docs/volumes.md).
CALIBRATION_SIDE, CALIBRATION_WINDOWS = 512, 8


def mutex_watershed(affinities: np.ndarray, offsets: Offsets, bias: float = 0.5, long_range_bias: float = 0.5,
                    min_size: int = 0, long_range_stride: int = 1) -> np.ndarray:
    """Cells of one slice's affinities (C, H, W) in [0, 1]: uint32 ids 1, 2, ... With
    ``long_range_stride`` s, the long-range edges are drawn only on a grid of every s-th row and
    column, anchored to the array's first row and column (the nearest-neighbour edges everywhere)."""
    import mwatershed

    affinities = np.asarray(affinities)
    if affinities.ndim != 3 or affinities.shape[0] != len(offsets):
        raise ValueError(f"expected affinities of shape ({len(offsets)}, H, W), got {affinities.shape}")
    biases = np.array([bias if abs(dy) + abs(dx) == 1 else long_range_bias for dy, dx in offsets])
    # mwatershed takes signed weights: > 0 joins, < 0 keeps apart, in order of magnitude.
    signed = affinities.astype(np.float64) - biases[:, None, None]
    strides = None
    if long_range_stride > 1:
        strides = [[1, 1] if abs(dy) + abs(dx) == 1 else [long_range_stride] * 2 for dy, dx in offsets]
    labels = mwatershed.agglom(signed, [list(o) for o in offsets], strides=strides)
    return merge_small_segments(_consecutive(labels), min_size)


def wall_counts(cells: np.ndarray, affinities: np.ndarray, offsets: Offsets, bias: float) -> tuple[int, int]:
    """The walls between cells (pixel pairs of a stack (N, H, W) of cells whose ids differ,
    4-connected), and how many of them have a nearest-neighbour affinity above ``bias``: walls
    that only long-range edges put there, with no membrane between the two pixels."""
    walls = unsupported = 0
    h, w = cells.shape[-2:]
    for c in nearest_channels(offsets):
        (py, qy), (px, qx) = pair_slices(h, offsets[c][0]), pair_slices(w, offsets[c][1])
        wall = cells[:, py, px] != cells[:, qy, qx]
        walls += int(wall.sum())
        unsupported += int((affinities[:, c, py, px][wall] > bias).sum())
    return walls, unsupported


def unsupported_wall_share(cells: np.ndarray, affinities: np.ndarray, offsets: Offsets, bias: float) -> float:
    """Of the walls between cells, the share that no membrane supports (:func:`wall_counts`)."""
    walls, unsupported = wall_counts(cells, affinities, offsets, bias)
    return unsupported / walls if walls else 0.0


def long_range_biases(cfg: SegmentConfig) -> list[float]:
    """The long-range biases the calibration tries, in order: ``cfg.long_range_bias``, then lower
    by :data:`BIAS_STEP` down to :data:`LOWEST_LONG_RANGE_BIAS` (only the first without
    ``cfg.calibrate``)."""
    biases = [cfg.long_range_bias]
    lowest = min(cfg.long_range_bias, LOWEST_LONG_RANGE_BIAS)
    while cfg.calibrate and biases[-1] - BIAS_STEP >= lowest - 1e-9:
        biases.append(round(biases[-1] - BIAS_STEP, 4))
    return biases


def supported(share: float, bias: float, last: bool) -> bool:
    """Whether the calibration stops at ``bias``, whose cells' walls are ``share`` unsupported."""
    if share <= MOST_UNSUPPORTED_WALLS or last:
        return True
    log.info(f"cells: {share:.1%} of the walls at long-range bias {bias:g} have no membrane under them; taking a lower one")
    return False


Window = tuple[int, int, int, int, int]  # (z, y0, y1, x0, x1)


def calibration_windows(shape: tuple[int, int, int]) -> list[Window]:
    """Where a stack (N, H, W) is calibrated: squares of :data:`CALIBRATION_SIDE` px (a whole
    section where it is smaller) on a grid over every section, at most :data:`CALIBRATION_WINDOWS`
    of them, taken evenly through the stack; a function of the shape alone, so that a stack in
    memory and the same volume block by block are calibrated on the very same pixels."""
    n, h, w = shape
    sy, sx = min(CALIBRATION_SIDE, h), min(CALIBRATION_SIDE, w)
    every = [(z, y, y + sy, x, x + sx) for z in range(n) for y in range(0, h - sy + 1, sy) for x in range(0, w - sx + 1, sx)]
    if len(every) <= CALIBRATION_WINDOWS:
        return every
    return [every[i] for i in np.linspace(0, len(every) - 1, CALIBRATION_WINDOWS).round().astype(int)]


def calibrated_bias(windows: Sequence[np.ndarray], offsets: Offsets, cfg: SegmentConfig) -> tuple[float, list[np.ndarray]]:
    """The first of :func:`long_range_biases` at which the cells of the windows' affinities
    (each (C, h, w)), cut on their own, have walls at most :data:`MOST_UNSUPPORTED_WALLS`
    unsupported, pooled over the windows (the last candidate otherwise); and the windows' cells
    at it."""
    biases = long_range_biases(cfg)
    for i, long_range in enumerate(biases):
        cuts = [mutex_watershed(w, offsets, cfg.bias, long_range, cfg.min_size, cfg.long_range_stride) for w in windows]
        counted = [wall_counts(cells[None], window[None], offsets, cfg.bias) for cells, window in zip(cuts, windows)]
        walls, unsupported = (sum(c[j] for c in counted) for j in (0, 1))
        last = i == len(biases) - 1
        if last or supported(unsupported / walls if walls else 0.0, long_range, last):
            return long_range, cuts
    raise AssertionError("unreachable: the last bias is always taken")


def mutex_stack(affinities: np.ndarray, offsets: Offsets, cfg: SegmentConfig) -> tuple[np.ndarray, float]:
    """The mutex watershed of every section's affinities (N, C, H, W), and the long-range bias it
    used: the first of :func:`long_range_biases` at which the cells' walls are at most
    :data:`MOST_UNSUPPORTED_WALLS` unsupported (``cfg.calibrate``; the last one otherwise).
    The walls are counted on :func:`calibration_windows`: the whole stack where it is at most
    that many sections of at most that side (whose cuts are then the cells); else each candidate
    cuts only the windows, and the stack is cut once, at the bias chosen."""
    n, _, h, w = affinities.shape
    windows = calibration_windows((n, h, w))
    if len(windows) == n and all(y1 - y0 == h and x1 - x0 == w for _, y0, y1, x0, x1 in windows):
        bias, cuts = calibrated_bias(list(affinities), offsets, cfg)
        return np.stack(cuts), bias
    bias = cfg.long_range_bias  # the one candidate without cfg.calibrate: no windows to cut
    if len(long_range_biases(cfg)) > 1:
        bias = calibrated_bias([affinities[z, :, y0:y1, x0:x1] for z, y0, y1, x0, x1 in windows], offsets, cfg)[0]
    return np.stack([mutex_watershed(a, offsets, cfg.bias, bias, cfg.min_size, cfg.long_range_stride) for a in affinities]), bias


def seeded_watershed(interior: np.ndarray, seed_threshold: float = 0.9, min_size: int = 0,
                     seed_dynamics: float = 0.0) -> np.ndarray:
    """Cells of one slice's interior probability map (H, W): the 4-connected regions above
    ``seed_threshold`` (or, with ``seed_dynamics``, the map's maxima that stand that much above
    their surroundings where it is above 0.5) flooded over the membrane probability (1 - map),
    uint32 ids 1, 2, ..."""
    interior = np.asarray(interior, np.float32)
    if seed_dynamics > 0:
        seeds, count = dynamic_seeds(interior, seed_dynamics)
    else:
        level = seed_level(interior, seed_threshold)
        if level is None:  # nothing is interior anywhere: one segment, which is what the map says
            return np.ones(interior.shape, np.uint32)
        seeds, count = ndimage.label(interior > level, structure=_FOUR_CONNECTED)
    if count == 0:
        return np.ones(interior.shape, np.uint32)
    labels = flood_from_seeds(1.0 - interior, seeds)
    return merge_small_segments(_consecutive(labels), min_size)


def flood_from_seeds(height: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """The 4-connected watershed (:func:`.flood.flood`, scikit-image's on 1/65535 steps) of
    ``height`` from ``seeds`` (4-connected regions, labelled), with a seed's inner pixels left out:
    those whose 4-neighbours all lie in the seed flood nothing, so they stay out of the queue
    (masked) and keep their seed's id. Where the heights are distinct steps the labels are the
    plain call's with every seed pixel, pixel for pixel; where two seed pixels' heights tie, the
    queue may take them in another order (tests/test_affinities.py)."""
    inside = ndimage.binary_erosion(seeds > 0, structure=_FOUR_CONNECTED, border_value=1)
    labels = flood(height, np.where(inside, 0, seeds), mask=~inside)
    labels[inside] = seeds[inside]
    return labels


def dynamic_seeds(interior: np.ndarray, dynamics: float) -> tuple[np.ndarray, int]:
    """Seeds (labelled, and their count) at the map's h-maxima of height ``dynamics`` where the
    map is above 0.5: two interiors are two seeds if the wall between them dips at least
    ``dynamics`` below the lower one's peak, whether or not the dip reaches a fixed level; their
    offset-free form is what holds when a model's walls are fainter on one stack than another."""
    peaks = h_maxima(interior.astype(np.float64), dynamics).astype(bool) & (interior > 0.5)
    return ndimage.label(peaks, structure=_FOUR_CONNECTED)


def seed_level(interior: np.ndarray, seed_threshold: float) -> float | None:
    """Where seeds start: ``seed_threshold``, or for a map that never reaches it (an under-trained
    model's, say: maximum 0.75 against 0.8) the same place on the map's own scale, between 0.5 and
    its maximum; None for a map that is nowhere above 0.5 (no pixel is more interior than membrane)."""
    top = float(interior.max()) if interior.size else 0.0
    if top > seed_threshold:
        return seed_threshold
    if top <= 0.5:
        return None
    return 0.5 + (top - 0.5) * (seed_threshold - 0.5) / 0.5


def merge_small_segments(labels: np.ndarray, min_size: int) -> np.ndarray:
    """``labels`` with segments of fewer than ``min_size`` pixels given to the nearest larger
    ones (ids renumbered 1, 2, ...); unchanged when every segment is small."""
    if min_size <= 1:
        return labels
    sizes = np.bincount(labels.ravel())
    small = sizes < min_size
    small[0] = True
    if small[1:].all():
        return labels
    kept = np.where(small[labels], 0, labels)
    return _consecutive(fill_from_nearest(kept))


def fill_from_nearest(kept: np.ndarray) -> np.ndarray:
    """``kept`` with every 0 pixel given the id of the nearest non-zero pixel, as scikit-image's
    ``expand_labels`` without a distance limit gives it, in a fraction of its time: the distance
    transform runs over each hole's neighbourhood, not the whole image.

    A hole's nearest kept pixel lies within its bounding box's longest side (+1) of every pixel of
    it: straight out of the hole, the first pixel that is not the hole's is kept, or else the
    hole spans the image and its neighbourhood is all of it. A test compares it with
    ``expand_labels`` on random label images; on real cells they agree pixel for pixel too."""
    holes = ndimage.label(kept == 0, structure=np.ones((3, 3), bool))[0]
    out = kept.copy()
    for index, box in enumerate(ndimage.find_objects(holes), start=1):
        if box is None:
            continue
        reach = max(s.stop - s.start for s in box) + 1
        around = tuple(slice(max(0, s.start - reach), min(n, s.stop + reach)) for s, n in zip(box, kept.shape))
        region, hole = kept[around], holes[around] == index
        nearest = ndimage.distance_transform_edt(region == 0, return_indices=True, return_distances=False)
        out[around][hole] = region[nearest[0][hole], nearest[1][hole]]
    return out


def _consecutive(labels: np.ndarray) -> np.ndarray:
    """Ids renumbered 1..n in the order of their values, as uint32 (0 stays 0 where present)."""
    flat = labels.ravel()
    top = int(flat.max()) if flat.size else 0
    if flat.size and (int(flat.min()) < 0 or top > 4 * flat.size):  # sparse ids: sorting is cheaper
        _, inverse = np.unique(labels, return_inverse=True)
        first = 0 if (labels == 0).any() else 1
        return (inverse.reshape(labels.shape) + first).astype(np.uint32)
    # each id's rank among the ids present, by a table over the id range: linear, where
    # np.unique sorts every pixel (a tenth of a block's cells' time)
    present = np.zeros(top + 1, bool)
    present[flat] = True
    lookup = (np.cumsum(present) - present[0]).astype(np.uint32)
    return lookup[labels]


def segment_stack(interior: np.ndarray, affinities: np.ndarray | None, offsets: Offsets | None,
                  cfg: SegmentConfig, warn: bool = True) -> np.ndarray:
    """Cells of every slice (N, H, W) uint32: the mutex watershed of the affinities where there
    are any (its long-range bias calibrated on the whole stack), else the seeded watershed of
    the interior map; ids per slice, or 3-D objects with ``cfg.link_sections``."""
    if len(interior) == 0:
        return np.zeros(interior.shape, np.uint32)
    if affinities is not None:
        out = mutex_stack(affinities, offsets, cfg)[0]
    else:
        # sections on several threads at once (the flooding lets go of the interpreter lock); each alone
        with ThreadPoolExecutor(max(1, min(len(interior), usable_cores()))) as pool:
            out = np.stack(list(pool.map(lambda page: seeded_watershed(page, cfg.seed_threshold, cfg.min_size,
                                                                       cfg.seed_dynamics), interior))).astype(np.uint32)
    if warn:
        _say_where_cells_failed(out, interior, affinities is not None, cfg)
    return link_sections(out, cfg.link_iou) if cfg.link_sections else out


def _say_where_cells_failed(cells: np.ndarray, interior: np.ndarray, mutex: bool, cfg: SegmentConfig) -> None:
    """One warning for the slices that came out as one or two segments, and for maps whose seeds
    had to adapt, naming the setting to change."""
    few = [i for i in range(len(cells)) if int(cells[i].max()) <= 2]
    if not mutex and not cfg.seed_dynamics:  # h-maxima seeds need no level
        tops = [float(interior[i].max()) for i in range(len(interior))]
        low = [i for i, top in enumerate(tops) if top <= cfg.seed_threshold]
        if low:
            log.warning(f"cells: the map of {_slices(low)} never reaches segment.seed_threshold {cfg.seed_threshold} "
                        f"(maximum {min(tops[i] for i in low):.3f}); seeds were taken on the map's own scale there "
                        "(an under-trained model? train longer, or lower segment.seed_threshold)")
    if few:
        setting = ("raise segment.bias (nearest-neighbour edges then join less readily)" if mutex else
                   "lower segment.seed_threshold, or check that 1 = cell interior in the map")
        log.warning(f"cells: {_slices(few)} came out as one or two segments; {setting}")


def _slices(indices: list[int]) -> str:
    shown = ", ".join(str(i) for i in indices[:8]) + (" ..." if len(indices) > 8 else "")
    return f"slice {shown}" if len(indices) == 1 else f"{len(indices)} slices ({shown})"
