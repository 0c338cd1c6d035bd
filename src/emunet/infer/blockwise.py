"""Blockwise prediction of volumes larger than memory, on Dask: from one process to a cluster.

The volume is cut into blocks of whole output chunks. A block is predicted with the tiles of
its whole section's tile grid that reach into it, reading from its neighbours the context
those tiles need (mirror padding only at the volume's own edges), so that a volume predicted
block by block equals each section predicted whole (:func:`tiling.predict_region`). The blur
and the wall-gap closing get a halo of their own: the closing's windows are the same as a
whole section's (blocks are whole windows), each with the same margin of context.

Each task owns its block's output chunks, writes them, then a marker; a prediction that was
killed and is run again skips the blocks with markers and ends with the same output as an
undisturbed run. Memory per task depends on the block size, not on the volume's.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from functools import lru_cache
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import LONG_RANGE_STRIDES, PredictConfig, SegmentConfig
from ..errors import DataError, UsageError
from ..model.bundled import resolve_checkpoint
from ..io.places import Place
from ..io.pixels import is_microscope_pixel
from ..io.provenance import file_sha256, made_by_record, recorded_made_by, differences as _differences
from ..model.affinities import interior_from_affinities
from .blocks import BLOCK, SEGMENT_BLOCK, Block, markers_folder, plan_blocks, run_blocks
from .postprocess import CLOSE_GAPS_MARGIN, CLOSE_GAPS_WINDOW, smooth_in_place, wall_levels

__all__ = ["Block", "plan_blocks", "predict_block", "predict_affinities", "predict_to_ome_zarr", "BlockwiseResult"]


# the mutex watershed's long-range grid: a block of cells starts on it whatever the stride (SEGMENT_HALO is a multiple too)
CELLS_BLOCK_STEP = max(LONG_RANGE_STRIDES)


def _halo(pcfg: PredictConfig) -> int:
    """Pixels of context a block's post-processing needs around it: the blur's kernel radius
    (scipy truncates at 4 std), plus the closing's margin, which must itself be blurred right."""
    radius = int(4.0 * pcfg.smooth + 0.5) if pcfg.smooth > 0 else 0
    return radius + (CLOSE_GAPS_MARGIN if pcfg.close_gaps > 0 else 0)


def check_block_size(block: int, chunk: int, pcfg: PredictConfig) -> None:
    if block % chunk:
        raise UsageError(f"--block {block} must be a multiple of the output chunk {chunk}")
    if pcfg.close_gaps > 0 and block % CLOSE_GAPS_WINDOW:
        raise UsageError(f"--block {block}: with wall-gap closing a block is whole closing windows of "
                         f"{CLOSE_GAPS_WINDOW} px (e.g. --block 2048), or turn it off with --close-gaps 0")


def predict_block(models: Sequence[Any], volume, block: Block, pcfg: PredictConfig, precision: str) -> np.ndarray:
    """The post-processed probabilities of one block (float32), equal to the same pixels of its
    section predicted and post-processed whole (for an affinity model: the interior map of its
    affinities)."""
    from .kernel import predict_section_region

    offsets = models[0].cfg.offsets
    if offsets:  # the map of a pixel reads its neighbours' affinities: one pixel of halo
        area, affinities = predict_affinities(models, volume, block, 1, pcfg, precision)
        return _inner(interior_from_affinities(affinities, offsets), area, block)
    n, h, w = volume.shape
    ry0, ry1, rx0, rx1 = block.area(_halo(pcfg), (h, w))
    raw = np.zeros((ry1 - ry0, rx1 - rx0), np.float32)
    predict_section_region(models, volume.read, n, block.z, (h, w), (ry0, ry1, rx0, rx1), pcfg, precision, out=raw)
    smooth_in_place(raw, pcfg.smooth)
    inner = _inner(raw, (ry0, ry1, rx0, rx1), block).copy()
    if pcfg.close_gaps > 0:
        _close_gaps_of_block(raw, (ry0, rx0), inner, block, (h, w), pcfg.close_gaps)
    return inner


def predict_affinities(models: Sequence[Any], volume, block: Block, halo: int, pcfg: PredictConfig,
                       precision: str) -> tuple[tuple[int, int, int, int], np.ndarray]:
    """An affinity model's affinities (C, h, w) of the block widened by ``halo`` (within its
    section), and that area (y0, y1, x0, x1); equal to the same pixels of the whole section's."""
    from .kernel import predict_section_region

    n, h, w = volume.shape
    area = block.area(halo, (h, w))
    out = np.zeros((len(models[0].cfg.offsets), area[1] - area[0], area[3] - area[2]), np.float32)
    predict_section_region(models, volume.read, n, block.z, (h, w), area, pcfg, precision, out=out)
    return area, out


def _inner(area_values: np.ndarray, area: tuple[int, int, int, int], block: Block) -> np.ndarray:
    """The block's own pixels of values computed over ``area`` (the last two axes)."""
    return area_values[..., block.y0 - area[0] : block.y1 - area[0], block.x0 - area[2] : block.x1 - area[2]]


def _close_gaps_of_block(smoothed: np.ndarray, origin: tuple[int, int], inner: np.ndarray, block: Block,
                         shape: tuple[int, int], threshold: float) -> None:
    """Lower ``inner`` (the block) by the walls of each closing window in it, each window's
    walls found from its blurred values and a margin around it, as a whole section's are."""
    h, w = shape
    oy, ox = origin
    m = CLOSE_GAPS_MARGIN
    for top in range(block.y0, block.y1, CLOSE_GAPS_WINDOW):
        lo, hi, end = max(0, top - m), min(h, top + CLOSE_GAPS_WINDOW + m), min(h, top + CLOSE_GAPS_WINDOW)
        for left in range(block.x0, block.x1, CLOSE_GAPS_WINDOW):
            first, last, right = max(0, left - m), min(w, left + CLOSE_GAPS_WINDOW + m), min(w, left + CLOSE_GAPS_WINDOW)
            walls = wall_levels(np.ascontiguousarray(smoothed[lo - oy : hi - oy, first - ox : last - ox]), threshold)
            target = inner[top - block.y0 : end - block.y0, left - block.x0 : right - block.x0]
            np.minimum(target, walls[top - lo : end - lo, left - first : right - first], out=target)


def _encode(probs: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "uint8":
        return np.rint(probs * 255.0).astype(np.uint8)
    return probs.astype(dtype)


NORM_STATISTICS = "adapted-norm.safetensors"  # in the output: --adapt-norm's statistics, estimated once

# --- the tasks: one per block, each loading the models once per process ---------------------

@lru_cache(maxsize=2)
def _models_and_volume(checkpoints: tuple[str, ...], hashes: tuple[str, ...], device: str, source: str, channel: int | None,
                       axes: str | None, norm: str | None = None):
    """The predictor (the models and their run's settings) and the opened input, scaled as the
    models were trained: loaded once per process (the client's checks, and Dask's many blocks in
    each worker), and again when a checkpoint's contents change
    (``hashes``, part of the cache key). ``norm``: the stored batch-norm statistics of
    ``--adapt-norm`` (:func:`_adapted_statistics`), a file's place.

    The tasks' threads share the models, each predicting on its share of the cores
    (:func:`_task_loaded`)."""
    from ..device import keep_freed_memory
    from ..io.volumes import open_volume
    from .predictor import Predictor
    from .tiling import inference_layout

    predictor = Predictor.load(list(checkpoints), device)
    if next(predictor.models[0].parameters()).device.type == "cpu":  # a worker's process is the blocks': keep their freed memory
        keep_freed_memory()
    if norm is not None:
        from safetensors.torch import load

        from .adapt import with_norm_statistics

        predictor.models = with_norm_statistics(predictor.models, load(Place(norm).read_bytes()))
    for model in predictor.models:  # before any task predicts with it: the tasks' threads share it
        inference_layout(model)
    volume = open_volume(source, channel, axes)
    volume.choose_scaling(predictor.intensity)
    return predictor, volume


def _loaded(job: dict) -> tuple:
    """The tasks' :func:`_models_and_volume`: what one process loads once for all its blocks (the
    command's own checks ask with the same key, so that without ``--adapt-norm`` it loads once)."""
    return _models_and_volume(job["checkpoints"], job["hashes"], job["device"], job["source"], job["channel"], job["axes"],
                              job["norm"])


def _task_loaded(job: dict) -> tuple:
    """:func:`_loaded` for a task, with PyTorch's threads set to this thread's share of the
    process's cores when the command runs the tasks itself: its task threads predict side by side,
    each on its share, where they used to take turns on all cores. A pass on all cores from a task
    thread ran 1.5x slower than from the main thread (libgomp stops its threads' waiting spin once
    a process holds more of them than cores: each task thread's team and the main thread's), and
    one block's watersheds took a core from the other's network anyway (docs/volumes.md). A
    ``dask.distributed`` worker keeps the threads its nanny gave it (one by default: its
    neighbours on the machine share the cores)."""
    threads = job.get("task_threads")
    if threads is not None:
        import torch

        from ..device import core_share

        share = core_share(threads)
        if torch.get_num_threads() != share:
            torch.set_num_threads(share)
    return _loaded(job)


def _run_block(job: dict, block: Block) -> str:
    """Pass 1 (a task): the block's map, written, then its marker; for an affinity model asked for
    cells, its cut too, from the same affinities (:func:`stitch.cut_affinities`)."""
    import zarr

    from .stitch import SEGMENT_HALO, cut_affinities

    predictor, volume = _task_loaded(job)
    models = predictor.models
    offsets, plan = models[0].cfg.offsets, job["cells"]
    if offsets and plan is not None:
        area, affinities = predict_affinities(models, volume, block, SEGMENT_HALO, job["predict"], job["precision"])
        probs = _inner(interior_from_affinities(affinities, offsets), area, block)
    else:
        probs = predict_block(models, volume, block, job["predict"], job["precision"])
    # every chunk stored, zeros too: a finished block's chunks are checked on a rerun
    output = Place(job["output"])
    target = zarr.open_array((output / "0").zarr(), mode="r+", zarr_format=2).with_config({"write_empty_chunks": True})
    target[block.z, block.y0 : block.y1, block.x0 : block.x1] = _encode(probs, job["dtype"])
    # written after the chunks: a block without it is predicted again
    (markers_folder(output) / block.name).write_bytes(b"")
    if offsets and plan is not None:
        cut_affinities(plan, block, job["k"], area, affinities)
    return block.name


def _cut_block_again(job: dict, block: Block) -> str:
    """Pass 1 again at another long-range bias (a task): the block's affinities predicted again
    with the halo, cut at candidate ``job["k"]``."""
    from .stitch import SEGMENT_HALO, cut_affinities

    predictor, volume = _task_loaded(job)
    models = predictor.models
    area, affinities = predict_affinities(models, volume, block, SEGMENT_HALO, job["predict"], job["precision"])
    cut_affinities(job["cells"], block, job["k"], area, affinities)
    return block.name


@dataclass
class BlockwiseResult:
    shape: tuple[int, int, int]
    blocks: int
    skipped: int
    seconds: float
    cells: int | None = None  # objects in the labels (None: no cells asked)
    long_range_bias: float | None = None  # the mutex watershed's, as calibrated on the volume


def predict_to_ome_zarr(checkpoints: Sequence[str | Path], source: str, output: str | Path | Place, pcfg: PredictConfig,
                        precision: str, device: str = "auto", block: int | None = None, chunk: int = 1024,
                        dtype: str = "uint8", levels: int = 1, scheduler: str | None = None, workers: int = 1,
                        channel: int | None = None, axes: str | None = None, progress: bool = True,
                        overwrite: bool = False, segment: SegmentConfig | None = None) -> BlockwiseResult:
    """Predict the volume ``source`` block by block into the OME-Zarr image ``output`` (a local
    folder or a store's URL; a Zarr ``source`` on a store is read chunk by chunk).

    Args:
        block: block side in pixels, a multiple of ``chunk`` (and of the closing's window);
            None: :data:`.blocks.BLOCK`, with ``segment`` :data:`.blocks.SEGMENT_BLOCK`.
        chunk: output chunk side (chunks are 1 x chunk x chunk).
        dtype: 'uint8' (probability x 255), 'float16' or 'float32'.
        levels: resolutions written (1 = full resolution only; more add 2x-downsampled levels).
        scheduler: None for an in-process Dask scheduler with ``workers`` threads (the command
            line's default: :func:`.blocks.default_threads`), or the address
            of a ``dask.distributed`` scheduler (``tcp://host:8786``), whose workers each load
            the models once.
        overwrite: replace an existing output instead of continuing it (an output made by other
            checkpoints, input or settings is refused without it).
        segment: also the cells, as these settings say, into the image's NGFF labels
            (``output/labels/cells``, uint32; :mod:`.stitch`).
    """
    from ..io.volumes import open_volume

    block = _checked_block(block, chunk, dtype, pcfg, segment is not None)
    output = _checked_output(output, source)
    volume = open_volume(source, channel, axes)
    hashes = tuple(file_sha256(resolve_checkpoint(c)) for c in checkpoints)  # a bundled name: its file
    loaded = _models_and_volume(tuple(str(c) for c in checkpoints), hashes, device, str(source), channel, axes, None)
    _check_pixel_size(volume, pcfg, loaded[0].model_pixel_size)
    made_by = made_by_record(hashes, source, volume, {"predict": asdict(pcfg), "precision": precision, "dtype": dtype,
                                                      "block": block, "chunk": chunk, "levels": levels, "channel": channel,
                                                      "axes": axes})
    group, blocks, todo = _open_output(output, volume, made_by, chunk, dtype, levels, block, overwrite)
    job = {"checkpoints": tuple(str(c) for c in checkpoints), "hashes": hashes, "device": device, "source": str(source),
           "channel": channel, "axes": axes, "predict": pcfg, "precision": precision, "output": str(output), "dtype": dtype,
           "cells": None, "norm": None, "k": 0, "task_threads": workers if scheduler is None else None}
    start = time.perf_counter()
    if pcfg.adapt_norm:
        job["norm"] = _adapted_statistics(loaded, output)
    _loaded(job)  # before any task: threads asking the cache at once would each load
    if segment is not None:
        todo = _plan_cells(job, loaded, output, volume, made_by, segment, (block, chunk), blocks, todo, overwrite)
    if todo:
        run_blocks(_run_block, job, todo, scheduler, workers, progress)
    if levels > 1 and todo:
        from ..io.volumes import write_pyramid

        write_pyramid(group)
    result = BlockwiseResult(volume.shape, len(blocks), len(blocks) - len(todo), 0.0)
    if job["cells"] is not None:
        result.cells, result.long_range_bias = _cells_of_volume(job, blocks, scheduler, workers, progress)
    result.seconds = time.perf_counter() - start
    return result


def _checked_block(block: int | None, chunk: int, dtype: str, pcfg: PredictConfig, cells: bool) -> int:
    """The block side (given, or the default for a map or for cells), checked with the dtype."""
    if dtype not in ("uint8", "float16", "float32"):
        raise UsageError(f"--dtype must be uint8, float16 or float32, got {dtype!r}")
    block = block or (SEGMENT_BLOCK if cells else BLOCK)
    check_block_size(block, chunk, pcfg)
    if cells and block % CELLS_BLOCK_STEP:
        # the mutex watershed's long-range edges start on a grid of its stride: a block that
        # starts off that grid would draw other edges than the whole section
        raise UsageError(f"--block {block}: cells are cut in blocks of a multiple of {CELLS_BLOCK_STEP} px (e.g. --block 1024)")
    return block


def _check_pixel_size(volume, pcfg: PredictConfig, model_nm: float | None) -> None:
    """A volume block by block is predicted at its own pixels (its blocks are not resized): a
    --pixel-size that asks for resizing is refused, and a calibration other than the model's said."""
    import logging

    from .rescale import TOLERANCE

    if not model_nm:
        return
    given = pcfg.pixel_size
    if given and abs(given / model_nm - 1.0) > TOLERANCE:
        raise UsageError(f"{volume.source}: --pixel-size {given:g} nm: a volume predicted block by block is predicted "
                         f"at its own pixels, not resized to the model's {model_nm:g} nm; resample it to {model_nm:g} nm "
                         "first, or write a TIFF (-o out.tif): a stack in memory is resized")
    nm = volume.calibration.pixel_size_nm() if volume.calibration and not given else None
    if nm and is_microscope_pixel(nm) and abs(nm / model_nm - 1.0) > TOLERANCE:
        logging.getLogger("emunet").warning(
            f"{volume.source}: its pixels are {nm:g} nm and the model's {model_nm:g} nm; a volume block by block is "
            f"predicted at its own pixels, not resized (resample it to {model_nm:g} nm for the model's scale)")


def _adapted_statistics(loaded: tuple, output: Place) -> str:
    """``--adapt-norm`` for a volume: the batch-norm statistics estimated once, in this process,
    from windows of the whole volume (not per block, which would give each block its own), and
    stored in the output, so that every worker and a rerun after a kill use the very same."""
    from safetensors.torch import save

    from .adapt import adapted_to_lazy, norm_statistics

    stored = output / NORM_STATISTICS
    if not stored.is_file():
        predictor, volume = loaded
        stored.write_bytes(save(norm_statistics(adapted_to_lazy(predictor.models, volume))))
    return str(stored)


def _checked_output(output: str | Path | Place, source: str) -> Place:
    """The output's place, refused where it lies in the input (or holds it); a store that does
    not answer or lacks the bucket fails now, before any work."""
    from ..io.volumes import volume_file

    output = Place(output)
    if output.is_url:
        from ..io.storage import check_store

        check_store(output.location)
    store = volume_file(source)
    if output.contains(store) or store.contains(output):
        raise DataError(f"{output}: the output would write into the input {source}; choose another -o")
    return output


def _plan_cells(job: dict, loaded: tuple, output: Place, volume, made_by: dict, segment: SegmentConfig,
                block_and_chunk: tuple[int, int], blocks: list[Block], todo: list[Block], overwrite: bool) -> list[Block]:
    """The cells' plan into ``job``; for an affinity model the bias calibrated and the blocks to
    predict widened by those not cut at it (its affinities are predicted once, for the map and
    the cut together)."""
    offsets = loaded[0].models[0].cfg.offsets
    plan = job["cells"] = _open_cells(output, volume, made_by, segment, offsets, *block_and_chunk, overwrite)
    if not offsets:
        return todo
    job["k"] = _calibrated_candidate(job)
    pending, cut = set(todo), plan.cut_blocks(job["k"])
    return [b for b in blocks if b in pending or b.name not in cut]


def _calibrated_candidate(job: dict) -> int:
    """An affinity model's long-range bias (its index among the plan's candidates), calibrated
    before any block on the volume's :func:`segment.calibration_windows`, their affinities
    predicted here: the windows and the choice a stack in memory makes (2 MP at most)."""
    from .segment import calibrated_bias, calibration_windows

    plan = job["cells"]
    if len(plan.biases) == 1:
        return 0
    # kept beside the cuts it chose: a rerun (a killed run continued) takes it instead of predicting
    # and cutting the windows again; new settings start a new scratch folder, and so a new choice
    if plan.calibration_file.is_file():
        return plan.biases.index(json.loads(plan.calibration_file.read_text())["long_range_bias"])
    predictor, volume = _loaded(job)
    windows = [predict_affinities(predictor.models, volume, Block(*window), 0, job["predict"], job["precision"])[1]
               for window in calibration_windows(tuple(volume.shape))]
    bias = calibrated_bias(windows, plan.offsets, plan.segment)[0]
    plan.calibration_file.write_bytes(json.dumps({"long_range_bias": bias}).encode())
    return plan.biases.index(bias)


def _cells_of_volume(job: dict, blocks: list[Block], scheduler: str | None, workers: int,
                     progress: bool) -> tuple[int, float | None]:
    """The blocks not cut yet cut (a membrane model's from its map as written, halo and all; an
    affinity model's were cut with its map at the calibrated bias, and are cut here if a rerun
    calibrated another), then stitched: the cells' count and the bias."""
    from .stitch import cut_counts, cut_map_block, stitch_cells

    plan, k = job["cells"], job["k"]
    cut = plan.cut_blocks(k)
    uncut = [b for b in blocks if b.name not in cut]
    if uncut:
        bias = plan.biases[k]
        task, desc = (cut_map_block, "cells") if bias is None else (_cut_block_again, f"cells at {bias:g}")
        run_blocks(task, job, uncut, scheduler, workers, progress, desc=desc)
    counts = cut_counts(plan, blocks, k, scheduler, workers)
    made = stitch_cells(plan, blocks, k, counts, scheduler, workers, progress)
    return made["cells"], made["long_range_bias"]


def _open_cells(output: Place, volume, made_by: dict, segment: SegmentConfig, offsets, block: int, chunk: int,
                overwrite: bool):
    """The labels image ``output/labels/cells`` (NGFF 0.4) and the plan of its cells; labels made
    with other settings are refused unless ``overwrite``, and a new one starts its cuts afresh."""
    import zarr

    from ..io.volumes import create_ome_zarr
    from .stitch import SEGMENT_HALO, CellsPlan, create_scratch

    labels = output / "labels" / "cells"
    scratch = markers_folder(output) / "cells"
    wanted = {**made_by, "settings": {**made_by["settings"], "segment": asdict(segment), "halo": SEGMENT_HALO}}
    wanted = json.loads(json.dumps(wanted))
    if (labels / ".zattrs").is_file():
        differs = _differences(recorded_made_by(labels), wanted)
        if differs and not overwrite:
            raise UsageError(f"{labels}: these cells were made by {differs}; replace them with --overwrite "
                             "or choose another -o")
        if differs:
            labels.remove()
    if not (labels / ".zattrs").is_file():
        scratch.remove()
        group = create_ome_zarr(labels, volume.shape, (1, chunk, chunk), "uint32", volume.calibration, "cells")
        group.attrs["image-label"] = {"version": "0.4"}
        group.attrs["emunet"] = {"made_by": wanted}
        zarr.open_group((output / "labels").zarr(), mode="a", zarr_format=2).attrs["labels"] = ["cells"]
    plan = CellsPlan(str(scratch), str(labels / "0"), tuple(volume.shape), block, segment,
                     [tuple(o) for o in offsets] if offsets else None)
    create_scratch(plan, chunk)
    return plan


def _open_output(output: Place, volume, made_by: dict, chunk: int, dtype: str, levels: int, block: int, overwrite: bool):
    """The output group, all blocks and those still to predict. An output is continued only when
    the same checkpoints, input and settings made it, and a block counts as finished only with
    its marker and all its chunks present; anything else is refused unless ``overwrite``."""
    from ..io.volumes import create_ome_zarr

    done_dir = markers_folder(output)
    if (output / ".zattrs").is_file():
        differs = _differences(recorded_made_by(output), made_by)
        if differs and not overwrite:
            raise UsageError(f"{output}: this OME-Zarr was made by {differs}; continuing it would mix two predictions. "
                             "Replace it with --overwrite or choose another -o")
        if overwrite:
            output.remove()
    if not (output / ".zattrs").is_file():  # a new output: markers (and statistics) left from a removed one mean nothing
        done_dir.remove()
        (output / NORM_STATISTICS).remove()
    group = create_ome_zarr(output, volume.shape, (1, chunk, chunk), dtype, volume.calibration, Place(volume.source).name,
                            levels)
    group.attrs["emunet"] = {"made_by": made_by}
    done_dir.make_folder()
    blocks = plan_blocks(volume.shape, block)
    finished, stored = done_dir.names(), (output / "0").names()  # one listing each, not a request per block
    todo = [b for b in blocks if b.name not in finished or not _chunks_present(stored, b, chunk)]
    return group, blocks, todo


def _chunks_present(stored: set[str], block: Block, chunk: int) -> bool:
    """Whether every output chunk of ``block`` is among the ``stored`` keys (Zarr v2: 'z.cy.cx')."""
    return all(f"{block.z}.{cy}.{cx}" in stored
               for cy in range(block.y0 // chunk, -(-block.y1 // chunk)) for cx in range(block.x0 // chunk, -(-block.x1 // chunk)))
