"""Public accumulator API: feed packed bitmasks captured by any tool, merge shards, finalize."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from . import _core
from .errors import DataError, IncompatibleStateError, ShapeError
from .params import Thresholds


def _array(a: Any, name: str) -> np.ndarray:
    """A numpy array of numpy/torch/array-like input; what numpy cannot take is a named error."""
    if hasattr(a, "detach"):  # torch tensor
        a = a.detach().cpu().numpy()
    try:
        return np.asarray(a)
    except (ValueError, TypeError) as e:
        raise ShapeError(f"{name} must be an array, got {type(a).__name__} ({e})") from None


def _integers(a: np.ndarray, name: str) -> None:
    # Empty lists become float arrays: nothing to truncate there.
    if a.size and a.dtype.kind not in "iub":
        raise DataError(f"{name} must hold integers, got dtype {a.dtype}")


def _by_layer(d: Any, method: str, what: str) -> Mapping:
    if not isinstance(d, Mapping):
        raise ShapeError(f"{method} takes a dict {{layer: {what}}}, got {type(d).__name__}")
    return d


def as_bits(bits: Any) -> np.ndarray:
    """(rows, words) uint64 view of packed bits given as numpy/torch, uint64 or int64."""
    bits = _array(bits, "bits")
    if bits.ndim != 2:
        raise ShapeError(f"bits must be 2-D (rows, ceil(n_neurons/64)), got shape {bits.shape}")
    if bits.dtype == np.int64:
        bits = bits.view(np.uint64)
    elif bits.dtype != np.uint64:
        raise DataError(f"bits must be uint64 or int64 words, got {bits.dtype}")
    return np.ascontiguousarray(bits)


def as_u32(a: Any, name: str) -> np.ndarray:
    a = _array(a, name)
    if a.ndim != 1:
        raise ShapeError(f"{name} must be 1-D (rows,), got shape {a.shape}")
    _integers(a, name)
    if a.size and (a.min() < 0 or a.max() > np.iinfo(np.uint32).max):
        raise DataError(f"{name} must be non-negative 32-bit integers")
    return np.ascontiguousarray(a, dtype=np.uint32)


class NeuronStats:
    """Streaming neuron statistics: counts per neuron, per (neuron, position), per (neuron, token id)
    and per (neuron, n-gram), from activation bitmasks (bit j of word w = neuron 64 w + j).

    Every layer must be updated with the same rows; layer 0's updates also count the data.
    Accumulators of shards add up with `merge`; `finalize` returns the tables.
    """

    def __init__(
        self,
        n_layers: int,
        n_neurons: int,
        vocab_size: int,
        max_positions: int,
        *,
        bos_token_id: int | None = 2,
        ngram_capacity: int = _core.DEFAULT_CAPACITY,
        n_sources: int = 0,
    ) -> None:
        """n_sources: sources of the data whose activations are also counted apart (`add_source_counts`;
        fewer than 2: none)."""
        self._core = _core.NeuronStats(
            n_layers,
            n_neurons,
            vocab_size,
            max_positions,
            bos_token_id=bos_token_id,
            ngram_capacity=ngram_capacity,
            n_sources=n_sources,
        )

    @classmethod
    def _wrap(cls, core: _core.NeuronStats) -> NeuronStats:
        self = cls.__new__(cls)
        self._core = core
        return self

    @property
    def config(self) -> dict:
        return self._core.config

    @property
    def rows(self) -> int:
        return self._core.rows

    def update(self, layer: int, bits: Any, token_ids: Any, positions: Any) -> None:
        self._core.update(layer, as_bits(bits), as_u32(token_ids, "token_ids"), as_u32(positions, "positions"))

    def update_activity(self, layer: int, bits: Any) -> None:
        """Rows that count towards frequency and dead neurons only (no token, n-gram or position
        statistics): the paper counted dead neurons over 20 M tokens and the rest over 5 M."""
        self._core.update_activity(layer, as_bits(bits))

    def update_layers(self, bits_by_layer: dict[int, Any], token_ids: Any, positions: Any) -> None:
        """`update` of several layers with the same rows, in one parallel pass (a small model's layer
        alone gives a many-core host too little to do at once). Same result as one call per layer.
        A layer's bits may be one array or a list of arrays holding its rows in order (the batches of a
        block where they were copied to: joining them would cost a copy of every bit)."""
        layers = list(_by_layer(bits_by_layer, "update_layers", "bits"))
        bits = [[as_bits(b) for b in (c if isinstance(c, (list, tuple)) else [c])] for c in bits_by_layer.values()]
        self._core.update_layers(layers, bits, as_u32(token_ids, "token_ids"), as_u32(positions, "positions"))

    @property
    def detail_rows(self) -> int:
        """Rows counted with full statistics (`update`); `rows` counts every row."""
        return self._core.detail_rows

    def add_activity_counts(self, counts_by_layer: dict[int, Any], n_rows: int) -> None:
        """Activation-only rows already summed per neuron (on the GPU: no bits copied): counts[j] of
        the `n_rows` rows fired neuron j. Same result as `update_activity` with those rows' bits."""
        layers = list(_by_layer(counts_by_layer, "add_activity_counts", "counts"))
        counts = []
        for layer in layers:
            c = _array(counts_by_layer[layer], f"counts of layer {layer}")
            if c.ndim != 1 or (c.size and c.dtype.kind in "iuf" and c.min() < 0):
                raise DataError(f"counts of layer {layer} must be 1-D and non-negative, got shape {c.shape}")
            _integers(c, f"counts of layer {layer}")
            counts.append(np.ascontiguousarray(c, dtype=np.uint64))
        self._core.add_activity_counts(layers, counts, n_rows)

    @property
    def n_sources(self) -> int:
        """Sources whose activations are counted apart (0: none)."""
        return self._core.n_sources

    def add_source_counts(self, counts_by_layer: dict[int, Any], rows: Any) -> None:
        """Activations per (source, neuron) of rows also given to the updates above, already summed (on the
        device): counts[s, j] of the rows[s] rows of source s fired neuron j. Every row of every layer must be
        split so before `finalize`."""
        layers = list(_by_layer(counts_by_layer, "add_source_counts", "counts"))
        counts = []
        for layer in layers:
            c = _array(counts_by_layer[layer], f"per-source counts of layer {layer}")
            if c.ndim != 2 or (c.size and c.dtype.kind in "iuf" and c.min() < 0):
                raise DataError(f"per-source counts of layer {layer} must be 2-D (sources, neurons) and "
                                f"non-negative, got shape {c.shape}")  # fmt: skip
            _integers(c, f"per-source counts of layer {layer}")
            counts.append(np.ascontiguousarray(c, dtype=np.uint64))
        r = _array(rows, "rows")
        _integers(r, "rows")
        if r.ndim != 1 or (r.size and r.min() < 0):
            raise DataError(f"rows must be 1-D (sources,) and non-negative, got shape {r.shape}")
        self._core.add_source_counts(layers, counts, np.ascontiguousarray(r, dtype=np.uint64))

    def source_counts(self, layer: int) -> np.ndarray:
        """(n_sources, n_neurons) uint64: the layer's activations per source."""
        return self._core.source_counts(layer)

    def source_rows(self) -> np.ndarray:
        """(n_sources,) uint64: tokens counted per source."""
        return self._core.source_rows()

    def merge_counted(self, counted_by_layer: dict[int, Any], token_ids: Any, positions: Any) -> None:
        """Detail rows counted elsewhere (the device: device_counting.py): counted_by_layer[layer] =
        (activation counts (n_neurons,), then (neurons, keys, counts) of tokens, bigrams and trigrams, each
        sorted by neuron; keys packed as the core packs them, 21 bits per id, oldest highest). Adds what
        `update_layers` would for those rows' bits, except the position counts (`add_position_counts`); the
        summaries keep every exact count and certified bound (rust/core/src/stats/counted.rs)."""
        layers = list(_by_layer(counted_by_layer, "merge_counted", "counts"))
        counted: list[Any] = []
        for layer in layers:
            active, *kinds = counted_by_layer[layer]
            arrays: list[Any] = [np.ascontiguousarray(_array(active, "activation counts"), np.uint64)]
            for (neurons, keys, counts), key_type in zip(kinds, (np.uint32, np.uint64, np.uint64)):
                arrays.append((np.ascontiguousarray(neurons, np.uint32), np.ascontiguousarray(keys, key_type),
                               np.ascontiguousarray(counts, np.uint32)))  # fmt: skip
            counted.append(tuple(arrays))
        self._core.merge_counted_layers(layers, counted, as_u32(token_ids, "token_ids"), as_u32(positions, "positions"))

    def add_position_counts(self, layer: int, counts: Any) -> None:
        """One layer's activations by position counted elsewhere: (max_positions, n_neurons) counts, added
        to the state's (the rows they came from are counted by `merge_counted`)."""
        c = _array(counts, "position counts")
        if c.ndim != 2:
            raise ShapeError(f"position counts must be 2-D (max_positions, n_neurons), got shape {c.shape}")
        _integers(c, "position counts")
        self._core.add_position_counts(layer, np.ascontiguousarray(c, np.uint32))

    def merge(self, other: NeuronStats) -> None:
        if not isinstance(other, NeuronStats):
            raise IncompatibleStateError(f"merge takes a NeuronStats, got {type(other).__name__}")
        self._core.merge(other._core)

    def merge_file(self, path: str | os.PathLike[str]) -> None:
        """`merge` of a state written by `save`, read one layer at a time (a big model's second state is
        never whole in memory). The file is verified whole (checksum, settings) before anything is added;
        should reading still fail midway (an IO error), this state is marked unusable: every later call
        raises UnusableStateError."""
        self._core.merge_file(os.fspath(path))

    def memory_bytes(self) -> int:
        return self._core.memory_bytes()

    def memory_bound(self) -> int:
        """The most the accumulators can take however many tokens are counted (every neuron live, every
        summary full, and the data's token and position totals); the data's own n-gram tables come on
        top (see host_memory.DATA_BYTES_PER_TOKEN)."""
        return self._core.memory_bound()

    def position_counts(self, layer: int, neuron: int) -> np.ndarray:
        return self._core.position_counts(layer, neuron)

    def token_counts(self, layer: int, neuron: int) -> tuple[np.ndarray, np.ndarray, int]:
        """(token ids, counts, slack), heaviest first: exact when slack == 0; otherwise each count
        may undercount by up to slack, and a token not listed has at most slack activations."""
        return self._core.token_counts(layer, neuron)

    def position_totals(self) -> np.ndarray:
        return self._core.position_totals()

    def token_occurrences(self) -> np.ndarray:
        return self._core.token_occurrences()

    def to_bytes(self) -> bytes:
        return self._core.to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> NeuronStats:
        return cls._wrap(_core.NeuronStats.from_bytes(data))

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the state to a file, streamed (a big model's state is never copied in memory)."""
        self._core.save(os.fspath(path))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> NeuronStats:
        return cls._wrap(_core.NeuronStats.load(os.fspath(path)))

    def __getstate__(self) -> bytes:
        return self.to_bytes()

    def __setstate__(self, state: bytes) -> None:
        self._core = _core.NeuronStats.from_bytes(state)

    def finalize(self, **thresholds: Any) -> dict[str, np.ndarray]:
        """The per-neuron columns the core computes (counts, coverage, detectors, positional analysis), as
        numpy arrays; `tables.build_tables` turns them into the tables. thresholds: any field of `Thresholds`
        the core takes (the others are ignored here)."""
        t = Thresholds.from_overrides(thresholds)
        return self._core.finalize(**t.core_kwargs())
