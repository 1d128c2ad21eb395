"""Data-parallel runs over several processes (torchrun / accelerate launch): each rank counts a
contiguous shard of the sequences; rank 0 gathers the accumulators, merges them in rank order and
writes the tables. The merged counts equal one process's exactly."""

from __future__ import annotations

import os

import torch

from .data import TokenData
from .stats import NeuronStats


def rank_world() -> tuple[int, int]:
    """(rank, world size); starts the process group when launched by torchrun with WORLD_SIZE > 1."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def device_for_rank() -> torch.device | None:
    if torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
        local = int(os.environ["LOCAL_RANK"])
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return None


def shard(data: TokenData, rank: int, world: int) -> TokenData:
    """This rank's contiguous share of the sequences."""
    n = len(data.lengths)
    lo, hi = rank * n // world, (rank + 1) * n // world
    detail = None if data.detail is None else min(max(data.detail - lo, 0), hi - lo)
    return TokenData(data.tokens[lo:hi], data.lengths[lo:hi], data.sources, detail)


def gather_to_rank0(stats: NeuronStats, rank: int, world: int) -> NeuronStats | None:
    """Rank 0 gets every rank's accumulators merged in rank order; other ranks get None. One rank's
    state travels at a time, so rank 0 holds its own and one other (not all of them at once)."""
    import torch.distributed as dist

    if rank != 0:
        dist.send_object_list([stats.to_bytes()], dst=0)
        return None
    for r in range(1, world):
        box: list = [None]
        dist.recv_object_list(box, src=r)
        stats.merge(NeuronStats.from_bytes(box[0]))
    return stats
