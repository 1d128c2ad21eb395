"""`counting="device"`: the per-activation counting done where the activations are (METHOD.md "Counting").

Per forward batch and layer, on the device, from the detail rows' fired mask (rows, F): each neuron's
activation count, its exact count of every (neuron, k-gram) pair for k = 1, 2, 3 (a sort of the
batch's activations by (neuron, k-gram) and a run-length count: `torch.unique`), and its activations
by position, summed into a dense (T, F) int32 counter per layer that stays on the device. Only the
compact (neuron, k-gram, count) triples go to the host, where the counting thread merges them into
the same Misra-Gries summaries the bits would have filled (`NeuronStats.merge_counted`; the weighted
merge keeps every exact count and certified bound: rust/core/src/stats/counted.rs). Position counters
go to the host at each `flush` (checkpoints, the end) and, in layer-major execution, when the next
layer starts. The state is the one host counting makes: checkpoints, resumes and shards mix freely.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from .capture import BitCapture, pack_bits
from .stats import NeuronStats

ID_BITS = 21  # token ids per n-gram key, as the core packs them (oldest highest)


def resolve(requested: str, device: torch.device) -> tuple[str, str]:
    """Where the counting runs, and why (printed and stored in the metadata)."""
    if requested != "auto":
        return requested, "requested"
    # The project's rule: a path becomes the default once a GPU measurement shows it faster (issue 22).
    return "host", "auto: the host counts until a GPU measurement shows the device faster"


def kgram_codes(tokens: np.ndarray, positions: np.ndarray, bos: int | None) -> list[tuple[np.ndarray, np.ndarray]]:
    """For k = 1, 2, 3: the distinct k-gram keys the rows add (as the core packs them) and each row's index
    into them, -1 where the row adds none: BOS rows, and n-grams reaching before the sequence start (the
    previous row must be the previous position of the same sequence)."""
    t, p = tokens.astype(np.int64), positions.astype(np.int64)
    n = len(t)
    counted = np.ones(n, bool) if bos is None else t != bos
    step = np.zeros(n, bool)  # row i continues row i - 1's sequence
    step[1:] = (p[1:] >= 1) & (p[:-1] + 1 == p[1:])
    step2 = np.zeros(n, bool)
    step2[1:] = step[1:] & step[:-1]
    bigram, trigram = np.zeros(n, np.int64), np.zeros(n, np.int64)
    bigram[1:] = (t[:-1] << ID_BITS) | t[1:]
    trigram[2:] = (t[:-2] << (2 * ID_BITS)) | bigram[2:]
    out = []
    for keys, valid in ((t, counted), (bigram, counted & step), (trigram, counted & step2)):
        distinct, index = np.unique(keys[valid], return_inverse=True)
        code = np.full(n, -1, np.int64)
        code[valid] = index.reshape(-1)
        out.append((distinct, code))
    return out


def whole_sequences(positions: np.ndarray) -> int | None:
    """L when the rows are whole sequences of positions 0..L-1 one after another (every batch the executors
    run), else None."""
    starts = int(np.count_nonzero(positions == 0))
    if not starts or len(positions) % starts:
        return None
    length = len(positions) // starts
    return length if np.array_equal(positions, np.tile(np.arange(length), starts)) else None


# The reduction's temporaries take a few int64 words per activation (indices, sort keys, unique pairs, counts):
# it runs over slices of neurons of at most this many (row, neuron) cells, which bounds them at any density.
REDUCE_CELLS = 1 << 26


def reduce_detail(fired: torch.Tensor, codes: list[tuple[torch.Tensor, torch.Tensor]], positions: torch.Tensor,
                  sequence_length: int | None, max_positions: int,
                  cells: int = REDUCE_CELLS) -> tuple[torch.Tensor, list[int], torch.Tensor]:  # fmt: skip
    """One layer's detail rows, on their device: (rows, F) fired mask -> (flat, sizes, by_position).

    flat (int64) holds the F activation counts, then per k = 1, 2, 3 the pairs' `neuron << 32 | count`
    and then their keys, sorted by (neuron, key), `sizes[k]` of each (pairs of neuron F are padding: see
    `unpack`); by_position: (L, F) counts of positions 0..L-1 (L = sequence_length, else max_positions)."""
    n, f = fired.shape
    width = max(1, cells // max(n, 1))
    pieces: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in codes]  # per kind, per slice
    if sequence_length is not None:  # whole sequences: a sum over them, no scatter
        b = n // sequence_length
        by_position = fired.view(b, sequence_length, f).sum(0, dtype=torch.uint8 if b < 256 else torch.int32)
    else:
        by_position = torch.zeros((max_positions, f), dtype=torch.int32, device=fired.device)
    for lo in range(0, f, width):
        part = fired[:, lo : lo + width]
        rows, neurons = part.nonzero(as_tuple=True)
        if len(rows) == 0:
            continue
        for kind, (keys, code) in zip(pieces, codes):
            distinct = len(keys)
            if distinct == 0:
                continue
            c = code[rows]
            # Pairs of rows that add no k-gram sort last as one (neuron F) pair, dropped on the host: no wait
            # for a count of the valid ones here.
            pair = torch.where(c >= 0, (neurons + lo) * distinct + c, f * distinct)
            unique, counts = torch.unique(pair, return_counts=True)
            kind.append(((unique // distinct) << 32 | counts, keys[unique % distinct]))
        if sequence_length is None:  # rows that are not whole sequences: a scatter of the activations
            w = part.shape[1]
            flat_pos = torch.bincount(positions[rows] * w + neurons, minlength=max_positions * w)
            by_position[:, lo : lo + w] += flat_pos.view(max_positions, w).to(torch.int32)
    parts, sizes = [fired.sum(0)], [f]
    for kind in pieces:
        parts += [pairs for pairs, _ in kind] + [keys for _, keys in kind]
        sizes.append(sum(len(pairs) for pairs, _ in kind))
    return torch.cat(parts), sizes, by_position


def unpack(flat: np.ndarray, sizes: list[int], n_neurons: int) -> tuple:
    """`reduce_detail`'s flat counts (on the host) -> what NeuronStats.merge_counted takes for the layer."""
    f = sizes[0]
    out: list[Any] = [flat[:f].view(np.uint64)]
    at = f
    for m in sizes[1:]:
        pairs, keys = flat[at : at + m], flat[at + m : at + 2 * m]
        at += 2 * m
        real = pairs >> 32 != n_neurons
        pairs, keys = pairs[real], keys[real]
        out.append(((pairs >> 32).astype(np.uint32), keys, (pairs & 0xFFFFFFFF).astype(np.uint32)))
    return tuple(out)


class DeviceCapture(BitCapture):
    """BitCapture with the detail rows counted on the device (`reduce_detail`); the host merges. Examples
    (issue 18), when on, still get the bits: their random sample is drawn on the host."""

    def __init__(self, neuron_modules: list[Any], stats: NeuronStats, threshold: float = 0.0,
                 examples: Any = None) -> None:  # fmt: skip
        cfg = stats.config
        self.n_neurons, self.max_positions, self.bos = cfg["n_neurons"], cfg["max_positions"], cfg["bos_token_id"]
        self.codes: list[tuple[np.ndarray, np.ndarray]] = []  # per k: distinct keys, each detail row's index
        self.codes_on: dict[torch.device, tuple] = {}
        self.sequence_length: int | None = None
        self.batch_positions: list[tuple[int, torch.Tensor]] = []  # (layer, counts) of the running batch
        self.positions: dict[int, torch.Tensor] = {}  # layer -> committed (T, F) int32 counts, on the device
        super().__init__(neuron_modules, stats, threshold, examples)

    def set_rows(self, token_ids: np.ndarray, positions: np.ndarray, detail_rows: int | None = None,
                 first_sequence: int | None = None, source_ids: np.ndarray | None = None) -> None:  # fmt: skip
        super().set_rows(token_ids, positions, detail_rows, first_sequence, source_ids)
        self.codes = kgram_codes(self.rows[0], self.rows[1], self.bos)
        self.codes_on = {}
        self.sequence_length = whole_sequences(self.rows[1])
        self.batch_positions = []

    def _on(self, device: torch.device) -> tuple:
        if device not in self.codes_on:
            codes = [(torch.from_numpy(k).to(device), torch.from_numpy(c).to(device)) for k, c in self.codes]
            self.codes_on[device] = (codes, torch.from_numpy(self.rows[1].astype(np.int64)).to(device))
        return self.codes_on[device]

    def _capture(self, layer: int, x: torch.Tensor, fired: torch.Tensor) -> tuple:
        codes, positions = self._on(x.device)
        flat, sizes, by_position = reduce_detail(fired, codes, positions, self.sequence_length,
                                                 self.max_positions)  # fmt: skip
        self.batch_positions.append((layer, by_position))
        host, event = self._to_host(flat)
        bits, bits_event = self._to_host(pack_bits(fired)) if self.examples is not None else (None, None)
        return (layer, (host, sizes, bits), (event, bits_event))

    def commit(self, done: Any) -> None:
        if self.error is not None:
            raise self.error
        batch, self.batch_positions = self.batch_positions, []
        for layer, counts in batch:
            if layer not in self.positions:
                self.positions[layer] = torch.zeros((self.max_positions, counts.shape[1]), dtype=torch.int32,
                                                    device=counts.device)  # fmt: skip
            self.positions[layer][: len(counts)] += counts
        if batch:  # layer-major: the layers not in this batch are done for this block; their counts leave
            for layer in [k for k in self.positions if k not in {b[0] for b in batch}]:
                self.send_block()  # queued in order after that layer's last counts
                self.pending.put(("positions", layer, *self._to_host(self.positions.pop(layer))))
        super().commit(done)

    def _count_block(self, block: Any) -> None:
        if isinstance(block, tuple):  # ("positions", layer, host counts, copy event)
            _, layer, counts, event = block
            if event is not None:
                event.synchronize()
            t0 = time.perf_counter()
            self.stats.add_position_counts(layer, counts.numpy().view(np.uint32))
            self.count_seconds += time.perf_counter() - t0
            return
        bits: dict[int, list] = {}
        for batch, tokens, positions, _ in block:
            counted = {}
            for layer, (host, sizes, packed), events in batch:
                for e in events:
                    if e is not None:
                        e.synchronize()
                counted[layer] = unpack(host.numpy(), sizes, self.n_neurons)
                if packed is not None:
                    bits.setdefault(layer, []).append(packed.numpy().view(np.uint64))
            t0 = time.perf_counter()
            self.stats.merge_counted(counted, tokens, positions)
            self.count_seconds += time.perf_counter() - t0
        t0 = time.perf_counter()
        if bits:
            self._count_examples(bits, block)
        self.count_seconds += time.perf_counter() - t0

    def _add_sums(self) -> None:
        """The device's position counters into `stats` too (the counting thread is idle): each taken out
        before it is added, as the activation sums are."""
        consistent, self.consistent = self.consistent, False
        while self.positions:
            layer, counts = self.positions.popitem()
            self.stats.add_position_counts(layer, counts.cpu().numpy().view(np.uint32))
        self.consistent = consistent
        super()._add_sums()

    def close(self) -> None:
        self.batch_positions = []  # an uncommitted batch's counts are dropped with its bits
        super().close()
