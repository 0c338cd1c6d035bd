"""The training batch stream: sample tiles, move them to the device, augment, crop the labels;
optionally prepared ahead in a background thread while the device computes the current step.

Every random draw comes from one CPU generator, in the same order with or without the
background thread, so a run is the same either way. A checkpoint must record the generator as
it stood after the *last batch trained on*, not after the batches prepared ahead: the stream
hands that state out with each batch (:attr:`BatchStream.position`).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

import torch

from .augment import augment_batch
from ..config import AugmentConfig
from ..model.affinities import label_cells
from ..model.unet import to_network_input
from .sampling import TileSampler

__all__ = ["Batch", "BatchStream", "make_batch_fn"]

Batch = tuple[torch.Tensor, torch.Tensor]  # network input (B, C, H, W), labels or cell ids (B, h, w)


def make_batch_fn(sampler: TileSampler, augment: AugmentConfig, batch_size: int, mine: slice, out_size: int,
                  device: torch.device, memory_format: torch.memory_format, cells: bool = False) -> Callable[[], Batch]:
    """One global batch drawn, this rank's slice of it kept: every rank draws the same batch
    from the same generator, so N processes follow the one-process run.

    ``cells``: the labels become each tile's cell ids (:func:`affinities.label_cells`), found
    on the whole input tile before the crop, so that a cell which leaves the output window and
    comes back keeps one id."""
    crop = (sampler.in_size - out_size) // 2
    pin = device.type == "cuda"

    def next_batch() -> Batch:
        images, labels = sampler.sample(batch_size)
        if pin:  # page-locked, so the copy below runs asynchronously
            images, labels = images.pin_memory(), labels.pin_memory()
        # Augment where the model runs: a GPU warps the batch in a fraction of the CPU's time.
        # The random draws still come from the CPU generator, so a run repeats on any device.
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        images, labels = augment_batch(images, labels, augment, sampler.generator)
        images, labels = images[mine], labels[mine]
        if cells:
            labels = label_cells(labels)
        if crop:
            labels = labels[:, crop : crop + out_size, crop : crop + out_size]
        return to_network_input(images).contiguous(memory_format=memory_format), labels

    return next_batch


class BatchStream:
    """Batches from ``next_batch``, ``ahead`` of them prepared in a background thread (0: each
    prepared when asked for, in the caller's thread).

    On CUDA the background thread works on its own stream, so the copy and augmentation of
    batch n+1 overlap step n; the consumer's stream waits for the batch's event before use.
    Close it (or use it as a context manager) to stop the thread.
    """

    def __init__(self, next_batch: Callable[[], Batch], generator: torch.Generator, ahead: int,
                 device: torch.device) -> None:
        self._next_batch, self._generator, self._device = next_batch, generator, device
        self._position = generator.get_state()  # the generator after the last batch handed out (when ahead)
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=max(1, ahead))
        self._stop = threading.Event()
        self._thread = None
        # the background thread's own CUDA stream: its copies and augmentation overlap the step
        self._side = torch.cuda.Stream(device) if device.type == "cuda" and ahead > 0 else None
        if ahead > 0:
            self._thread = threading.Thread(target=self._produce, name="emunet-batches", daemon=True)
            self._thread.start()

    @property
    def position(self) -> torch.Tensor:
        """The generator's state after the last batch handed out: what a checkpoint records."""
        return self._generator.get_state() if self._thread is None else self._position

    def _prepare(self) -> tuple[Batch, torch.Tensor, Any]:
        """In the background thread: the next batch, the generator after it, and the event
        that marks the batch ready on the side stream (CUDA)."""
        event = None
        if self._side is not None:
            with torch.cuda.stream(self._side):
                batch = self._next_batch()
                event = torch.cuda.Event()
                event.record(self._side)
        else:
            batch = self._next_batch()
        return batch, self._generator.get_state(), event

    def _produce(self) -> None:
        if self._device.type == "cuda" and self._device.index is not None:
            torch.cuda.set_device(self._device)  # a new thread starts on device 0
        try:
            while not self._stop.is_set():
                self._put(("batch", self._prepare()))
        except BaseException as exc:  # handed to the consumer, which raises it
            self._put(("error", exc))

    def _put(self, item: tuple[str, Any]) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> Batch:
        if self._thread is None:  # prepared in turn, on the current stream
            return self._next_batch()
        kind, payload = self._queue.get()
        if kind == "error":
            raise payload
        batch, self._position, event = payload
        if event is not None:
            current = torch.cuda.current_stream(self._device)
            current.wait_event(event)
            for tensor in batch:  # its memory, allocated on the side stream, now serves this one
                tensor.record_stream(current)
        return batch

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            while self._thread.is_alive():
                try:  # unblock a producer waiting on a full queue
                    self._queue.get_nowait()
                except queue.Empty:
                    pass
                self._thread.join(timeout=0.1)
            self._thread = None

    def __enter__(self) -> BatchStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
