"""A volume's blocks and the running of one task per block on Dask (threads in this process, or a
``dask.distributed`` cluster): what the map's prediction (:mod:`.blockwise`) and the cells'
stitching (:mod:`.stitch`) share."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import DataError
from ..io.places import Place

__all__ = ["Block", "plan_blocks", "markers_folder", "run_blocks", "BLOCK", "SEGMENT_BLOCK", "default_threads"]

BLOCK = 4096  # pixels per block side: a block recomputes 13 % of its border for its neighbours' context
# With cells a block's cut (and its halo) is held a few times over by the watersheds: the mutex
# watershed of a 2048 block takes about 3.7 GB, of a 4096 block several times that.
SEGMENT_BLOCK = 2048


def default_threads(affinity_cells: bool) -> int:
    """Threads of the in-process scheduler: two where there are the cores, since a block's
    watersheds run on one core while the network uses all (a membrane model's map and cells
    1.55x faster on 2 cores, docs/volumes.md); one for an affinity model's cells, whose mutex
    watershed holds GBs per block."""
    from ..device import usable_cores

    return 1 if affinity_cells else min(2, usable_cores())


def markers_folder(output: Place) -> Place:
    """Where the markers of finished blocks go: a hidden folder (or prefix) beside the output
    (inside it, Zarr readers would warn about a member they do not know)."""
    return output.parent / f".{output.name}.blocks"


@dataclass(frozen=True)
class Block:
    z: int
    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def name(self) -> str:
        return f"{self.z}.{self.y0}.{self.x0}"

    def area(self, halo: int, shape: tuple[int, int]) -> tuple[int, int, int, int]:
        """(y0, y1, x0, x1): the block widened by ``halo`` on every side, within the section."""
        h, w = shape
        return max(0, self.y0 - halo), min(h, self.y1 + halo), max(0, self.x0 - halo), min(w, self.x1 + halo)


def plan_blocks(shape: tuple[int, int, int], block: int) -> list[Block]:
    n, h, w = shape
    return [Block(z, y, min(y + block, h), x, min(x + block, w))
            for z in range(n) for y in range(0, h, block) for x in range(0, w, block)]


def _with_storage(task: Callable[[dict, Block], Any], storage: Any, job: dict, block: Block) -> Any:
    """``task(job, block)`` with the command's store settings in force (in a worker thread or process)."""
    from ..io.storage import using

    with using(storage):
        return task(job, block)


def run_blocks(task: Callable[[dict, Block], Any], job: dict, blocks: Sequence[Block], scheduler: str | None,
               workers: int, progress: bool, desc: str = "blocks") -> list[Any]:
    """``task(job, block)`` for every block, on the in-process scheduler with ``workers`` threads
    or on the cluster at ``scheduler``; the results in the order of ``blocks``. ``job`` goes into
    the graph once, however large (look-up tables of a whole volume's cells).

    One worker runs the tasks in the calling thread: PyTorch's threads then wait for work as they
    do in the main thread, where a second thread's team of them would not (libgomp throttles
    their spinning when a process holds more of them than cores; docs/volumes.md). Tasks may set
    PyTorch's thread count (their share of the cores); it is restored afterwards."""
    import dask

    from ..progress import progress_bar

    from ..io.storage import settings

    shared = dask.delayed(job, traverse=False)
    storage = settings()  # the command's store settings, for the places each task opens
    tasks = [dask.delayed(_with_storage, pure=False)(task, storage, shared, b, dask_key_name=f"{desc}-{b.name}")
             for b in blocks]
    bar = progress_bar(len(blocks), desc=desc, unit="block", enabled=progress)
    try:
        if scheduler is None:
            import torch
            from dask.callbacks import Callback

            threads = torch.get_num_threads()
            try:
                with Callback(posttask=lambda key, *rest: bar.update(1) if str(key).startswith(f"{desc}-") else None):
                    if workers <= 1:
                        return list(dask.compute(*tasks, scheduler="sync"))
                    return list(dask.compute(*tasks, scheduler="threads", num_workers=workers))
            finally:
                torch.set_num_threads(threads)
        from distributed import Client

        try:
            client = Client(scheduler, timeout="20s")
        except OSError as exc:
            raise DataError(f"{scheduler}: cannot reach the Dask scheduler ({exc})") from None
        with client:
            futures = client.compute(tasks)
            index = {f.key: i for i, f in enumerate(futures)}
            results: list[Any] = [None] * len(futures)
            from distributed import as_completed

            for future in as_completed(futures):
                results[index[future.key]] = future.result()  # a failed block raises here, naming its error
                bar.update(1)
            return results
    finally:
        bar.close()
