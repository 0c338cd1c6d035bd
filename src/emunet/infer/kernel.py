"""The one prediction kernel: a region of one section of a stack, before post-processing.

Every way of predicting calls it: whole stacks in memory (``predict_raw``: each section as one
region), volumes block by block (``blockwise.predict_block``: a block and its halo), and so
validation, ``evaluate``, the napari widget and ``Segmenter`` through them. What it does once for
all of them: each model reads its neighbouring sections (2.5-D models), mirrored at the stack's
ends as tiles are at image borders; test-time turns where ``predict.tta`` is set; an ensemble's
mean. A region equals the same pixels of the section predicted whole (``tiling.predict_region``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ..config import PredictConfig
from ..errors import CheckpointError
from ..io.data import mirror_index
from ..model.unet import UNet
from .tiling import predict_region
from .tta import predict_region_tta

__all__ = ["model_context", "predict_section_region"]

# read(z, rows, cols): rows and columns of section z of the stack, as (H', W') grey in [0, 1]
SectionReader = Callable[[int, slice, slice], np.ndarray]


def model_context(model: UNet) -> int:
    """Neighbouring sections on each side that ``model`` takes as extra input channels
    (0 for a 2-D model, k for a 2.5-D model with 2k + 1 input channels)."""
    channels = model.cfg.in_channels
    if channels % 2 == 0:
        raise CheckpointError(f"a model with {channels} input channels is neither 2-D (1) nor 2.5-D (2k + 1 sections)")
    return (channels - 1) // 2


def predict_section_region(models: Sequence[UNet], read: SectionReader, sections: int, z: int, shape: tuple[int, int],
                           region: tuple[int, int, int, int], pcfg: PredictConfig, precision: str, out: np.ndarray,
                           progress: bool = False) -> np.ndarray:
    """The raw probabilities (or an affinity model's affinities) of ``region`` (y0, y1, x0, x1)
    of section ``z`` of a stack of ``sections`` sections of ``shape``, written into ``out``;
    several models: their mean, at the cost of one more region-sized buffer."""
    settings = pcfg.tiling(precision)
    extra = np.empty_like(out) if len(models) > 1 else None
    for k, model in enumerate(models):
        context = model_context(model)
        neighbours = mirror_index(z - context, 2 * context + 1, sections).tolist()
        read_planes = lambda rows, cols, s=neighbours: [read(j, rows, cols) for j in s]  # noqa: E731
        target = out if k == 0 else extra
        if pcfg.tta:
            target[...] = predict_region_tta(model, read_planes, shape, region, **settings)
        else:
            predict_region(model, read_planes, shape, region, out=target, progress=progress, **settings)  # no second copy
        if k:
            out += extra
    if len(models) > 1:
        out /= len(models)
    return out
