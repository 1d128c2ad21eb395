"""Forward hooks that turn fc1 outputs into packed activation bitmasks on the device and hand
them to the Rust core on a worker thread, so counting overlaps the forward pass.

Only bits leave the device (1/16 of fp16 activations), and for rows past `detail_tokens` only a
count per neuron; float activations are never copied.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

import numpy as np
import torch

from .stats import NeuronStats

# Byte k (0 or 1) of a little-endian u64, times this, lands on bit 56 + k with no carries into the top
# byte (checked on all 256 patterns in tests): 8 neurons' bits -> one byte in a multiply and a shift.
GATHER_BYTE = 0x0102040810204080


def pack_bits(x: torch.Tensor) -> torch.Tensor:
    """(rows, F) fc1 output -> (rows, ceil(F/64)) int64 words; bit j of word w = neuron 64w + j is
    set when the output is > 0. Bytes are assembled little-endian, as the host reads them."""
    if not x.is_cuda:  # numpy's packbits is ~15x faster than tensor ops on the CPU
        words = -(-x.shape[1] // 64)
        bits = np.packbits((x > 0).numpy(), axis=1, bitorder="little")
        if bits.shape[1] != words * 8:
            bits = np.pad(bits, ((0, 0), (0, words * 8 - bits.shape[1])))
        return torch.from_numpy(np.ascontiguousarray(bits).view(np.int64))
    return pack_bits_tensor(x)


def pack_bits_tensor(x: torch.Tensor) -> torch.Tensor:
    """pack_bits in four tensor kernels (compare, multiply, shift, narrow), on any device: per-layer
    kernel launches, not arithmetic, are what packing costs next to a small model's forward pass."""
    f = x.shape[1]
    b = x > 0
    if f % 64:
        b = torch.nn.functional.pad(b, (0, 64 - f % 64))
    eights = b.contiguous().view(torch.int64)  # (rows, F/8): byte k of each = neuron 8m + k
    return ((eights * GATHER_BYTE) >> 56).to(torch.uint8).view(torch.int64)


def count_active(x: torch.Tensor) -> torch.Tensor:
    """(rows, F) fc1 output -> (F,) int64: rows where each neuron's output is > 0 (the rows that
    count towards frequency and dead neurons only)."""
    if not x.is_cuda:  # numpy's byte sum is ~5x faster than torch's bool sum on the CPU
        return torch.from_numpy((x > 0).numpy().view(np.uint8).sum(0, dtype=np.int64))
    return (x > 0).sum(0)


class BitCapture:
    """Hooks every layer's fc1. Per forward batch: `set_rows`, run the model, then `commit`.

    A batch's bitmasks are counted only once it is committed, so an interrupted forward pass
    leaves nothing half-counted; counting of batch b overlaps the forward pass of batch b+1.
    """

    def __init__(self, fc1_modules: list[Any], stats: NeuronStats) -> None:
        self.stats = stats
        self.rows: tuple[np.ndarray, np.ndarray, int] | None = None  # detail tokens, positions, other rows
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
        self.copy_streams: dict[torch.device, torch.cuda.Stream] = {}  # one per GPU (device maps may span several)
        self.handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(fc1_modules)]
        self.worker = threading.Thread(target=self._consume, daemon=True, name="opt-neurons-counter")
        self.worker.start()

    def set_rows(self, token_ids: np.ndarray, positions: np.ndarray, detail_rows: int | None = None) -> None:
        """Token ids and positions of the rows of the next forward pass (row-major over the batch); the
        first `detail_rows` (default: all) get every statistic, the rest activation counts only."""
        n = len(token_ids) if detail_rows is None else detail_rows
        self.rows = (np.ascontiguousarray(token_ids[:n], np.uint32), np.ascontiguousarray(positions[:n], np.uint32),
                     len(token_ids) - n)  # fmt: skip
        self.batch = []

    def _hook(self, layer: int):
        def hook(module: Any, inputs: Any, output: torch.Tensor) -> None:
            x = output.reshape(-1, output.shape[-1])
            n = len(self.rows[0])
            # Detail rows leave the device as bits; the others only as a count per neuron, summed here.
            packed = pack_bits(x[:n]) if n else None
            active = count_active(x[n:]) if n < len(x) else None
            self.batch.append((layer, *self._to_host(packed, active)))

        return hook

    def _to_host(self, *parts: torch.Tensor | None) -> tuple:
        """Device tensors -> pinned host copies made on a side stream (the next layer's kernels need
        not wait for them), and the event that marks them done; CPU tensors as they are."""
        first = next((p for p in parts if p is not None), None)
        if first is None or not first.is_cuda:
            return (*parts, None)
        stream = self.copy_streams.get(first.device)
        if stream is None:
            stream = self.copy_streams[first.device] = torch.cuda.Stream(first.device)
        stream.wait_stream(torch.cuda.current_stream(first.device))
        out = []
        with torch.cuda.stream(stream):
            for p in parts:
                if p is not None:
                    host = torch.empty(p.shape, dtype=p.dtype, pin_memory=True)
                    host.copy_(p, non_blocking=True)
                    p.record_stream(stream)  # not reused by the allocator before the copy ends
                    p = host
                out.append(p)
            event = torch.cuda.Event()
            event.record(stream)
        return (*out, event)

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
                batch, (tokens, positions, n_other), upto = item
                if self.error is not None:
                    continue
                bits, active = {}, {}
                for layer, packed, counts, event in batch:
                    if event is not None:
                        event.synchronize()
                    if packed is not None:
                        bits[layer] = packed.numpy().view(np.uint64)
                    if counts is not None:
                        active[layer] = counts.numpy()
                t0 = time.perf_counter()
                # All layers of the batch in one call: one parallel pass over every layer's neurons.
                if bits:
                    self.stats.update_layers(bits, tokens, positions)
                if active:
                    self.stats.add_activity_counts(active, n_other)
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
