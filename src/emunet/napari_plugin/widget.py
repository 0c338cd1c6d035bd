"""The dock widget: choose a model (bundled, or a checkpoint file), segment the selected image
layer into a membrane map and cells, or fine-tune the model on an image layer and a labels layer.
Work runs in a worker thread with a progress bar and a cancel button; problems are one sentence
in the widget, never a traceback."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
from magicgui.widgets import (CheckBox, ComboBox, Container, FileEdit, FloatSpinBox, Label, ProgressBar, PushButton,
                              SpinBox)
from napari.layers import Image, Labels
from napari.qt.threading import create_worker
from superqt.utils import ensure_main_thread

from ..errors import EmunetError
from ..model.bundled import bundled_models
from ..train.finetune import FINE_TUNE_STEPS
from . import tasks

__all__ = ["EmunetWidget"]

OUTPUTS = ("membranes and cells", "membranes", "cells")


class EmunetWidget(Container):
    """Segment and fine-tune, in one panel that shares the model list."""

    def __init__(self, napari_viewer) -> None:
        self._viewer = napari_viewer
        self._models = list(bundled_models())  # names, then files added by the user or by fine-tuning
        self.model = ComboBox(label="model", choices=lambda _: self._models, tooltip="a bundled model (unet models), or a "
                              "checkpoint chosen below")
        self.checkpoint = FileEdit(label="or a file", filter="*.safetensors *.pt *.ckpt", tooltip="a checkpoint to add")
        self.image = ComboBox(label="image", choices=lambda _: self._layers(Image))
        self.outputs = ComboBox(label="make", choices=OUTPUTS, value=OUTPUTS[0])
        self.slices = ComboBox(label="slices", choices=["all", "current", "visible region"], value="all",
                               tooltip="current: only the slice on screen; visible region: only the part of it on "
                               "screen (for large volumes, read at full resolution)")
        self.pixel_size = FloatSpinBox(label="pixel size (nm)", value=0.0, min=0.0, max=10000.0, step=0.1,
                                       tooltip="the image's pixel size; 0: the model's own (no resizing). Another size "
                                       "is predicted at the model's and resized back")
        self.tta = CheckBox(text="flips and turns (8x slower)", value=False,
                            tooltip="average each slice over its 8 flips and 90-degree turns: smoother walls, "
                            "higher V_rand (docs/results.md)")
        self.adapt = CheckBox(text="adapt to this stack", value=False,
                              tooltip="re-estimate the model's batch-norm statistics on these slices first (weights "
                              "untouched): for images of another microscope than the model's (docs/transfer.md)")
        self.segment_button = PushButton(text="Segment")
        self.labels_layer = ComboBox(label="labels", choices=lambda _: self._layers(Labels))
        self.meaning = ComboBox(label="labels are", choices=["cells", "membranes painted"], value="cells",
                                tooltip="cells: each id one cell, 0 = membrane; membranes painted: any id = membrane")
        self.steps = SpinBox(label="steps", value=FINE_TUNE_STEPS, min=1, max=100000)
        self.save_to = FileEdit(label="save to", mode="d", value=Path.home() / "emunet-fine-tuned")
        self.fine_tune_button = PushButton(text="Fine-tune")
        self.progress = ProgressBar(value=0, min=0, max=1, visible=False)
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.status = Label(value="")
        super().__init__(widgets=[self.model, self.checkpoint, Label(value="<b>Segment</b>"), self.image, self.outputs,
                                  self.slices, self.pixel_size, self.tta, self.adapt, self.segment_button, Label(value="<b>Fine-tune</b>"), self.labels_layer,
                                  self.meaning, self.steps, self.save_to, self.fine_tune_button, self.progress,
                                  self.cancel_button, self.status])
        self._cancel = threading.Event()
        self.worker = None
        self.checkpoint.changed.connect(lambda path: self._add_model(str(path)))
        self.segment_button.clicked.connect(self.start_segmenting)
        self.fine_tune_button.clicked.connect(self.start_fine_tuning)
        self.cancel_button.clicked.connect(self._cancel.set)
        for event in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            event.connect(lambda _: self.reset_choices())
        self.reset_choices()

    def _layers(self, kind) -> list[tuple[str, object]]:
        return [(layer.name, layer) for layer in self._viewer.layers if type(layer) is kind]

    def _add_model(self, path: str) -> None:
        if path and Path(path).is_file():
            if path not in self._models:
                self._models.append(path)
            self.model.reset_choices()
            self.model.value = path

    # --- segmenting ---------------------------------------------------------------------
    def start_segmenting(self) -> None:
        layer = self.image.value
        try:
            data = tasks.stack_of(getattr(layer, "name", None), getattr(layer, "data", None), getattr(layer, "rgb", False))
        except EmunetError as exc:
            return self._say(str(exc))
        if isinstance(data, (list, tuple)):  # a multiscale layer: its full-resolution level
            data = data[0]
        n = 1 if data.ndim == 2 else data.shape[0]
        current = int(self._viewer.dims.current_step[0]) if data.ndim == 3 else 0
        corner = (0, 0)
        which = range(current, current + 1) if self.slices.value != "all" else range(n)
        first = which.start  # where the results lie in the stack
        if self.slices.value == "visible region":  # read only what is on screen, of the slice on screen
            (y0, x0), (y1, x1) = _visible_region(layer)
            data, which, corner = (data[y0:y1, x0:x1] if data.ndim == 2 else data[current:current + 1, y0:y1, x0:x1],
                                   range(0, 1), (y0, x0))
        membranes, cells = self.outputs.value != "cells", self.outputs.value != "membranes"
        place = _placement(layer, data.ndim, first, corner)
        self._run(self._segment, self._show_segmented, len(which), self.model.value, data, which, membranes, cells,
                  (layer.name, data.ndim, place), self.pixel_size.value or None, self.tta.value, self.adapt.value)

    def _segment(self, model: str, data, which: range, membranes: bool, cells: bool, where, pixel_size: float | None = None,
                 tta: bool = False, adapt: bool = False):
        from ..infer.predictor import Predictor

        # the box decides either way: a model whose run predicts with turns (the main job's) runs without them here
        overrides = (([f"predict.pixel_size={pixel_size}"] if pixel_size else []) + [f"predict.tta={str(tta).lower()}"]
                     + (["predict.adapt_norm=true"] if adapt else []))
        predictor = Predictor.load(model, overrides=overrides)
        done = tasks.segment_slices(predictor, data, which, membranes, cells, lambda i, n: self._show_progress(i),
                                    self._cancel)
        return done, where

    def _show_segmented(self, result) -> None:
        done, (name, ndim, place) = result
        if done is None:
            return self._say("Cancelled.")
        squeeze = (lambda a: a[0]) if ndim == 2 else (lambda a: a)
        if done.probabilities is not None:
            self._viewer.add_image(squeeze(done.probabilities), name=f"{name} membranes", colormap="gray",
                                   contrast_limits=(0, 1), **place)
        if done.cells is not None:
            self._viewer.add_labels(squeeze(done.cells), name=f"{name} cells", **place)
        self._say(f"Segmented {len(done.cells if done.cells is not None else done.probabilities)} slice(s) of "
                  f"'{name}' with {Path(self.model.value).name}.")

    # --- fine-tuning --------------------------------------------------------------------
    def start_fine_tuning(self) -> None:
        image, labels = self.image.value, self.labels_layer.value
        if image is None or labels is None:
            return self._say("Choose an image layer and a labels layer painted over it.")
        try:
            tasks.stack_of(image.name, image.data, image.rgb)
        except EmunetError as exc:
            return self._say(str(exc))
        if isinstance(image.data, (list, tuple)):
            return self._say(f"The layer '{image.name}' is multiscale; fine-tune on a crop of it (a plain image layer).")
        meaning = "cells" if self.meaning.value == "cells" else "membranes"
        self._run(self._fine_tune, self._show_fine_tuned, self.steps.value, self.model.value, np.asarray(image.data),
                  np.asarray(labels.data), meaning, self.steps.value, Path(self.save_to.value))

    def _fine_tune(self, model: str, images, labels, meaning: str, steps: int, out: Path):
        def on_step(step: int) -> bool:
            self._show_progress(step)
            return not self._cancel.is_set()

        return tasks.fine_tune(model, images, labels, meaning, steps, out, on_step)

    def _show_fine_tuned(self, path) -> None:
        if path is None:
            return self._say("Cancelled; the steps done are saved as a checkpoint in the folder.")
        self._add_model(str(path))
        self._say(f"Fine-tuned: {path}, chosen above.")

    # --- the worker -----------------------------------------------------------------------
    def _run(self, work, show, total: int, *args) -> None:
        self._cancel.clear()
        self.progress.max, self.progress.value, self.progress.visible = max(total, 1), 0, True
        self._busy(True)
        self._say("Working ...")
        # an "errored" handler of its own: the worker then shows the error here instead of re-raising it
        self.worker = create_worker(work, *args, _connect={"returned": show, "errored": lambda exc: self._say(_sentence(exc)),
                                                           "finished": lambda: self._busy(False)}, _start_thread=True)

    @ensure_main_thread
    def _show_progress(self, value: int) -> None:
        self.progress.value = value

    def _busy(self, busy: bool) -> None:
        self.segment_button.enabled = self.fine_tune_button.enabled = not busy
        self.cancel_button.enabled = busy

    def _say(self, text: str) -> None:
        self.status.value = text


def _visible_region(layer) -> tuple[tuple[int, int], tuple[int, int]]:
    """The (Y, X) corners of the part of ``layer`` on screen, in full-resolution pixels."""
    corners = np.asarray(layer.corner_pixels)[:, -2:].astype(float)
    if layer.multiscale:  # corner_pixels are in the level on screen
        corners *= np.asarray(layer.downsample_factors[layer.data_level])[-2:]
    height, width = (layer.data[0] if layer.multiscale else layer.data).shape[-2:]
    (y0, x0), (y1, x1) = np.floor(corners[0]).astype(int), np.ceil(corners[1]).astype(int) + 1
    return (max(0, y0), max(0, x0)), (min(height, y1), min(width, x1))


def _placement(layer, ndim: int, first: int, corner: tuple[int, int]) -> dict:
    """Scale and translation that put results over the slices and region they came from."""
    scale, translate = list(layer.scale), list(layer.translate)
    if ndim == 3:
        translate[0] += first * scale[0]
    translate[-2] += corner[0] * scale[-2]
    translate[-1] += corner[1] * scale[-1]
    return dict(scale=scale, translate=translate)


def _sentence(exc: BaseException) -> str:
    """An error as one sentence: the package's own messages as they are, others with their type."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if isinstance(exc, EmunetError) else f"{type(exc).__name__}: {text}"
