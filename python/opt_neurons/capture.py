"""Forward hooks that turn fc1 outputs into packed activation bitmasks on the device and hand
them to the Rust core on a worker thread, so counting overlaps the forward pass.

Only bits leave the device (1/16 of fp16 activations); float activations are never copied.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

import numpy as np
import torch

from .stats import NeuronStats

SHIFTS = tuple(range(8))


def pack_bits(x: torch.Tensor) -> torch.Tensor:
    """(rows, F) fc1 output -> (rows, ceil(F/64)) int64 words; bit j of word w = neuron 64w + j is
    set when the output is > 0. Bytes are assembled little-endian, as the host reads them."""
    rows, f = x.shape
    words = -(-f // 64)
    if not x.is_cuda:  # numpy's packbits is ~15x faster than tensor ops on the CPU
        bits = np.packbits((x > 0).numpy(), axis=1, bitorder="little")
        if bits.shape[1] != words * 8:
            bits = np.pad(bits, ((0, 0), (0, words * 8 - bits.shape[1])))
        return torch.from_numpy(np.ascontiguousarray(bits).view(np.int64))
    b = (x > 0).to(torch.uint8)
    if words * 64 != f:
        b = torch.nn.functional.pad(b, (0, words * 64 - f))
    b = b.view(rows, words * 8, 8)
    packed = b[..., 0].clone()
    for i in SHIFTS[1:]:
        packed |= b[..., i] << i
    return packed.view(torch.int64)


class BitCapture:
    """Hooks every layer's fc1. Per forward batch: `set_rows`, run the model, then `commit`.

    A batch's bitmasks are counted only once it is committed, so an interrupted forward pass
    leaves nothing half-counted; counting of batch b overlaps the forward pass of batch b+1.
    """

    def __init__(self, fc1_modules: list[Any], stats: NeuronStats) -> None:
        self.stats = stats
        self.rows: tuple[np.ndarray, np.ndarray] | None = None
        self.batch: list = []
        self.pending: queue.Queue = queue.Queue(maxsize=2)  # committed batches not yet counted
        self.error: BaseException | None = None
        # Resumable point: every sequence before `counted_upto` is counted in all layers, and (when
        # `consistent`) nothing after it. Layer-major runs count partial blocks in between.
        self.counted_upto = 0
        self.consistent = True
        # Seconds the worker spent counting (not waiting for copies or batches): when it nears the
        # forward pass's wall time, the host's counting, not the device, sets the speed.
        self.count_seconds = 0.0
        self.handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(fc1_modules)]
        self.worker = threading.Thread(target=self._consume, daemon=True, name="opt-neurons-counter")
        self.worker.start()

    def set_rows(self, token_ids: np.ndarray, positions: np.ndarray, detail_rows: int | None = None) -> None:
        """Token ids and positions of the rows of the next forward pass (row-major over the batch); the
        first `detail_rows` (default: all) get every statistic, the rest activation counts only."""
        n = len(token_ids) if detail_rows is None else detail_rows
        self.rows = (np.ascontiguousarray(token_ids[:n], np.uint32), np.ascontiguousarray(positions[:n], np.uint32))
        self.batch = []

    def _hook(self, layer: int):
        def hook(module: Any, inputs: Any, output: torch.Tensor) -> None:
            packed = pack_bits(output.reshape(-1, output.shape[-1]))
            event = None
            if packed.is_cuda:
                host = torch.empty(packed.shape, dtype=torch.int64, pin_memory=True)
                host.copy_(packed, non_blocking=True)
                event = torch.cuda.Event()
                event.record()
                packed = host
            self.batch.append((layer, packed, event))

        return hook

    def commit(self, upto: int | None) -> None:
        """Hand the finished forward pass's bitmasks to the counting thread. `upto`: the index after
        the batch's last sequence when every layer of every sequence before it is now captured."""
        if self.error is not None:
            raise self.error
        self.pending.put((self.batch, self.rows, upto))
        self.batch = []

    def mark_done(self, upto: int) -> None:
        """Every layer of every sequence before `upto` has been committed."""
        self.commit(upto)

    def _consume(self) -> None:
        while True:
            item = self.pending.get()
            try:
                if item is None:
                    return
                batch, (tokens, positions), upto = item
                if self.error is not None:
                    continue
                for layer, packed, event in batch:
                    if event is not None:
                        event.synchronize()
                    bits = packed.numpy().view(np.uint64)
                    n = len(tokens)
                    t0 = time.perf_counter()
                    if n:
                        self.stats.update(layer, bits[:n], tokens, positions)
                    if n < len(bits):
                        self.stats.update_activity(layer, bits[n:])
                    self.count_seconds += time.perf_counter() - t0
                if upto is not None:
                    self.counted_upto, self.consistent = upto, True
                elif batch:
                    self.consistent = False
            except BaseException as e:  # surfaced on the main thread
                self.error = e
            finally:
                self.pending.task_done()

    def flush(self) -> None:
        """Wait until every committed batch is counted."""
        self.pending.join()
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        """Count every committed batch, drop an uncommitted one, stop the thread. Idempotent."""
        if not self.worker.is_alive():
            return
        for h in self.handles:
            h.remove()
        self.batch = []
        self.pending.put(None)
        self.worker.join()
