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
from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..errors import CheckpointError, DataError
from ..io.data import Volume, mirror_index
from ..model.unet import UNet, to_network_input
from .kernel import model_context

__all__ = ["ADAPT_TILES", "ADAPT_SECTIONS", "evenly_spaced", "adapted_to", "adapted_to_lazy", "norm_statistics", "with_norm_statistics"]

ADAPT_TILES = 128  # windows of 256 x 256: 8 megapixels, a few seconds on a 2-core CPU (docs/transfer.md)
ADAPT_SECTIONS = 8  # sections of a volume (or a napari layer) the windows are drawn from, evenly spaced
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


Read = Callable[[int, int, int, int], np.ndarray]  # (z, top, left, side) -> (side, side) scaled pixels


def _windows(read: Read, depth: int, sections: Sequence[int], shape: tuple[int, int], side: int, context: int,
             count: int) -> np.ndarray:
    """``count`` random (2 * context + 1, side, side) windows of the ``sections`` (indices into a
    stack of ``depth`` sections of ``shape``; the neighbouring sections as a 2.5-D model reads
    them), the same every run."""
    rng = np.random.default_rng(0)
    height, width = shape
    out = np.empty((count, 2 * context + 1, side, side), np.float32)
    for k in range(count):
        z = sections[int(rng.integers(len(sections)))]
        top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
        for c, near in enumerate(mirror_index(z - context, 2 * context + 1, depth)):
            out[k, c] = read(int(near), top, left, side)
    return out


def _adapt_one(model: UNet, read: Read, depth: int, sections: Sequence[int], shape: tuple[int, int], source: str,
               tiles: int) -> UNet:
    if not _batch_norms(model):
        raise CheckpointError("--adapt-norm: the model has no batch-norm layers to re-estimate "
                              f"(its norm is {model.cfg.norm!r}); predict without it")
    side = _tile_side(model, *shape, source)
    windows = _windows(read, depth, sections, shape, side, model_context(model), tiles)
    adapted = copy.deepcopy(model)
    for norm in _batch_norms(adapted):
        norm.reset_running_stats()
        norm.momentum = None  # a plain average over the batches below, not a moving one
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
    read = lambda z, top, left, side: volume.stack[z][top : top + side, left : left + side]  # noqa: E731
    return [_adapt_one(m, read, len(volume.stack), volume.z, volume.images.shape[-2:], str(volume.source), tiles)
            for m in models]


def evenly_spaced(count: int, most: int = ADAPT_SECTIONS) -> list[int]:
    """Up to ``most`` of the indices 0 .. count - 1, evenly spaced, the first and last among them."""
    return sorted({int(i) for i in np.linspace(0, count - 1, min(most, count))})


def adapted_to_lazy(models: Sequence[UNet], volume, tiles: int = ADAPT_TILES) -> list[UNet]:
    """:func:`adapted_to` for a volume read on demand (:class:`..io.volumes.LazyVolume`): windows
    of :func:`evenly_spaced` sections, read window by window, never whole."""
    depth, height, width = volume.shape
    sections = evenly_spaced(depth)
    read = lambda z, top, left, side: volume.read(z, slice(top, top + side), slice(left, left + side))  # noqa: E731
    return [_adapt_one(m, read, depth, sections, (height, width), str(volume.source), tiles) for m in models]


def norm_statistics(models: Sequence[UNet]) -> dict[str, torch.Tensor]:
    """The batch-norm statistics of ``models`` by name (``{i}.{layer}.running_mean``, ...), to store."""
    return {f"{i}.{name}": buffer.detach().cpu().clone() for i, model in enumerate(models)
            for name, buffer in model.named_buffers() if name.endswith(("running_mean", "running_var"))}


def with_norm_statistics(models: Sequence[UNet], stats: dict[str, torch.Tensor]) -> list[UNet]:
    """Copies of ``models`` carrying the stored :func:`norm_statistics`."""
    out = []
    for i, model in enumerate(models):
        adapted = copy.deepcopy(model)
        buffers = dict(adapted.named_buffers())
        for name, buffer in buffers.items():
            if name.endswith(("running_mean", "running_var")):
                buffer.copy_(stats[f"{i}.{name}"])
        out.append(adapted.eval())
    return out
