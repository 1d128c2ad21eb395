"""Non-finite activations (NaN, infinity) would silently count as "not firing" and report every neuron
of a layer dead. Each layer's output of each batch gives one flag, reduced where it lives.

On the CPU a flag is read at once, so the batch is never committed. On a GPU reading it would stall the
host until the device catches up, so flags are copied back without waiting and read one batch or more
later, and all of them before anything is saved (`check(wait=True)`): a checkpoint never holds a batch
with non-finite activations.
"""

from __future__ import annotations

import torch

from .errors import NonFiniteActivationError


def error(layer: int, dtype: torch.dtype) -> NonFiniteActivationError:
    name = str(dtype).replace("torch.", "")
    return NonFiniteActivationError(
        f"layer {layer}'s feed-forward activations hold NaN or infinity (computed in {name}): the model overflows "
        f"in this dtype or its weights are corrupt; run with dtype bfloat16 or float32 (--dtype). Checkpoints hold "
        f"only the batches before it"
    )


class FiniteCheck:
    def __init__(self) -> None:
        self.batch: list[tuple[int, torch.Tensor]] = []  # (layer, device flag) of the batch running
        self.pending: list[tuple[list[int], torch.Tensor, torch.cuda.Event, torch.dtype]] = []  # copied, unread
        self.dtype = torch.float32

    def add(self, layer: int, x: torch.Tensor) -> None:
        # A sum is NaN or infinite when an element is (float32 accumulation: fp16 values cannot overflow it).
        finite = torch.isfinite(x.sum(dtype=torch.float32))
        if not x.is_cuda:
            if not bool(finite):
                raise error(layer, x.dtype)
            return
        self.dtype = x.dtype
        self.batch.append((layer, finite))

    def commit(self) -> None:
        """The running batch's flags go to the host without waiting; flags already there are read."""
        if self.batch:
            flags = torch.stack([f for _, f in self.batch])
            host = torch.empty(flags.shape, dtype=torch.bool, pin_memory=True)
            host.copy_(flags, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            self.pending.append(([layer for layer, _ in self.batch], host, event, self.dtype))
        self.batch = []
        self.check(wait=False)

    def drop(self) -> None:
        """Forget the flags of an uncommitted batch (its counts are dropped too)."""
        self.batch = []

    def check(self, wait: bool) -> None:
        """Raise NonFiniteActivationError if a committed batch had non-finite activations (wait: read every
        flag, waiting for the device; else only those already copied)."""
        while self.pending:
            layers, host, event, dtype = self.pending[0]
            if not wait and not event.query():
                return
            event.synchronize()
            self.pending.pop(0)
            if not bool(host.all()):
                raise error(layers[int((~host).nonzero()[0])], dtype)
