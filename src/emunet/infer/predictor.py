"""The one way from images to maps and cells: a :class:`Predictor` holds the models (one, or an
ensemble), their prediction and segmentation settings, the precision and the input scaling the
models were trained with. ``unet predict`` and ``evaluate``, validation during training, the
test prediction of ``run`` and ``cv``, the blockwise volume workers and the Python API
(:class:`Segmenter`) all predict through it, so they cannot drift apart."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import Config, PredictConfig, SegmentConfig, with_overrides
from ..errors import DataError
from ..io.address import Address
from ..io.data import Intensity, Volume, read_images, volume_of_arrays
from ..model.unet import UNet
from .adapt import adapted_to
from .predict import Prediction, SegmentedFile, at_model_pixel_size, load_models, predict_stack, segment_file

__all__ = ["Predictor", "Segmenter"]


@dataclass
class Predictor:
    """Models and everything that decides what they predict.

    Attributes:
        models: predicted together (an ensemble: the mean of their maps).
        settings: tiling, flips, blur and gap closing (``predict.*``).
        segment: how maps become cells (``segment.*``).
        precision: 'fp32', 'bf16' or 'fp16', already chosen for the device.
        intensity: how the training images were scaled (new images are scaled alike); None: by
            their own range.
        channel: the channel read from multi-channel images.
        paths: the checkpoints the models came from (for messages and the blockwise workers).
        step: the training step of the first checkpoint.
        config: the run's settings that came with the first checkpoint.
    """

    models: list[UNet]
    settings: PredictConfig
    segment: SegmentConfig
    precision: str
    intensity: Intensity | None = None
    channel: int | None = None
    paths: list[str | Path] = field(default_factory=list)
    step: int | None = None
    config: Config = field(default_factory=Config)

    @classmethod
    def load(cls, checkpoints: str | Path | Sequence[str | Path], device: str | torch.device = "auto",
             precision: str = "auto", overrides: Sequence[str] = ()) -> Predictor:
        """Load checkpoints (several: an ensemble) with the settings of the run that wrote the
        first, changed by ``overrides`` (``predict.tile=512``, ``segment.min_size=0``, ...)."""
        from ..device import resolve_device, resolve_precision

        paths = [checkpoints] if isinstance(checkpoints, (str, Path)) else list(checkpoints)
        device = resolve_device(device) if isinstance(device, str) else device
        loaded = load_models(paths, device)
        config = with_overrides(loaded.config, list(overrides))
        return cls(loaded.models, config.predict, config.segment, resolve_precision(precision, device), loaded.intensity,
                   config.data.channel, list(loaded.paths), loaded.step, config)

    @classmethod
    def of_run(cls, models: UNet | Sequence[UNet], cfg: Config, precision: str, intensity: Intensity | None) -> Predictor:
        """The models of a run being trained (validation, the test prediction of run and cv)."""
        models = [models] if isinstance(models, UNet) else list(models)
        return cls(models, cfg.predict, cfg.segment, precision, intensity, cfg.data.channel, config=cfg)

    @property
    def model_pixel_size(self) -> float | None:
        """The pixel size (nm) the models were trained at, where their run says (data.pixel_size)."""
        return self.config.data.pixel_size

    def read(self, images: str | Path | np.ndarray) -> Volume:
        """Images as the models see them: read from a path, or raw pixels (H, W) or (N, H, W)."""
        if isinstance(images, (str, Path)):
            return read_images(images, channel=self.channel, intensity=self.intensity)
        raw = np.asarray(images)
        if not hasattr(images, "dtype"):
            raw = _as_model_pixels(raw, self.intensity)
        stack = raw[None] if raw.ndim == 2 else raw
        if stack.ndim != 3:
            raise DataError(f"expected an (H, W) image or an (N, H, W) stack of raw pixels, got shape {raw.shape}")
        if raw.ndim == 3 and raw.shape[-1] in (3, 4) and min(raw.shape[:2]) > 4:
            # a colour image and a stack of 3-pixel-wide slices look alike; guessing could be wrong
            raise DataError(f"an array of shape {raw.shape} looks like an {'RGB' if raw.shape[-1] == 3 else 'RGBA'} image; "
                            "give one grey channel (e.g. image[..., 0] or image.mean(axis=-1)), or slices as (N, H, W)")
        return volume_of_arrays(stack, self.intensity)

    def adapted(self, volume: Volume) -> Predictor:
        """This predictor with its models' batch-norm statistics re-estimated on ``volume`` (at the
        models' pixel size), once, for predictions made piece by piece (napari's slices) that
        should share one adaptation; ``predict.adapt_norm`` is then off (it is done)."""
        at_model_scale = at_model_pixel_size(volume, self.settings, self.model_pixel_size)[1]
        return replace(self, models=adapted_to(self.models, at_model_scale),
                       settings=replace(self.settings, adapt_norm=False))

    def predict(self, volume: Volume, progress: bool = False) -> Prediction:
        """The post-processed map of every slice (and an affinity model's affinities)."""
        return predict_stack(self.models, volume, self.settings, self.precision, progress, self.model_pixel_size)

    def cells_of(self, prediction: Prediction) -> np.ndarray:
        return prediction.cells(self.segment)

    def write(self, source: str | Path, output: Address | str | Path, cells: Address | str | Path | None = None,
              masks: Path | None = None, overlays: Path | None = None, overwrite: bool = False,
              progress: bool = True) -> SegmentedFile:
        """Predict the images at ``source`` and write the map (and cells, masks, overlays)."""
        return segment_file(self.models, source, output, self.settings, self.precision, masks, overlays, progress,
                            self.channel, self.intensity, cells, self.segment, overwrite, self.model_pixel_size)

    def __call__(self, images: str | Path | np.ndarray, progress: bool = False) -> np.ndarray:
        """Cell-interior probabilities, float32, shaped as the input ((H, W) for one image)."""
        return _shaped_as(images, self.predict(self.read(images), progress).probs)

    def cells(self, images: str | Path | np.ndarray, progress: bool = False) -> np.ndarray:
        """The cells, as ``unet predict --segment`` writes them: uint32 labels, each id one cell,
        shaped as the input (napari: ``viewer.add_labels(segment.cells(image))``)."""
        return _shaped_as(images, self.cells_of(self.predict(self.read(images), progress)))


class Segmenter(Predictor):
    """The command line's prediction as a Python object: the same models, scaling, tiling and
    post-processing as ``unet predict``.

    >>> from emunet import Segmenter
    >>> segment = Segmenter("runs/isbi-cpu/best.safetensors")            # or several: an ensemble
    >>> prob = segment("../shared/data/isbi2012/test-volume.tif")         # (30, 512, 512), 1 = interior
    >>> prob = segment(raw_uint8_slice)                                  # (H, W) raw pixels, any size
    >>> cells = segment.cells(raw_uint8_slice)                           # (H, W) uint32, each id one cell

    Arrays are raw pixel values (uint8, uint16, float, ...), scaled as the model's training images
    were; ``overrides`` are ``predict.*`` settings (``tile=512``, ``close_gaps=0``, ...).
    """

    def __init__(self, checkpoints: str | Path | Sequence[str | Path], device: str = "auto", precision: str = "auto",
                 **overrides: Any) -> None:
        loaded = Predictor.load(checkpoints, device, precision, [f"predict.{k}={v}" for k, v in overrides.items()])
        super().__init__(**{f: getattr(loaded, f) for f in Predictor.__dataclass_fields__})


def _as_model_pixels(raw: np.ndarray, intensity: Intensity | None) -> np.ndarray:
    """Nested lists carry no pixel type (NumPy makes integers int64): integers that fit the type
    the model's scaling was chosen for are taken as that type, so they are scaled as the model's
    training images were rather than by their own range."""
    wanted = np.dtype(intensity.dtype) if intensity is not None and intensity.dtype else None
    if wanted is None or raw.dtype.kind not in "iu" or wanted.kind not in "iu" or not raw.size:
        return raw
    info = np.iinfo(wanted)
    return raw.astype(wanted) if info.min <= raw.min() and raw.max() <= info.max else raw


def _shaped_as(images: Any, stack: np.ndarray) -> np.ndarray:
    """A result stack shaped as the input: one (H, W) page for one (H, W) image, whether it came
    as a NumPy array, a tensor or nested lists."""
    return stack[0] if not isinstance(images, (str, Path)) and np.ndim(images) == 2 else stack
