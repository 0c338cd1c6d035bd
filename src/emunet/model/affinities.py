"""The affinity head: for each pixel and each offset, the probability that the pixel and the one
at that offset belong to the same cell (Turaga et al. 2010; short- and long-range offsets as in
Wolf et al., "The Mutex Watershed", 2019).

Targets are computed on the fly from the training labels' cells (the 4-connected components of
the interior, as the challenge labels them): 1 where both pixels lie in one cell, 0 where they
lie in different cells or either is membrane, so the nearest-neighbour channels learn the
membrane and the long-range channels learn which pixels across a wall belong apart. Pairs that
leave the tile have no target and are masked out of the loss.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ..errors import ConfigError

__all__ = ["DEFAULT_OFFSETS", "check_offsets", "nearest_channels", "pair_slices", "label_cells", "affinity_targets", "affinity_loss", "interior_from_affinities"]

Offsets = tuple[tuple[int, int], ...]

# (dy, dx): row and column steps from a pixel to its partner; short range learns the membrane,
# long range (27 px, about a small cell's width) keeps cells apart across faint walls.
DEFAULT_OFFSETS: Offsets = ((-1, 0), (0, -1), (-3, 0), (0, -3), (-9, 0), (0, -9), (-27, 0), (0, -27))

_FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)
_FOUR_CONNECTED.flags.writeable = False  # shared by every call: nobody may change it


def check_offsets(offsets: Sequence[Sequence[int]]) -> Offsets:
    """Offsets as a tuple of (dy, dx) integer pairs; both nearest neighbours must be among them
    (they carry the membrane map and the mutex watershed's attractive edges)."""
    try:
        pairs = tuple((int(dy), int(dx)) for dy, dx in offsets)
        whole = all(float(v).is_integer() for pair in offsets for v in pair)
    except (TypeError, ValueError):
        raise ConfigError(f"model.offsets must be a list of [dy, dx] integer pairs, got {offsets!r}") from None
    if not whole:
        raise ConfigError(f"model.offsets must be integers, got {offsets!r}")
    ConfigError.check([
        (len(set(pairs)) == len(pairs), f"model.offsets lists an offset twice: {list(pairs)}"),
        ((0, 0) not in pairs, "model.offsets may not hold [0, 0] (a pixel with itself)"),
        (all(max(abs(dy), abs(dx)) <= 128 for dy, dx in pairs), "model.offsets must be within 128 px"),
        (sorted(abs(pairs[c][0]) for c in nearest_channels(pairs)) == [0, 1],
         f"model.offsets must hold one vertical and one horizontal nearest neighbour, e.g. [-1, 0] and [0, -1]; "
         f"got {list(pairs)}"),
    ])
    return pairs


def nearest_channels(offsets: Offsets) -> list[int]:
    """Channels of the 4-connected nearest-neighbour offsets."""
    return [c for c, (dy, dx) in enumerate(offsets) if abs(dy) + abs(dx) == 1]


def label_cells(labels: torch.Tensor) -> torch.Tensor:
    """Each tile's cells: (B, H, W) labels (1 = interior, 0 = membrane) to int64 ids, 1, 2, ...
    per 4-connected component of the interior and 0 on membrane, on the labels' device."""
    masks = (labels == 1).cpu().numpy()
    cells = np.zeros(masks.shape, np.int64)
    for i, mask in enumerate(masks):
        ndimage.label(mask, structure=_FOUR_CONNECTED, output=cells[i])
    return torch.from_numpy(cells).to(labels.device)


def pair_slices(size: int, step: int) -> tuple[slice, slice]:
    """Along one axis: the positions p whose partner p + step lies inside, and those partners."""
    return slice(max(0, -step), size - max(0, step)), slice(max(0, step), size - max(0, -step))


def affinity_targets(cells: torch.Tensor, offsets: Offsets) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets and mask, both (B, C, H, W) float, of cells (B, H, W): target 1 where a pixel and
    its partner lie in one cell; mask 0 where the partner is outside the tile."""
    b, h, w = cells.shape
    target = torch.zeros((b, len(offsets), h, w), dtype=torch.float32, device=cells.device)
    mask = torch.zeros_like(target)
    for c, (dy, dx) in enumerate(offsets):
        (py, qy), (px, qx) = pair_slices(h, dy), pair_slices(w, dx)
        here, there = cells[:, py, px], cells[:, qy, qx]
        target[:, c, py, px] = ((here == there) & (here > 0)).float()
        mask[:, c, py, px] = 1.0
    return target, mask


def affinity_loss(logits: torch.Tensor, cells: torch.Tensor, offsets: Offsets, kind: str = "ce",
                  boundary_weight: float = 1.0) -> torch.Tensor:
    """Binary cross-entropy of every affinity channel over the pairs inside the tile ('ce'),
    plus 1 - the soft dice of the 'apart' class (``1 - affinity``) with 'ce+dice'.

    ``boundary_weight`` weighs the pairs that belong apart (target 0) against the others, as
    ``train.membrane_weight`` weighs membrane pixels for the membrane head.
    """
    target, mask = affinity_targets(cells, offsets)
    logits = logits.float()
    weight = mask if boundary_weight == 1.0 else mask * torch.where(target > 0, 1.0, boundary_weight)
    loss = F.binary_cross_entropy_with_logits(logits, target, weight=weight, reduction="sum") / weight.sum().clamp_min(1.0)
    if kind == "ce+dice":
        apart = (1.0 - torch.sigmoid(logits)) * mask
        apart_true = (1.0 - target) * mask
        dims = (0, 2, 3)
        dice = (2 * (apart * apart_true).sum(dims) + 1.0) / ((apart * apart).sum(dims) + (apart_true * apart_true).sum(dims) + 1.0)
        loss = loss + 1.0 - dice.mean()
    return loss


def interior_from_affinities(affinities: np.ndarray, offsets: Offsets) -> np.ndarray:
    """A cell-interior probability map from affinities (..., C, H, W): per pixel, the mean
    affinity to its four nearest neighbours (those inside the image), float32 (..., H, W).

    A pixel that belongs with all its neighbours is interior; one on a wall belongs with few.
    This map is what the membrane head's scores (lab dice, pixel error, the challenge's
    threshold sweep) are computed from for an affinity model.
    """
    affinities = np.asarray(affinities, np.float32)
    h, w = affinities.shape[-2:]
    total = np.zeros(affinities.shape[:-3] + (h, w), np.float32)
    count = np.zeros((h, w), np.float32)
    for c in nearest_channels(offsets):
        dy, dx = offsets[c]
        (py, qy), (px, qx) = pair_slices(h, dy), pair_slices(w, dx)
        edge = affinities[..., c, py, px]
        total[..., py, px] += edge  # the pixel's own edge to its partner
        total[..., qy, qx] += edge  # and the same edge seen from the partner
        count[py, px] += 1
        count[qy, qx] += 1
    return total / np.maximum(count, 1)
