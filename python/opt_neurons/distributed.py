"""Data-parallel runs over several processes (torchrun / accelerate launch): each rank counts a
shard of the sequences (`shard`); rank 0 gathers the accumulators, merges them in rank order and
writes the tables. The merged counts equal one process's exactly."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
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
    """This rank's share: a contiguous slice of the detail sequences (every statistic) and one of the
    others (activation counts only), so that each rank has as much of the host's counting as the next."""
    d = data.n_detail
    parts = [
        (lo + rank * (hi - lo) // world, lo + (rank + 1) * (hi - lo) // world)
        for lo, hi in ((0, d), (d, len(data.lengths)))
    ]
    take = np.r_[tuple(slice(a, b) for a, b in parts)]
    detail = None if data.detail is None else parts[0][1] - parts[0][0]
    source_ids = None if data.source_ids is None else data.source_ids[take]
    return TokenData(data.tokens[take], data.lengths[take], data.sources, detail, source_ids=source_ids,
                     source_names=data.source_names)  # fmt: skip


def first_detail_sequence(data: TokenData, rank: int, world: int) -> int:
    """The data index of this rank's first detail sequence (`shard`'s slice): example ids are global."""
    return rank * data.n_detail // world


CHUNK_BYTES = 64 << 20  # a saved state travels in pieces of this size
SPOOL = "opt-neurons-gather"  # folder of the output folder that the states travel through


def gather_to_rank0(stats: NeuronStats, rank: int, world: int, spool_dir: str | Path | None = None,
                    examples: Any = None) -> NeuronStats | None:  # fmt: skip
    """Rank 0 gets every rank's accumulators merged in rank order; other ranks get None.

    Each rank's state travels as its saved file, in CHUNK_BYTES pieces, one rank at a time, and rank 0
    merges it from its own copy one layer at a time: a sender holds its state and one piece, rank 0 its
    state and one layer of another's (a big model's state is tens of GB; pickling it would hold two or
    three copies). `spool_dir`: where the files go (the run's output folder; default: the temp folder).
    `examples` (a `_core.Examples`, or None): merged into rank 0's the same way, after the statistics.
    """
    import torch.distributed as dist

    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    path = _spool_file(spool_dir, rank)
    try:
        if rank != 0:
            stats.save(path)
            _send_file(path, 0, device)
            if examples is not None:
                examples.save(str(path))
                _send_file(path, 0, device)
            return None
        for r in range(1, world):
            _recv_file(path, r, device)
            stats.merge_file(path)
            if examples is not None:
                _recv_file(path, r, device)
                examples.merge(type(examples).load(str(path)))
        return stats
    finally:
        path.unlink(missing_ok=True)
        if spool_dir is not None:
            with contextlib.suppress(OSError):  # other ranks' files may still be there
                path.parent.rmdir()


def _spool_file(spool_dir: str | Path | None, rank: int) -> Path:
    """Where this rank's state travels through: a fixed name in the run's output folder (a file left by
    a crashed run is overwritten and removed by the next run there; states can be tens of GB), else a
    fresh temporary file."""
    if spool_dir is None:
        fd, name = tempfile.mkstemp(prefix=f"opt-neurons-gather-rank{rank}-")
        os.close(fd)
        return Path(name)
    d = Path(spool_dir) / SPOOL
    d.mkdir(parents=True, exist_ok=True)
    return d / f"rank{rank}.state"


def _send_file(path: Path, dst: int, device: torch.device) -> None:
    import torch.distributed as dist

    dist.send(torch.tensor([path.stat().st_size], dtype=torch.int64, device=device), dst=dst)
    buf = bytearray(CHUNK_BYTES)
    with open(path, "rb") as f:
        while n := f.readinto(buf):
            dist.send(torch.frombuffer(buf, dtype=torch.uint8)[:n].to(device), dst=dst)


def _recv_file(path: Path, src: int, device: torch.device) -> None:
    import torch.distributed as dist

    size = torch.zeros(1, dtype=torch.int64, device=device)
    dist.recv(size, src=src)
    left = int(size.item())
    buf = torch.empty(min(left, CHUNK_BYTES), dtype=torch.uint8, device=device)
    with open(path, "wb") as f:
        while left:
            piece = buf[: min(left, CHUNK_BYTES)]
            dist.recv(piece, src=src)
            f.write(piece.cpu().numpy().tobytes())
            left -= len(piece)
