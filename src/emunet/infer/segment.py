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


import numpy as np
from scipy import ndimage
from skimage.segmentation import expand_labels, watershed

from ..model.affinities import Offsets
from ..config import SegmentConfig

__all__ = ["SegmentConfig", "mutex_watershed", "seeded_watershed", "merge_small_segments", "segment_stack"]

_FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)


def mutex_watershed(affinities: np.ndarray, offsets: Offsets, bias: float = 0.5, long_range_bias: float = 0.5,
                    min_size: int = 0) -> np.ndarray:
    """Cells of one slice's affinities (C, H, W) in [0, 1]: uint32 ids 1, 2, ..."""
    import mwatershed

    affinities = np.asarray(affinities)
    if affinities.ndim != 3 or affinities.shape[0] != len(offsets):
        raise ValueError(f"expected affinities of shape ({len(offsets)}, H, W), got {affinities.shape}")
    biases = np.array([bias if abs(dy) + abs(dx) == 1 else long_range_bias for dy, dx in offsets])
    # mwatershed takes signed weights: > 0 joins, < 0 keeps apart, in order of magnitude.
    signed = affinities.astype(np.float64) - biases[:, None, None]
    labels = mwatershed.agglom(signed, [list(o) for o in offsets])
    return merge_small_segments(_consecutive(labels), min_size)


def seeded_watershed(interior: np.ndarray, seed_threshold: float = 0.9, min_size: int = 0) -> np.ndarray:
    """Cells of one slice's interior probability map (H, W): the 4-connected regions above
    ``seed_threshold`` flooded over the membrane probability (1 - map), uint32 ids 1, 2, ..."""
    interior = np.asarray(interior, np.float32)
    seeds, count = ndimage.label(interior > seed_threshold, structure=_FOUR_CONNECTED)
    if count == 0:  # nothing is confidently interior: one segment, which is what the map says
        return np.ones(interior.shape, np.uint32)
    labels = watershed(1.0 - interior, seeds, connectivity=1)
    return merge_small_segments(_consecutive(labels), min_size)


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
    return _consecutive(expand_labels(kept, distance=max(labels.shape)))


def _consecutive(labels: np.ndarray) -> np.ndarray:
    """Ids renumbered 1..n in the order of their values, as uint32 (0 stays 0 where present)."""
    _, inverse = np.unique(labels, return_inverse=True)
    first = 0 if (labels == 0).any() else 1
    return (inverse.reshape(labels.shape) + first).astype(np.uint32)


def segment_stack(interior: np.ndarray, affinities: np.ndarray | None, offsets: Offsets | None,
                  cfg: SegmentConfig) -> np.ndarray:
    """Cells of every slice (N, H, W) uint32: the mutex watershed of the affinities where there
    are any, else the seeded watershed of the interior map."""
    out = np.empty(interior.shape, np.uint32)
    for i in range(len(interior)):
        if affinities is not None:
            out[i] = mutex_watershed(affinities[i], offsets, cfg.bias, cfg.long_range_bias, cfg.min_size)
        else:
            out[i] = seeded_watershed(interior[i], cfg.seed_threshold, cfg.min_size)
    return out
