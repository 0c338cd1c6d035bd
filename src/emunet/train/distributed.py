"""Data-parallel training with torch.distributed, launched by ``torchrun``.

``torchrun`` sets RANK, WORLD_SIZE and LOCAL_RANK; with WORLD_SIZE > 1 the process group is
started with NCCL on CUDA (one process per GPU) or gloo on CPU, with a timeout on collectives
so that a dead rank ends the job instead of hanging it. Without torchrun everything here is a
no-op and training runs in one process.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from ..device import resolve_device

__all__ = ["DistContext", "setup", "teardown"]


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def mean(self, value: float) -> float:
        """Average a Python number over ranks."""
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        if dist.get_backend() == "nccl":
            t = t.cuda()
        dist.all_reduce(t)
        return float(t.item()) / self.world_size

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank (for run state that only rank 0 reads from disk)."""
        if not self.enabled:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def restarted_by_torchrun() -> bool:
    """True when torchrun's elastic agent restarted the workers after a failure."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0


def setup(device_name: str, timeout_s: float) -> tuple[DistContext, torch.device]:
    """Join the process group if launched by torchrun; return the context and this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(), resolve_device(device_name)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        # torchrun's store outlives elastic restarts; a per-restart prefix keeps the new workers
        # from reading the addresses that the dead ones published.
        store, _, _ = next(dist.rendezvous("env://", timeout=timedelta(seconds=timeout_s)))
        store = dist.PrefixStore(f"emunet/restart{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", store=store, rank=rank, world_size=world,
                                timeout=timedelta(seconds=timeout_s))
    return DistContext(rank, world, local_rank), device


def teardown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        # the DistributedDataParallel wrapper holds the process group; collected only at exit, its
        # gloo threads would be torn down with the interpreter (a guess at a rare abort of a rank,
        # "terminate called without an active exception", seen once in CI and not reproduced)
        gc.collect()
        dist.destroy_process_group()
