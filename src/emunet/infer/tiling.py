"""Overlap-tile prediction (the U-Net paper's Fig. 2) for images of any size.

The image is mirror-padded, cut into input windows on a regular grid, and each window's
output is blended into the result with a weight map. Tile offsets are multiples of the
network's down-sampling factor, so for a valid-padded U-Net the result equals the network
applied to the whole mirror-padded image. Only ``batch_size`` tiles are in flight at once,
so memory stays bounded by the image and two accumulators, not by the network.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterator

import numpy as np
import torch

from ..io.data import mirror_index
from ..device import autocast_for
from ..errors import ConfigError, DataError
from ..model.unet import UNet, to_network_input
from ..progress import progress_bar

__all__ = ["TilePlan", "plan_tiles", "predict_image", "predict_region", "as_planes", "inference_layout"]


class TilePlan:
    """Geometry of one tiled prediction: input/output window sizes, stride, padding."""

    def __init__(self, model: UNet, height: int, width: int, tile: int, overlap: float, margin: int) -> None:
        step = 2**model.cfg.depth
        if model.cfg.padding == "valid":
            self.in_size = model.fit_input_size(tile)
            self.margin = 0
        else:
            # A same-padded net sees zero padding at tile edges; give it mirrored context
            # and keep only the centre.
            self.margin = math.ceil(margin / step) * step
            self.in_size = model.fit_input_size(tile + 2 * self.margin)
        self.out_size = model.output_size(self.in_size) - 2 * self.margin
        self.context = (self.in_size - self.out_size) // 2  # input pixels around the output window, per side
        if not 0.0 <= overlap < 1.0:
            raise ConfigError(f"predict.overlap must be in [0, 1), got {overlap}")
        stride = int(self.out_size * (1.0 - overlap)) // step * step
        self.stride = max(step, min(stride, self.out_size // step * step))
        self.height, self.width = height, width
        self.ny = max(1, math.ceil((height - self.out_size) / self.stride) + 1)
        self.nx = max(1, math.ceil((width - self.out_size) / self.stride) + 1)
        self.covered_h = (self.ny - 1) * self.stride + self.out_size
        self.covered_w = (self.nx - 1) * self.stride + self.out_size

    def origins(self) -> Iterator[tuple[int, int]]:
        """Top-left corner of each tile's output window, in image coordinates."""
        for iy in range(self.ny):
            for ix in range(self.nx):
                yield iy * self.stride, ix * self.stride


def plan_tiles(model: UNet, height: int, width: int, tile: int = 388, overlap: float = 0.0, margin: int = 32) -> TilePlan:
    return TilePlan(model, height, width, tile, overlap, margin)


def _profile(size: int, kind: str) -> np.ndarray:
    """1-D blending profile; a tile's weight is its outer product with itself, so the sum of
    weights over a regular grid is separable and needs no full-size map. Gaussian (sigma =
    size/8, as nnU-Net), floored so that tile corners still count, or uniform."""
    if kind == "uniform":
        return np.ones(size, np.float32)
    c = (size - 1) / 2.0
    g = np.exp(-0.5 * ((np.arange(size) - c) / (size / 8.0)) ** 2)
    return np.maximum(g / g.max(), np.sqrt(1e-3)).astype(np.float32)


def as_planes(image, model: UNet) -> list[np.ndarray]:
    """The input channels as a list of (H, W) arrays, checked against the model."""
    planes = [image] if isinstance(image, np.ndarray) and image.ndim == 2 else list(image)
    shapes = {p.shape for p in planes}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise DataError(f"expected an (H, W) image or same-sized (H, W) channels, got shapes {sorted(shapes)}")
    if len(planes) != model.cfg.in_channels:
        raise DataError(f"the model takes {model.cfg.in_channels} input channel(s), got {len(planes)}")
    return planes


def predict_image(model: UNet, image: np.ndarray | list[np.ndarray], **settings: Any) -> np.ndarray:
    """Foreground probability (class 1 of the softmax) of one (H, W) image in [0, 1], or an
    affinity model's (C, H, W) affinities: :func:`predict_region` over the whole image.

    Memory is the image, the result and ``batch_size`` tiles: tiles are cut with mirrored
    indices instead of padding the image, blended straight into the result, and normalised
    by a separable weight sum.

    Args:
        model: a U-Net in eval mode.
        image: float (H, W) grey image in [0, 1], any size; for a 2.5-D model its
            sections as (C, H, W) or a list of C (H, W) arrays (views are not copied).
        settings: ``tile``, ``overlap``, ``batch_size``, ``blend``, ``margin``, ``precision``,
            ``device``, ``out``, ``progress``, as :func:`predict_region` takes them.
    """
    planes = as_planes(image, model)
    h, w = planes[0].shape
    return predict_region(model, lambda rows, cols: [p[rows, cols] for p in planes], (h, w), (0, h, 0, w), **settings)


def inference_layout(model: UNet) -> None:
    """On a CPU, hold the weights channels-last as the tiles are (in place; values unchanged):
    a plain-layout net on channels-last tiles predicts 2.4 times slower (2.0 against 0.82 s for
    the six validation slices of the CPU preset). Every prediction passes here, so validation,
    ``evaluate``, ``predict`` and blockwise prediction of the same weights agree to the last bit."""
    if next(model.parameters()).device.type != "cpu":
        return
    # already so: left alone, since rewriting weights that another thread is predicting with
    # crashes the process (blockwise --workers N share one model per process)
    if all(p.is_contiguous(memory_format=torch.channels_last) for p in model.parameters() if p.dim() == 4):
        return
    model.to(memory_format=torch.channels_last)


def _tiles_reaching(plan, shape: tuple[int, int], region: tuple[int, int, int, int]):
    """The grid's tiles whose output reaches into ``region``: their output origins, and the
    (mirrored) rows and columns of the image each one's input reads."""
    (h, w), (y0, y1, x0, x1) = shape, region
    origins = [(y, x) for y, x in plan.origins()
               if y < y1 and y + plan.out_size > y0 and x < x1 and x + plan.out_size > x0]
    rows = [mirror_index(y - plan.context, plan.in_size, h) for y, _ in origins]
    cols = [mirror_index(x - plan.context, plan.in_size, w) for _, x in origins]
    return origins, rows, cols


def _zeroed(out: np.ndarray | None, channels: int, region: tuple[int, int, int, int]) -> np.ndarray:
    """``out`` set to zeros, or a new float32 array for the region (a channel per affinity offset
    first; none for the membrane head)."""
    y0, y1, x0, x1 = region
    if out is None:
        return np.zeros(((channels,) if channels else ()) + (y1 - y0, x1 - x0), np.float32)
    out[...] = 0.0
    return out


def _add_tile(out: np.ndarray, weighted: np.ndarray, origin: tuple[int, int], shape: tuple[int, int],
              region: tuple[int, int, int, int]) -> None:
    """Add the part of one tile's weighted output inside both the image and the region."""
    (y, x), (h, w), (y0, y1, x0, x1) = origin, shape, region
    size = weighted.shape[-1]
    ty0, ty1 = max(y, y0), min(y + size, h, y1)
    tx0, tx1 = max(x, x0), min(x + size, w, x1)
    out[..., ty0 - y0 : ty1 - y0, tx0 - x0 : tx1 - x0] += weighted[..., ty0 - y : ty1 - y, tx0 - x : tx1 - x]


def _blend_sums(plan, profile: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The sums of the blending weights over every tile of the grid, along y and along x (the
    weights are separable, so their 2-D sum is the outer product of these)."""
    norm_y = np.zeros(plan.covered_h, np.float32)
    norm_x = np.zeros(plan.covered_w, np.float32)
    for iy in range(plan.ny):
        norm_y[iy * plan.stride : iy * plan.stride + plan.out_size] += profile
    for ix in range(plan.nx):
        norm_x[ix * plan.stride : ix * plan.stride + plan.out_size] += profile
    return norm_y, norm_x


def _tile_probabilities(model: UNet, batch: np.ndarray, device: torch.device, precision: str,
                        memory_format: torch.memory_format, margin: int) -> np.ndarray:
    """A batch of input tiles (B, C, H, W) -> their foreground probabilities (B, h, w), or an
    affinity model's sigmoids (B, C, h, w), without the discarded margin."""
    x_t = to_network_input(torch.from_numpy(batch).to(device)).contiguous(memory_format=memory_format)
    with autocast_for(device, precision):
        logits = model(x_t)
    prob = torch.sigmoid(logits.float()) if model.cfg.offsets else torch.softmax(logits.float(), dim=1)[:, 1]
    if margin:
        prob = prob[..., margin:-margin, margin:-margin]
    return prob.cpu().numpy()


def _per_pass(device: torch.device, batch_size: int) -> int:
    """Tiles per forward pass: ``batch_size`` on a GPU, one on a CPU. A CPU is bound by memory
    traffic here, and a batch's activations spill out of its caches: four 320 px tiles at once
    ran 1.3x slower than one at a time (fp32 and bf16, 2-core AMD Zen 5, docs/volumes.md), with
    the same values, since every tile's output depends on that tile alone."""
    return 1 if device.type == "cpu" else batch_size


@torch.no_grad()
def predict_region(model: UNet, read: Callable[[slice, slice], list[np.ndarray]], shape: tuple[int, int],
                   region: tuple[int, int, int, int], tile: int = 388, overlap: float = 0.0, batch_size: int = 4,
                   blend: str = "gaussian", margin: int = 32, precision: str = "fp32",
                   device: torch.device | str | None = None, out: np.ndarray | None = None, progress: bool = False
                   ) -> np.ndarray:
    """The probabilities of the rows ``y0:y1`` and columns ``x0:x1`` (``region``) of an image of
    ``shape`` that :func:`predict_image` of the whole image gives: the same tiles of the whole
    image's grid, blended the same way, so that an image predicted region by region (a volume
    too large for memory, in blocks) equals the image predicted at once.

    ``read(rows, cols)`` returns the input channels' float32 pixels of a rectangle of the image
    (slices within the image); only the rectangle that the region's tiles need is read.

    Args:
        tile: requested output window side; the nearest size the network accepts is used.
        overlap: share of a tile that its neighbour overlaps (0 = tiles just touch).
        batch_size: tiles per forward pass on a GPU; bounds memory. A CPU takes one tile per
            pass, which gives the same values sooner (see ``_per_pass``).
        blend: 'gaussian' or 'uniform' weighting of overlapping tiles.
        margin: for same-padded nets, mirrored context discarded around each tile.
        precision: 'fp32', 'bf16' or 'fp16' autocast.
        out: optional float32 array of the result's shape to write the result into.
        progress: show a bar over the tiles when there are many (large images).

    An affinity model's result has a channel per offset first: (C, rows, columns), sigmoids.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    inference_layout(model)
    (h, w), (y0, y1, x0, x1) = shape, region
    plan = plan_tiles(model, h, w, tile, overlap, margin)
    out = _zeroed(out, len(model.cfg.offsets), region)
    profile = _profile(plan.out_size, blend)
    weight = np.outer(profile, profile)
    norm_y, norm_x = _blend_sums(plan, profile)
    origins, rows, cols = _tiles_reaching(plan, shape, region)
    if not origins:
        return out
    top, left = min(r.min() for r in rows), min(c.min() for c in cols)
    planes = read(slice(top, max(r.max() for r in rows) + 1), slice(left, max(c.max() for c in cols) + 1))
    memory_format = torch.channels_last if device.type == "cpu" else torch.contiguous_format
    bar = progress_bar(len(origins), desc="tiles", unit="tile", enabled=progress and len(origins) >= 64, transient=True)
    per_pass = _per_pass(device, batch_size)
    for start in range(0, len(origins), per_pass):
        chunk = range(start, min(start + per_pass, len(origins)))
        bar.update(len(chunk))
        windows = [np.ix_(rows[i] - top, cols[i] - left) for i in chunk]
        batch = np.stack([np.stack([p[window] for p in planes]) for window in windows]).astype(np.float32, copy=False)
        prob = _tile_probabilities(model, batch, device, precision, memory_format, plan.margin)
        for i, p in zip(chunk, prob):
            _add_tile(out, p * weight, origins[i], shape, region)
    bar.close()
    out /= norm_y[y0:y1, None]
    out /= norm_x[None, x0:x1]
    return out
