"""Forward hooks that turn neuron-module outputs (OPT's fc1, a family's activation: architectures.py)
into packed activation bitmasks on the device and hand
them to the Rust core on a worker thread, so counting overlaps the forward pass.

Only bits leave the device (1/16 of fp16 activations), and for rows past `detail_tokens` only a
count per neuron, summed there until the next checkpoint; float activations are never copied.
With `counting="device"` (device_counting.py) the detail rows leave it as counts instead.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

import numpy as np
import torch

from .errors import ShapeError
from .finite import FiniteCheck
from .heap import TRIM_EVERY, release_free_heap
from .host_thread import run_for
from .schedule import Cursor
from .source_split import SourceSplit
from .stats import NeuronStats

# Byte k (0 or 1) of a little-endian u64, times this, lands on bit 56 + k with no carries into the top
# byte (checked on all 256 patterns in tests): 8 neurons' bits -> one byte in a multiply and a shift.
GATHER_BYTE = 0x0102040810204080


# Committed batches are counted in blocks of at least this many rows (the default batch: 8 x 2048): a
# core call visits each neuron's tables once, so larger calls count faster (benches/RESULTS.md). Smaller batches wait for the next ones; the result is the same, row for row.
BLOCK_ROWS = 16384


def pack_bits(fired: torch.Tensor) -> torch.Tensor:
    """(rows, F) bool (output > threshold: the firing rule) -> (rows, ceil(F/64)) int64 words; bit j of
    word w = neuron 64w + j. Bytes are assembled little-endian, as the host reads them."""
    if not fired.is_cuda:  # numpy's packbits beats tensor ops on the CPU (RESULTS.md)
        words = -(-fired.shape[1] // 64)
        bits = np.packbits(fired.numpy(), axis=1, bitorder="little")
        if bits.shape[1] != words * 8:
            bits = np.pad(bits, ((0, 0), (0, words * 8 - bits.shape[1])))
        return torch.from_numpy(np.ascontiguousarray(bits).view(np.int64))
    return pack_bits_tensor(fired)


def pack_bits_tensor(fired: torch.Tensor) -> torch.Tensor:
    """pack_bits in four tensor kernels (compare, multiply, shift, narrow), on any device: per-layer
    kernel launches, not arithmetic, are what packing costs next to a small model's forward pass."""
    f = fired.shape[1]
    b = fired
    if f % 64:
        b = torch.nn.functional.pad(b, (0, 64 - f % 64))
    eights = b.contiguous().view(torch.int64)  # (rows, F/8): byte k of each = neuron 8m + k
    return ((eights * GATHER_BYTE) >> 56).to(torch.uint8).view(torch.int64)


def count_active(fired: torch.Tensor) -> torch.Tensor:
    """(rows, F) bool (output > threshold) -> (F,) int64: rows where each neuron fires (the rows that
    count towards frequency and dead neurons only)."""
    if not fired.is_cuda:  # numpy's byte sum beats torch's bool sum on the CPU (RESULTS.md)
        return torch.from_numpy(fired.numpy().view(np.uint8).sum(0, dtype=np.int64))
    return fired.sum(0)


def _joined(parts: list[np.ndarray]) -> np.ndarray:
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


class BitCapture:
    """Hooks every layer's neuron module (a neuron fires where its output is > `threshold`). Per forward batch: `set_rows`, run the model, then `commit`.

    A batch is counted only once it is committed, so an interrupted forward pass leaves nothing
    half-counted. Detail rows' bits are counted on a worker thread, overlapping the next forward
    passes, in blocks of at least BLOCK_ROWS rows; the other rows' activation counts stay summed on
    the device. `flush` puts everything committed into the statistics.
    """

    def __init__(
        self, neuron_modules: list[Any], stats: NeuronStats, threshold: float = 0.0, examples: Any = None
    ) -> None:
        self.stats = stats
        self.threshold = threshold
        self.rows: tuple[np.ndarray, np.ndarray, int] = (
            np.empty(0, np.uint32),
            np.empty(0, np.uint32),
            0,
        )  # detail tokens, positions, other rows
        self.examples = examples  # an ExampleTracker (example_tracker.py), or None
        self.batch: list = []  # (layer, host bits, copy event) of the forward pass running
        self.batch_counts: list = []  # (layer, activation counts on the device) of its other rows
        self.sums: dict[int, torch.Tensor] = {}  # committed activation counts per layer, not yet in stats
        self.sum_rows: dict[int, int] = {}
        # With named sources (stats.n_sources): each batch's rows by source, the (layer, per-source counts on
        # the device) of the forward pass running, and the committed ones with their rows per source.
        self.n_sources = stats.n_sources  # read once: the counting thread holds the state while it counts
        self.split: SourceSplit | None = None
        self.batch_sources: list = []
        self.source_sums: dict[int, torch.Tensor] = {}
        self.source_rows: dict[int, np.ndarray] = {}
        self.block: list = []  # committed (batch, tokens, positions) of the same layers, to count in one call
        self.block_rows = 0
        self.pending: queue.Queue = queue.Queue(maxsize=2)  # blocks not yet counted
        self.error: BaseException | None = None
        # Progress committed; all of it is in `stats` after `flush`. When not `consistent` (a
        # layer-major block midway, or a fold of the device sums cut short), `stats` holds part of
        # later sequences too: not a resumable point.
        self.done = Cursor()
        self.consistent = True
        # Seconds the worker spent counting (not waiting for copies or batches): when it nears the
        # forward pass's wall time, the host's counting, not the device, sets the speed.
        self.count_seconds = 0.0
        self.trimmed_at = float("-inf")  # when the heap was last trimmed (release_free_heap)
        self.copy_streams: dict[torch.device, torch.cuda.Stream] = {}  # one per GPU (device maps may span several)
        self.finite = FiniteCheck()
        self.handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(neuron_modules)]
        self.worker = threading.Thread(target=self._consume, daemon=True, name="opt-neurons-counter")
        self.worker.start()

    def set_rows(self, token_ids: np.ndarray, positions: np.ndarray, detail_rows: int | None = None,
                 first_sequence: int | None = None, source_ids: np.ndarray | None = None) -> None:  # fmt: skip
        """Token ids and positions of the rows of the next forward pass (row-major over the batch); the
        first `detail_rows` (default: all) get every statistic, the rest activation counts only.
        `first_sequence`: the data index of the batch's first sequence (examples need it). `source_ids`: the
        source of every row, when the statistics count sources (all rows count)."""
        n = len(token_ids) if detail_rows is None else detail_rows
        self.rows = (np.ascontiguousarray(token_ids[:n], np.uint32), np.ascontiguousarray(positions[:n], np.uint32),
                     len(token_ids) - n)  # fmt: skip
        self.batch, self.batch_counts, self.batch_sources = [], [], []
        if self.n_sources:
            if source_ids is None or len(source_ids) != len(token_ids):
                raise ShapeError("the statistics count sources: set_rows needs every row's source id")
            self.split = SourceSplit(source_ids, self.n_sources)
        if self.examples is not None:
            self.examples.set_rows(self.rows[1], first_sequence)

    def _hook(self, layer: int):
        def hook(module: Any, inputs: Any, output: torch.Tensor) -> None:
            x = output.reshape(-1, output.shape[-1])
            self.finite.add(layer, x)
            n = len(self.rows[0])
            fired = x > self.threshold  # the firing rule, once for everything below
            # Detail rows leave the device as bits; the others are summed there, per neuron.
            if n:
                self.batch.append(run_for(x, self._capture, layer, x[:n], fired[:n]))
            if n < len(x):
                self.batch_counts.append((layer, count_active(fired[n:])))
            if self.split is not None:
                self.batch_sources.append((layer, self.split.count(fired)))
            if self.examples is not None:
                self.examples.observe(layer, x, n, fired)

        return hook

    def _capture(self, layer: int, x: torch.Tensor, fired: torch.Tensor) -> tuple:
        """A layer's detail rows -> what the counting thread counts them from (here their bits), copied to
        the host without waiting: (layer, host copy, copy event)."""
        return (layer, *self._to_host(pack_bits(fired)))

    def _to_host(self, t: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """A device tensor -> a pinned host copy made on a side stream (the next layer's kernels need
        not wait for it), and the event that marks it done; a CPU tensor as it is."""
        if not t.is_cuda:
            return t, None
        stream = self.copy_streams.get(t.device)
        if stream is None:
            stream = self.copy_streams[t.device] = torch.cuda.Stream(t.device)
        stream.wait_stream(torch.cuda.current_stream(t.device))
        with torch.cuda.stream(stream):
            host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
            host.copy_(t, non_blocking=True)
            t.record_stream(stream)  # not reused by the allocator before the copy ends
            event = torch.cuda.Event()
            event.record(stream)
        return host, event

    def busy(self) -> bool:
        """Committed bits are waiting for the counting thread (which may be busy with others too)."""
        return self.pending.qsize() > 0

    def commit(self, done: Cursor | None) -> None:
        """Hand the finished forward pass over: its bits to the counting thread, its activation counts
        to the device sums. `done`: the progress now committed, when every layer of it is (None:
        part of a layer-major block, not a resumable point)."""
        if self.error is not None:
            raise self.error
        for layer, counts in self.batch_counts:
            self.sums[layer] = self.sums[layer].add_(counts) if layer in self.sums else counts
            self.sum_rows[layer] = self.sum_rows.get(layer, 0) + self.rows[2]
        for layer, counts in self.batch_sources:
            self.source_sums[layer] = self.source_sums[layer].add_(counts) if layer in self.source_sums else counts
            self.source_rows[layer] = self.source_rows.get(layer, 0) + self.split.rows  # type: ignore[union-attr]
        if self.batch:
            if self.block and [b[0] for b in self.batch] != [b[0] for b in self.block[0][0]]:
                self.send_block()  # a block's batches cover the same layers (one core call counts them)
            self.block.append((self.batch, *self.rows[:2], self.examples and self.examples.sequences))
            self.block_rows += len(self.rows[0])
            if self.block_rows >= BLOCK_ROWS:
                self.send_block()
        if self.examples is not None:
            self.examples.commit(len(self.rows[0]) + self.rows[2])
        self.batch, self.batch_counts, self.batch_sources = [], [], []
        self.finite.commit()
        if done is not None:
            self.done = done
        self.consistent = done is not None

    def send_block(self) -> None:
        """Hand the open block of committed batches to the counting thread now (once no more detail rows
        will come, it would otherwise wait for the end of the forward passes)."""
        # Emptied before the put: a Ctrl-C inside it loses the block (its sequences are not in the state,
        # whose rows decide where a resume starts) rather than letting close() send it twice.
        block, self.block, self.block_rows = self.block, [], 0
        if block:
            self.pending.put(block)
            # CPU forwards only (no copies from a device): on a GPU the temporaries live on the device, and a
            # trim would lock the counting threads' arenas (GBs of summaries) while it walks them.
            if not self.copy_streams and time.perf_counter() - self.trimmed_at > TRIM_EVERY:
                release_free_heap()
                self.trimmed_at = time.perf_counter()

    def _consume(self) -> None:
        while True:
            block = self.pending.get()
            try:
                if block is None:
                    return
                if self.error is None:
                    self._count_block(block)
            except BaseException as e:  # surfaced on the main thread
                self.error = e
            finally:
                self.pending.task_done()

    def _count_block(self, block: Any) -> None:
        """Count a block of committed batches (counting thread)."""
        parts: dict[int, list] = {layer: [] for layer, _, _ in block[0][0]}
        for batch, *_ in block:
            for layer, packed, event in batch:
                if event is not None:
                    event.synchronize()
                parts[layer].append(packed.numpy().view(np.uint64))
        t0 = time.perf_counter()
        tokens, positions = _joined([b[1] for b in block]), _joined([b[2] for b in block])
        # Every layer of the block in one call: one parallel pass over every layer's neurons. The
        # bits stay where they were copied to (joining a block's bits cost a copy of all of them,
        # which slowed a 1.3b forward on an H200: benches/RESULTS.md section 5a).
        self.stats.update_layers(parts, tokens, positions)
        self._count_examples(parts, block)
        self.count_seconds += time.perf_counter() - t0

    def _count_examples(self, bits: dict[int, list], block: Any) -> None:
        """The examples' random sample from the block's detail bits (counting thread)."""
        if self.examples is not None:
            self.examples.count(bits, _joined([b[3] for b in block]), _joined([b[2] for b in block]))

    def _add_sums(self) -> None:
        """Move the committed activation counts into `stats` (the counting thread is idle). Each group is
        taken out before it is added, so a Ctrl-C midway never adds one twice, and leaves the state
        marked not resumable (some layers would lack those rows)."""
        consistent, self.consistent = self.consistent, False
        by_rows: dict[int, dict[int, torch.Tensor]] = {}
        for layer, counts in self.sums.items():
            by_rows.setdefault(self.sum_rows[layer], {})[layer] = counts
        self.sums, self.sum_rows = {}, {}
        for n_rows, counts_by_layer in by_rows.items():
            self.stats.add_activity_counts(counts_by_layer, n_rows)
        by_source_rows: dict[bytes, tuple[np.ndarray, dict[int, torch.Tensor]]] = {}
        for layer, counts in self.source_sums.items():
            rows = self.source_rows[layer]
            by_source_rows.setdefault(rows.tobytes(), (rows, {}))[1][layer] = counts
        self.source_sums, self.source_rows = {}, {}
        for rows, counts_by_layer in by_source_rows.values():
            self.stats.add_source_counts(counts_by_layer, rows)
        self.consistent = consistent

    def flush(self) -> None:
        """Put everything committed into `stats`."""
        self.send_block()
        self.pending.join()
        if self.error is not None:
            raise self.error
        self.finite.check(wait=True)
        self._add_sums()

    def close(self) -> None:
        """Put everything committed into `stats`, drop an uncommitted batch, stop the thread. Idempotent."""
        if not self.worker.is_alive():
            return
        for h in self.handles:
            h.remove()
        self.batch, self.batch_counts, self.batch_sources = [], [], []
        if self.examples is not None:
            self.examples.drop()
        self.finite.drop()
        if self.error is None:
            self.send_block()
        self.pending.put(None)
        self.worker.join()
        if self.error is None:
            self.finite.check(wait=True)  # raises rather than let a non-finite batch be saved
            self._add_sums()
