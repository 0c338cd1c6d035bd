"""Test-time adaptation: a model's batch-norm statistics re-estimated on the images it predicts.

A network trained on one microscope normalises each layer by the mean and variance that layer
had on that microscope's images. On another stack (other contrast, noise, membrane thickness)
the same layers see other statistics, and every later layer reads features off the scale it
learnt (AdaBN; Li et al. 2016). Re-estimating the statistics on the new images, with the weights
untouched, puts the features back on it. Measured in docs/transfer.md: the ISBI membrane model on
VNC stack 1, and a VNC model on ISBI, both gain; on its own stack it costs a little.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch

from ..errors import CheckpointError, DataError
from ..io.data import Volume, mirror_index
from ..model.unet import UNet, to_network_input
from .kernel import model_context

__all__ = ["ADAPT_TILES", "adapted_to"]

ADAPT_TILES = 128  # 256 x 256 tiles (8 megapixels): the estimate moves by < 1 % beyond this
_TILE = 256
_BATCH = 8


def _batch_norms(model: UNet) -> list[torch.nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def _tile_side(model: UNet, height: int, width: int, source: str) -> int:
    """The largest side up to 256 that fits the images and that the network takes."""
    for side in range(min(_TILE, height, width), 0, -1):
        try:
            model.output_size(side)
            return side
        except ValueError:
            continue
    raise DataError(f"{source}: images of {height} x {width} are too small to re-estimate the batch-norm statistics "
                    "on (--adapt-norm); predict without it")


def _tiles(volume: Volume, side: int, context: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` random (2 * context + 1, side, side) windows of the volume's sections (the
    neighbouring sections as a 2.5-D model reads them)."""
    depth, (height, width) = len(volume.stack), volume.images.shape[-2:]
    out = np.empty((count, 2 * context + 1, side, side), np.float32)
    for k in range(count):
        i = int(rng.integers(len(volume)))
        top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
        for c, z in enumerate(mirror_index(volume.z[i] - context, 2 * context + 1, depth)):
            out[k, c] = volume.stack[z][top : top + side, left : left + side]
    return out


def _adapt_one(model: UNet, volume: Volume, tiles: int) -> UNet:
    norms = _batch_norms(model)
    if not norms:
        raise CheckpointError("--adapt-norm: the model has no batch-norm layers to re-estimate "
                              f"(its norm is {model.cfg.norm!r}); predict without it")
    height, width = volume.images.shape[-2:]
    side = _tile_side(model, height, width, str(volume.source))
    adapted = copy.deepcopy(model)
    for norm in _batch_norms(adapted):
        norm.reset_running_stats()
        norm.momentum = None  # a plain average over the batches below, not a moving one
    rng = np.random.default_rng(0)  # the same tiles every run: the same predictions
    windows = _tiles(volume, side, model_context(model), tiles, rng)
    parameter = next(adapted.parameters())
    adapted.train()
    with torch.no_grad():
        for start in range(0, tiles, _BATCH):
            batch = torch.from_numpy(windows[start : start + _BATCH]).to(parameter.device)
            adapted(to_network_input(batch).contiguous(memory_format=_layout(parameter)))
    return adapted.eval()


def _layout(parameter: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if parameter.dim() == 4 and parameter.is_contiguous(memory_format=torch.channels_last) \
        else torch.contiguous_format


def adapted_to(models: UNet | Sequence[UNet], volume: Volume, tiles: int = ADAPT_TILES) -> list[UNet]:
    """Copies of ``models`` whose batch-norm statistics are those of ``volume``'s images (at the
    pixel size the models predict them at), from ``tiles`` random windows; the weights and the
    given models are untouched."""
    models = [models] if isinstance(models, UNet) else list(models)
    return [_adapt_one(m, volume, tiles) for m in models]
