"""Cells of a volume block by block: each block cut with a halo, ids made unique across the
volume, the cells that a block seam cuts joined into one id, and (``segment.link_sections``)
sections linked into 3-D objects; the same cells as each section segmented whole, but in memory
bounded by the block size.

The passes, each a task per block on Dask (the client holds only per-cell tables):

1. cut: a block and ``SEGMENT_HALO`` pixels around it are segmented as a section would be (the
   mutex watershed of the affinities at the long-range bias calibrated on the volume's
   :func:`segment.calibration_windows` before any block, as a stack in memory is; or the seeded
   watershed of the map as written). The block's own pixels keep their cells, numbered 1..n, in
   a scratch array; the halo's pixels keep the block's ids of the cells that reach into the block
   (the "ring"). A marker file per block and candidate bias makes a rerun skip the blocks already
   cut.
2. counts: each block's cells' count, for ids unique across the volume.
3. seams: in the halo of each block, its ring is compared with its neighbours' own cells there;
   two cells are one where their intersection over union within the halo is above 0.5. Away
   from the blocks' borders both segmentations are the whole section's, so a cell cut by a seam
   is the same pixels on both sides (IoU 1); where they disagree, the cell stays split at the seam.
4. links (optional): overlap counts and sizes of the cells of neighbouring sections, summed over
   blocks, joined by :func:`link.matches` as :func:`link.link_sections` does in memory.
5. the labels: each block's ids looked up in the volume's table and written (uint32).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import SegmentConfig
from ..io.places import Place
from ..model.affinities import Offsets
from .blocks import Block, run_blocks
from .link import joined_ids, matches, overlaps_of, tuple_counts
from .segment import long_range_biases, mutex_watershed, seeded_watershed

__all__ = ["SEGMENT_HALO", "SEAM_MIN_IOU", "CellsPlan", "cut_affinities", "cut_map_block", "cut_counts", "stitch_cells"]

log = logging.getLogger("emunet")

# The mutex watershed's long-range offsets reach 27 px and the seeded watershed floods from seeds
# anywhere in a cell: 128 px of context makes a block's cells within the halo's inner half the
# whole section's on ISBI and VNC (tests/test_volumes.py), at 1.6x the pixels of a 1024 block.
SEGMENT_HALO = 128
SEAM_MIN_IOU = 0.5


@dataclass(frozen=True)
class CellsPlan:
    """Where a volume's cells are made: the scratch folder (per-block cuts), the labels array,
    the blocks' grid and the segmentation's settings."""

    scratch: str
    labels: str
    shape: tuple[int, int, int]
    block: int
    segment: SegmentConfig
    offsets: Offsets | None

    @property
    def biases(self) -> list[float | None]:
        """The candidate long-range biases, in the order tried (one entry, None, for the seeded watershed)."""
        return list(long_range_biases(self.segment)) if self.offsets else [None]

    def index(self, z: int, y: int, x: int) -> int:
        """The plan-order number of the block holding pixel (y, x) of section z."""
        _, h, w = self.shape
        across, down = -(-w // self.block), -(-h // self.block)
        return (z * down + y // self.block) * across + x // self.block

    def cut_file(self, block: Block, k: int) -> Place:
        """The block's ring (the halo's ids) and its counts at candidate ``k``, written last: the
        marker of the block's cut."""
        return Place(self.scratch) / f"{block.name}.k{k}.npz"

    @property
    def calibration_file(self) -> Place:
        """The long-range bias the volume's calibration chose, kept beside the cuts made at it."""
        return Place(self.scratch) / "calibrated.json"

    def cut_blocks(self, k: int) -> set[str]:
        """The names of the blocks cut at candidate ``k`` (one listing of the scratch folder)."""
        end = f".k{k}.npz"
        return {name[: -len(end)] for name in Place(self.scratch).names() if name.endswith(end)}


def _scratch_array(plan: CellsPlan, k: int, mode: str = "r+") -> Any:
    import zarr

    return zarr.open_array((Place(plan.scratch) / f"local{k}").zarr(read_only=mode == "r"), mode=mode, zarr_format=2)


def create_scratch(plan: CellsPlan, chunk: int) -> None:
    """The scratch arrays of the cut blocks' own ids, one per candidate bias (opened as they are
    when a rerun continues)."""
    import zarr

    Place(plan.scratch).make_folder()
    for k in range(len(plan.biases)):
        place = Place(plan.scratch) / f"local{k}"
        if not (place / ".zarray").is_file():
            zarr.create_array(place.zarr(), shape=plan.shape, chunks=(1, chunk, chunk), dtype="uint32", fill_value=0,
                              zarr_format=2)


@contextmanager
def _cut(plan: CellsPlan, block: Block, k: int) -> Iterator[Any]:
    """A block's cut record, its members read only as they are asked for."""
    with plan.cut_file(block, k).open() as file, np.load(file) as record:
        yield record


# --- pass 1: cut -------------------------------------------------------------------------------

def _save_cut(plan: CellsPlan, block: Block, k: int, area: tuple[int, int, int, int], region: np.ndarray) -> None:
    """Write the block's ids at candidate ``k`` into its scratch array, then the block's ring and
    counts (its marker) whole."""
    y0, _, x0, _ = area
    inner = (slice(block.y0 - y0, block.y1 - y0), slice(block.x0 - x0, block.x1 - x0))
    ids = np.unique(region[inner])
    ids = ids[ids > 0]
    lookup = np.zeros(int(region.max()) + 1, np.uint32)
    lookup[ids] = np.arange(1, len(ids) + 1, dtype=np.uint32)
    target = _scratch_array(plan, k).with_config({"write_empty_chunks": True})
    target[block.z, block.y0 : block.y1, block.x0 : block.x1] = lookup[region[inner]]
    ring = lookup[region]
    ring[inner] = 0
    packed = io.BytesIO()
    np.savez_compressed(packed, area=np.array(area), ring=ring, count=np.array(len(ids)))
    plan.cut_file(block, k).write_bytes(packed.getvalue())  # whole or not at all


def cut_affinities(plan: CellsPlan, block: Block, k: int, area: tuple[int, int, int, int], affinities: np.ndarray) -> None:
    """Pass 1 for an affinity model: the mutex watershed of the area's affinities (C, h, w) at
    candidate ``k``'s long-range bias."""
    cfg = plan.segment
    region = mutex_watershed(affinities, plan.offsets, cfg.bias, plan.biases[k], cfg.min_size, cfg.long_range_stride)
    _save_cut(plan, block, k, area, region)


def cut_map_block(job: dict, block: Block) -> str:
    """Pass 1 for a membrane model (a Dask task): the seeded watershed of the map as written
    (read back with the halo; uint8 maps in their steps of 1/255)."""
    import zarr

    plan: CellsPlan = job["cells"]
    area = block.area(SEGMENT_HALO, plan.shape[1:])
    stored = zarr.open_array((Place(job["output"]) / "0").zarr(read_only=True), mode="r", zarr_format=2)
    page = stored[block.z, area[0] : area[1], area[2] : area[3]]
    interior = page.astype(np.float32) / 255.0 if page.dtype == np.uint8 else page.astype(np.float32)
    region = seeded_watershed(interior, plan.segment.seed_threshold, plan.segment.min_size, plan.segment.seed_dynamics)
    _save_cut(plan, block, 0, area, region)
    return block.name


# --- passes 2-5, run by the client -------------------------------------------------------------

def cut_counts(plan: CellsPlan, blocks: list[Block], k: int, scheduler: str | None, workers: int) -> np.ndarray:
    """Pass 2 for candidate ``k``: each block's cells' count."""
    return np.array(run_blocks(_cut_count, {"plan": plan, "k": k}, blocks, scheduler, workers, False, desc="counts"), np.int64)


def stitch_cells(plan: CellsPlan, blocks: list[Block], k: int, counts: np.ndarray, scheduler: str | None, workers: int,
                 progress: bool) -> dict:
    """Passes 3 to 5 over the blocks cut at candidate ``k``, whose cells' counts are ``counts``:
    writes the labels; returns the cells' count and the bias."""
    job = {"plan": plan, "k": k, "offsets": np.concatenate([[0], np.cumsum(counts)[:-1]])}
    pairs = run_blocks(_seam_pairs, job, blocks, scheduler, workers, progress, desc="seams")
    lut = joined_ids(int(counts.sum()), np.concatenate([p for p in pairs] + [np.zeros((0, 2), np.int64)]))
    if plan.segment.link_sections:
        lut = _linked(plan, blocks, {**job, "lut": lut}, scheduler, workers, progress)[lut]
    run_blocks(_write_labels, {**job, "lut": lut}, blocks, scheduler, workers, progress, desc="labels")
    return {"cells": int(lut.max()), "long_range_bias": plan.biases[k]}


def _cut_count(job: dict, block: Block) -> int:
    """A cut block's cells' count (read where the cuts are, so the rings never travel to the client)."""
    with _cut(job["plan"], block, job["k"]) as record:  # not the ring: the largest member
        return int(record["count"])


def _own_ids(job: dict, block: Block) -> np.ndarray:
    """The block's cells with their volume-wide ids before stitching (int64, 0 = none)."""
    plan: CellsPlan = job["plan"]
    local = _scratch_array(plan, job["k"], "r")[block.z, block.y0 : block.y1, block.x0 : block.x1].astype(np.int64)
    return np.where(local > 0, local + job["offsets"][plan.index(block.z, block.y0, block.x0)], 0)


def _ids_of_area(job: dict, z: int, area: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The volume-wide ids before stitching of every pixel of ``area`` of section z, each from
    the block that owns it, and the plan-order number of that block (both int64)."""
    plan: CellsPlan = job["plan"]
    y0, y1, x0, x1 = area
    ids = _scratch_array(plan, job["k"], "r")[z, y0:y1, x0:x1].astype(np.int64)
    owner = np.empty(ids.shape, np.int64)
    b = plan.block
    for top in range(y0 - y0 % b, y1, b):
        for left in range(x0 - x0 % b, x1, b):
            rows = slice(max(top, y0) - y0, min(top + b, y1) - y0)
            cols = slice(max(left, x0) - x0, min(left + b, x1) - x0)
            owner[rows, cols] = plan.index(z, top, left)
            part = ids[rows, cols]
            part[part > 0] += job["offsets"][owner[rows, cols][0, 0]]
    return ids, owner


def _seam_pairs(job: dict, block: Block) -> np.ndarray:
    """Pass 3 (a task): the pairs (this block's cell, a neighbour's cell) that are one cell: their
    IoU above :data:`SEAM_MIN_IOU` within the part of this block's halo that the neighbour owns
    (a cell that reaches into several neighbours is compared with each on its own part)."""
    plan: CellsPlan = job["plan"]
    with _cut(plan, block, job["k"]) as record:
        area = tuple(int(v) for v in record["area"])
        ring = record["ring"].astype(np.int64)
    zone = np.ones(ring.shape, bool)
    zone[block.y0 - area[0] : block.y1 - area[0], block.x0 - area[2] : block.x1 - area[2]] = False
    mine = np.where(ring > 0, ring + job["offsets"][plan.index(block.z, block.y0, block.x0)], 0)[zone]
    theirs, owner = (values[zone] for values in _ids_of_area(job, block.z, area))
    both = (mine > 0) & (theirs > 0)
    if not both.any():
        return np.zeros((0, 2), np.int64)
    # my cells' sizes within each neighbour's part; a neighbour's cell lies in its part only
    keys_mine, size_mine = tuple_counts(mine[mine > 0], owner[mine > 0])
    ids_theirs, size_theirs = np.unique(theirs[theirs > 0], return_counts=True)
    triples, shared = tuple_counts(mine[both], theirs[both], owner[both])
    union = (size_mine[_column_index(keys_mine, triples[[0, 2]])]
             + size_theirs[np.searchsorted(ids_theirs, triples[1])] - shared)
    return triples[:2, shared / union > SEAM_MIN_IOU].T


def _column_index(sorted_keys: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Positions of the columns of ``wanted`` (2, m) among the lexicographically sorted columns
    of ``sorted_keys`` (2, n), which hold all of them."""
    scale = int(max(sorted_keys[1].max(), wanted[1].max())) + 1
    return np.searchsorted(sorted_keys[0] * scale + sorted_keys[1], wanted[0] * scale + wanted[1])


def _linked(plan: CellsPlan, blocks: list[Block], job: dict, scheduler, workers, progress) -> np.ndarray:
    """Pass 4: the look-up table from stitched 2-D ids to 3-D objects."""
    counted = run_blocks(_link_counts, job, blocks, scheduler, workers, progress, desc="links")
    count = int(job["lut"].max())
    sizes = np.zeros(count + 1, np.int64)
    overlaps: dict[tuple[int, int], int] = {}
    for (ids, size), pairs in counted:
        np.add.at(sizes, ids, size)
        for pair, n in pairs.items():
            overlaps[pair] = overlaps.get(pair, 0) + n
    return joined_ids(count, matches(overlaps, sizes, plan.segment.link_iou))


def _link_counts(job: dict, block: Block) -> tuple[tuple[np.ndarray, np.ndarray], dict[tuple[int, int], int]]:
    """Pass 4 (a task): the sizes of the block's stitched cells, and their overlaps with the
    cells of the same pixels one section below."""
    here = job["lut"][_own_ids(job, block)]
    sizes = np.unique(here[here > 0], return_counts=True)
    if block.z == 0:
        return sizes, {}
    below = job["lut"][_ids_of_area(job, block.z - 1, (block.y0, block.y1, block.x0, block.x1))[0]]
    return sizes, overlaps_of(below, here)


def _write_labels(job: dict, block: Block) -> str:
    """Pass 5 (a task): the block's final ids, written."""
    import zarr

    plan: CellsPlan = job["plan"]
    target = zarr.open_array(Place(plan.labels).zarr(), mode="r+", zarr_format=2).with_config({"write_empty_chunks": True})
    target[block.z, block.y0 : block.y1, block.x0 : block.x1] = job["lut"][_own_ids(job, block)]
    return block.name
