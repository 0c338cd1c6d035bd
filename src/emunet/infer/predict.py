"""Prediction, one home for it: load one model or an ensemble, predict a volume slice by slice
(overlap-tile, optional flips and turns), post-process, and write the results atomically.

The probability stack is float32 with 1 = foreground (cell interior) and 0 = membrane, the
ISBI 2012 submission convention. Binary masks (0/255 PNG) and overlays (membrane in red over
the image) are optional, for people who would rather look than read.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..model.affinities import Offsets, interior_from_affinities
from ..model.bundled import is_model_name
from ..model.checkpoint import Checkpoint, load
from ..config import Config, PredictConfig, run_settings
from ..device import usable_cores
from ..io.data import Intensity, Volume, read_each, read_images
from ..errors import CheckpointError, DataError, ImageSizesDiffer
from ..io.address import Address, parse_address
from ..io.writers import write_cells, write_masks, write_overlays, write_probabilities
from ..model.unet import UNet
from .postprocess import close_gaps_in_place, smooth_in_place
from ..progress import progress_bar
from .segment import SegmentConfig, segment_stack
from ..io.storage import is_url
from .rescale import resized, scale_factor, to_model_scale
from .kernel import model_context, predict_section_region
from .adapt import adapted_to

__all__ = [
    "model_context",
    "LoadedModels",
    "load_models",
    "predict_raw",
    "Prediction",
    "predict_stack",
    "at_model_pixel_size",
    "prediction_from_raw",
    "postprocess_volume",
    "predict_volume",
    "SegmentedFile",
    "segment_file",
]


@dataclass
class LoadedModels:
    """Checkpoints to predict with together (their probabilities are averaged), and the settings
    of the run that wrote the first one (defaults where it carries none)."""

    checkpoints: list[Checkpoint]
    config: Config

    @property
    def models(self) -> list[UNet]:
        return [c.network for c in self.checkpoints]

    @property
    def paths(self) -> list[str | Path]:
        """As given: a path, a URL or a bundled model's name."""
        return [c.given for c in self.checkpoints]

    @property
    def step(self) -> int | None:
        return self.checkpoints[0].step

    @property
    def intensity(self) -> Intensity | None:
        """How the first run scaled its training images, where its checkpoint records it."""
        return self.checkpoints[0].intensity


def load_models(paths: Sequence[str | Path], device: torch.device) -> LoadedModels:
    """Load each checkpoint (eval mode) on ``device``; the run config comes from the first."""
    paths = [p if is_url(p) or is_model_name(p) else Path(p) for p in paths]  # a URL keeps its // (Path would fold it)
    loaded = [load(path, device) for path in paths]  # a bundled model's name: its shipped file
    for checkpoint in loaded:
        try:
            model_context(checkpoint.network)
        except CheckpointError as exc:
            raise CheckpointError(f"{checkpoint.given}: {exc}") from None
    return LoadedModels(loaded, run_settings(loaded[0]))


def predict_raw(
    models: UNet | Sequence[UNet], volume: Volume, pcfg: PredictConfig, precision: str = "fp32", progress: bool = False
) -> np.ndarray:
    """Foreground probabilities (N, H, W) float32 of every slice by overlap-tile prediction,
    before post-processing, or an affinity model's affinities (N, C, H, W); for several models
    (an ensemble) the mean of theirs, which costs one more slice-sized buffer."""
    models = [models] if isinstance(models, UNet) else list(models)
    if not models:
        raise ValueError("predict_raw needs at least one model")
    offsets = models[0].cfg.offsets
    if any(m.cfg.offsets != offsets for m in models):
        raise CheckpointError("an ensemble's models must share one head (membrane, or affinities with the same offsets)")
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    n, h, w = volume.images.shape
    out = np.empty((n, *((len(offsets), h, w) if offsets else (h, w))), np.float32)
    slices = progress_bar(desc="predict", unit="slice", enabled=progress, items=range(len(volume)), transient=True)
    read = lambda z, rows, cols: volume.stack[z][rows, cols]  # noqa: E731  (views: no copy)
    for i in slices:
        predict_section_region(models, read, len(volume.stack), volume.z[i], (h, w), (0, h, 0, w), pcfg, precision,
                               out=out[i], progress=progress)
    for m, mode in zip(models, modes):
        m.train(mode)
    return out


def postprocess_volume(probs: np.ndarray, pcfg: PredictConfig) -> np.ndarray:
    """Blur each slice by ``pcfg.smooth``, then close wall gaps by ``pcfg.close_gaps``, in place:
    the gap closing reads the blurred map, whose walls are smoother. Sections (or one section's
    closing windows) run side by side on the cores, each as it would alone: the same result."""
    cores = usable_cores()
    windows = cores if len(probs) == 1 else 1  # one section: its closing windows side by side; several: the sections

    def one_page(page: np.ndarray) -> None:
        smooth_in_place(page, pcfg.smooth)
        close_gaps_in_place(page, pcfg.close_gaps, workers=windows)

    with ThreadPoolExecutor(max(1, min(len(probs), cores))) as pool:
        list(pool.map(one_page, probs))
    return probs


@dataclass
class Prediction:
    """A stack's prediction: the cell-interior map (N, H, W) that is written and scored as a map
    (for an affinity model, :func:`affinities.interior_from_affinities`), and an affinity
    model's affinities (N, C, H, W) with their offsets, which its cells come from."""

    probs: np.ndarray
    affinities: np.ndarray | None = None
    offsets: Offsets | None = None
    at_model_scale: Prediction | None = None  # where the images' pixel size was not the model's

    def cells(self, cfg: SegmentConfig, warn: bool = True) -> np.ndarray:
        """Instance labels (N, H, W) uint32: the mutex watershed of the affinities, or the seeded
        watershed of the membrane head's map (``warn``: name slices where that failed).

        Where the images were predicted at another pixel size, the membrane head's cells are cut
        on the images' own grid, from the map that is written, not cut at the model's size and
        resized: nearest-neighbour resizing of its label images split cells along their jagged
        borders (on a 4.6 nm stack, cells V_rand 0.938 against 0.961 from the same map;
        docs/transfer.md). An affinity model's cells are cut at the model's size, where its
        offsets are in pixels, and resized (there that scored 0.006 above the other way)."""
        there = self.at_model_scale
        if there is None or there.affinities is None:
            return segment_stack(self.probs, self.affinities, self.offsets, cfg, warn)
        return resized(there.cells(cfg, warn), self.probs.shape[-2:], order=0)


def at_model_pixel_size(volume: Volume, pcfg: PredictConfig, model_pixel_size: float | None) -> tuple[float, Volume]:
    """How much larger the images' pixels are than the model's, and the images resized to the
    model's pixel size (the volume itself where they are the same)."""
    factor = scale_factor(volume, pcfg.pixel_size, model_pixel_size)
    return factor, (volume if factor == 1.0 else to_model_scale(volume, factor))


def predict_stack(
    models: UNet | Sequence[UNet], volume: Volume, pcfg: PredictConfig, precision: str = "fp32", progress: bool = False,
    model_pixel_size: float | None = None,
) -> Prediction:
    """What is written and scored: :func:`predict_raw` (the mean of several models' maps:
    independently trained models disagree on the ambiguous membranes, and their average is
    steadier than any one of them), then :func:`postprocess_volume`; an affinity model's
    affinities as they are, with the interior map made from them. Images whose pixel size is not
    ``model_pixel_size`` (nm) are predicted at it and the map resized back. ``pcfg.adapt_norm``:
    the models' batch-norm statistics re-estimated on these images first (infer/adapt.py)."""
    offsets = (models if isinstance(models, UNet) else models[0]).cfg.offsets
    factor, at_model_scale = at_model_pixel_size(volume, pcfg, model_pixel_size)
    if pcfg.adapt_norm:
        models = adapted_to(models, at_model_scale)
    there = prediction_from_raw(predict_raw(models, at_model_scale, pcfg, precision, progress), offsets, pcfg)
    if factor == 1.0:
        return there
    return Prediction(resized(there.probs, volume.images.shape[-2:], order=1), None, offsets, there)


def prediction_from_raw(raw: np.ndarray, offsets: Offsets, pcfg: PredictConfig) -> Prediction:
    """:func:`predict_raw`'s output as a :class:`Prediction` (the membrane head's map
    post-processed in place)."""
    if offsets:
        return Prediction(interior_from_affinities(raw, offsets), raw, offsets)
    return Prediction(postprocess_volume(raw, pcfg))


def predict_volume(
    models: UNet | Sequence[UNet], volume: Volume, pcfg: PredictConfig, precision: str = "fp32", progress: bool = False
) -> np.ndarray:
    """The cell-interior probabilities (N, H, W) of :func:`predict_stack`."""
    return predict_stack(models, volume, pcfg, precision, progress).probs


@dataclass
class SegmentedFile:
    """What :func:`segment_file` wrote: the slices predicted, the time it took, a line per output."""

    count: int
    seconds: float
    written: list[str]


def segment_file(
    models: UNet | Sequence[UNet],
    input_path: str | Path,
    output: Address | str | Path,
    pcfg: PredictConfig,
    precision: str,
    masks: Path | None = None,
    overlays: Path | None = None,
    progress: bool = True,
    channel: int | None = None,
    intensity: Intensity | None = None,
    cells: Address | str | Path | None = None,
    segment: SegmentConfig | None = None,
    overwrite: bool = False,
    model_pixel_size: float | None = None,
) -> SegmentedFile:
    """Read images, predict and post-process them, write the probabilities (and masks, overlays
    and cells where asked). ``output`` is a TIFF or an HDF5 dataset for one stack of same-sized
    images, or a folder for one TIFF per image, of any sizes. ``cells``: the instance labels
    (segmented as ``segment`` says) as a uint32 TIFF, HDF5 dataset or OME-Zarr for a stack, a
    folder of TIFFs for a folder. Images whose pixel size differs from ``model_pixel_size`` are
    predicted at the model's (``predict.pixel_size``). The caller checks the outputs first (:func:`writers.check_outputs`)."""
    segment = segment or SegmentConfig()
    output = output if isinstance(output, Address) else parse_address(str(output), what="-o output")
    cells = cells if isinstance(cells, Address) or cells is None else parse_address(str(cells), what="cells output")
    if output.is_folder:
        return _segment_each(models, input_path, output.path, pcfg, precision, masks, overlays, progress, channel,
                             intensity, cells.path if cells else None, segment, model_pixel_size)
    try:
        volume = read_images(input_path, channel=channel, intensity=intensity)
    except ImageSizesDiffer as exc:
        raise DataError(f"{exc}; to predict images of different sizes give a folder as -o (one TIFF each)") from None
    start = time.perf_counter()
    prediction = predict_stack(models, volume, pcfg, precision, progress, model_pixel_size)
    probs = prediction.probs
    labels = prediction.cells(segment) if cells else None
    seconds = time.perf_counter() - start
    shape = f"{probs.shape[0]} x {probs.shape[1]} x {probs.shape[2]}"
    where = write_probabilities(output, probs, volume, overwrite)
    written = [f"{where}: {shape} float32 probabilities (1 = cell interior){', HDF5' if output.format == 'hdf5' else ''}"]
    if labels is not None:
        where = write_cells(cells, labels, volume, overwrite)
        written.append(f"{where}: {shape} uint32 cells ({_cells_made_by(prediction)}), {_cell_count(labels, segment)}")
    written += _write_pictures(volume, probs, masks, overlays)
    return SegmentedFile(len(volume), seconds, written)


def _cell_count(labels: np.ndarray, segment: SegmentConfig) -> str:
    if segment.link_sections:  # ids run 1..m over the stack
        return f"{int(labels.max())} objects across sections"
    return f"{labels.reshape(len(labels), -1).max(axis=1).mean():.0f} per slice, ids per slice"  # 1..n in each


def _cells_made_by(prediction: Prediction) -> str:
    return "mutex watershed of the affinities" if prediction.offsets else "seeded watershed of the map"


def _write_pictures(volume: Volume, probs: np.ndarray, masks: Path | None, overlays: Path | None) -> list[str]:
    written = []
    if masks:
        write_masks(masks, volume, probs)
        written.append(f"{masks}: {len(volume)} masks")
    if overlays:
        write_overlays(overlays, volume, probs)
        written.append(f"{overlays}: {len(volume)} overlays")
    return written


def _segment_each(models, input_path, output: Path, pcfg: PredictConfig, precision: str, masks, overlays, progress: bool,
                  channel: int | None, intensity: Intensity | None, cells: Path | None, segment: SegmentConfig,
                  model_pixel_size: float | None = None) -> SegmentedFile:
    """One probability TIFF per image into the folder ``output``, each image at its own size
    (and one cells TIFF per image into the folder ``cells``)."""
    models = [models] if isinstance(models, UNet) else list(models)
    if any(model_context(m) for m in models):
        raise DataError(f"{output}: a 2.5-D model reads neighbouring sections of one stack; give a .tif as -o")
    volumes = read_each(input_path, channel, intensity)
    start = time.perf_counter()
    for volume in progress_bar(desc="predict", unit="image", enabled=progress, items=volumes):
        prediction = predict_stack(models, volume, pcfg, precision, model_pixel_size=model_pixel_size)
        write_probabilities(parse_address(output / f"{volume.names[0]}.tif"), prediction.probs, volume)
        if cells:
            write_cells(parse_address(cells / f"{volume.names[0]}.tif"), prediction.cells(segment), volume)
        _write_pictures(volume, prediction.probs, masks, overlays)
    written = [f"{output}: {len(volumes)} float32 probability {_plural(len(volumes), 'TIFF')} (1 = cell interior), one per image"]
    if cells:
        written.append(f"{cells}: {len(volumes)} uint32 cell {_plural(len(volumes), 'TIFF')}, one per image")
    written += [f"{folder}: {len(volumes)} {kind}" for folder, kind in ((masks, "masks"), (overlays, "overlays")) if folder]
    return SegmentedFile(len(volumes), time.perf_counter() - start, written)


def _plural(n: int, word: str) -> str:
    return word if n == 1 else word + "s"
