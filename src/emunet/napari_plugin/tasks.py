"""What the napari widget does, without Qt: check a layer, segment its slices one at a time
(so progress and cancel work between slices), and turn painted layers into a fine-tuning run.
Each function takes arrays and plain values and returns arrays, so tests can call them and
compare with ``unet predict``."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import EmunetError
from ..infer.predict import model_context
from ..infer.predictor import Predictor

__all__ = ["LayerError", "stack_of", "Segmented", "segment_slices", "training_masks", "fine_tune"]


class LayerError(EmunetError):
    """A layer the widget cannot use, said in one sentence."""


def stack_of(name: str | None, data, rgb: bool = False) -> np.ndarray | None:
    """A layer's pixels as (N, H, W) raw values (level 0 of a multiscale layer), refused with
    one sentence where they are not grey 2-D images or a stack of them."""
    if name is None:
        raise LayerError("Open an image first, or choose an image layer.")
    if rgb:
        raise LayerError(f"The layer '{name}' is RGB; EM images are grey: split its channels (right click > "
                         "Split RGB) and choose one.")
    ndim = len(data[0].shape) if isinstance(data, (list, tuple)) else data.ndim
    if ndim not in (2, 3):
        raise LayerError(f"The layer '{name}' has {ndim} dimensions; choose a 2-D image or a stack of sections (Z, Y, X).")
    return data


@dataclass
class Segmented:
    """The widget's results: the cell-interior map and/or the cells of the slices done."""

    probabilities: np.ndarray | None
    cells: np.ndarray | None


def segment_slices(predictor: Predictor, data, slices: range, membranes: bool = True, cells: bool = True,
                   on_slice: Callable[[int, int], None] | None = None, cancel: threading.Event | None = None
                   ) -> Segmented | None:
    """Predict ``slices`` of a layer's data one at a time, as ``unet predict`` predicts them (the
    model's scaling, tiling, post-processing and cells); None when ``cancel`` is set between
    slices. ``data`` may be lazy (a dask or zarr array): only the slices asked are read."""
    if any(model_context(m) for m in predictor.models):
        raise LayerError("This model reads neighbouring sections (2.5-D input); predict its stack with unet predict.")
    height, width = data.shape[-2:]
    if predictor.settings.adapt_norm:  # one adaptation for all the slices, as unet predict adapts to its stack
        predictor = predictor.adapted(predictor.read(_adaptation_sample(data, slices)))
    probs = np.zeros((len(slices), height, width), np.float32) if membranes else None
    labels = np.zeros((len(slices), height, width), np.uint32) if cells else None
    for i, z in enumerate(slices):
        if cancel is not None and cancel.is_set():
            return None
        page = np.asarray(data if data.ndim == 2 else data[z])
        prediction = predictor.predict(predictor.read(page))
        if probs is not None:
            probs[i] = prediction.probs[0]
        if labels is not None:
            labels[i] = predictor.cells_of(prediction)[0]
        if on_slice is not None:
            on_slice(i + 1, len(slices))
    return Segmented(probs, labels)


def _adaptation_sample(data, slices: range) -> np.ndarray:
    """The slices the adaptation reads: :func:`..infer.adapt.evenly_spaced` ones of those asked
    (a lazy layer is not read whole)."""
    from ..infer.adapt import evenly_spaced

    if data.ndim == 2:
        return np.asarray(data)[None]
    return np.stack([np.asarray(data[slices[i]]) for i in evenly_spaced(len(slices))])


def training_masks(labels: np.ndarray, meaning: str) -> np.ndarray:
    """Two-valued masks (255 = cell interior, 0 = membrane) from a labels layer: ``'cells'``,
    each id one cell and 0 membrane (where two cells touch, their border becomes membrane), or
    ``'membranes'``, painted membrane (any id) on unpainted interior."""
    from skimage.segmentation import find_boundaries

    labels = np.asarray(labels)
    stack = labels[None] if labels.ndim == 2 else labels
    if meaning == "membranes":
        return np.where(stack > 0, 0, 255).astype(np.uint8)
    if stack.max() == 0:
        raise LayerError("The labels layer is empty: paint cells (each its own id) or choose 'membranes painted'.")
    interior = np.stack([(page > 0) & ~find_boundaries(page, mode="inner") for page in stack])
    return np.where(interior, 255, 0).astype(np.uint8)


LAYER_SOURCE = "napari://layer/"  # what a fine-tuned run records as its images: the viewer's layers


def fine_tune(start: str | Path, images: np.ndarray, labels: np.ndarray, meaning: str, steps: int, out_dir: str | Path,
              on_step: Callable[[int], bool] | None = None) -> Path | None:
    """Fine-tune ``start`` on an image layer and its labels layer (same shape) for ``steps``
    steps into ``out_dir``; the new weights' path, or None when ``on_step`` said stop."""
    from ..train.finetune import fine_tune_config
    from ..train.loop import TrainingInterrupted, train

    stack = np.asarray(images)
    stack = stack[None] if stack.ndim == 2 else stack
    masks = training_masks(labels, meaning)
    if masks.shape != stack.shape:
        raise LayerError(f"The labels layer is {masks.shape[-2:]} per slice and the image {stack.shape[-2:]}; "
                         "paint labels over the image itself.")
    # the layers train as they are, in memory; the run records where they came from
    cfg = fine_tune_config(start, [f"data.images={LAYER_SOURCE}image", f"data.labels={LAYER_SOURCE}labels",
                                   "data.foreground=255", "data.mask_threshold=null", f"train.steps={steps}"], out_dir)
    try:
        done = train(cfg, progress=False, overwrite=True, on_step=on_step, data=(stack, (masks == 255).astype(np.uint8)))
    except TrainingInterrupted:
        return None
    return done.best_path
