"""Type stubs for the compiled Rust core (opt_neurons_core via PyO3).

Kept in step with the extension by scripts/check_stub.py (run by tests/test_core_binding.py).
Errors: opt_neurons.errors classes (ShapeError, DataError, OptionError, IncompatibleStateError,
StateFileError, StateIOError, UnusableStateError), all under OptNeuronsError.
"""

import os
from typing import Any, Sequence

import numpy as np
import numpy.typing as npt

__version__: str

DEFAULT_CAPACITY: int
# Every finalize threshold with its default (the core's Default impls); params.Thresholds is built from it.
DEFAULT_THRESHOLDS: dict[str, float | int]
# A state file starts with STATE_MAGIC and the format version as two ASCII digits (b"OPTNST04").
STATE_MAGIC: bytes
STATE_FORMAT_VERSION: int

class NeuronStats:
    """Streaming per-neuron accumulators over packed activation bitmasks.

    bits: (rows, ceil(n_neurons / 64)) uint64, bit j of word w = neuron 64 w + j.
    token_ids, positions: (rows,) uint32; rows of one sequence contiguous and in order.
    Layer 0's updates also count the data (token, n-gram and position totals): every layer
    must be updated with the same rows.
    """

    def __init__(
        self,
        n_layers: int,
        n_neurons: int,
        vocab_size: int,
        max_positions: int,
        *,
        bos_token_id: int | None = 2,
        ngram_capacity: int = ...,
        n_sources: int = 0,
    ) -> None: ...
    def update(
        self,
        layer: int,
        bits: npt.NDArray[np.uint64],
        token_ids: npt.NDArray[np.uint32],
        positions: npt.NDArray[np.uint32],
    ) -> None: ...
    def update_activity(self, layer: int, bits: npt.NDArray[np.uint64]) -> None: ...
    def update_layers(
        self,
        layers: Sequence[int],
        bits: Sequence[Sequence[npt.NDArray[np.uint64]]],
        token_ids: npt.NDArray[np.uint32],
        positions: npt.NDArray[np.uint32],
    ) -> None: ...
    def add_activity_counts(
        self, layers: Sequence[int], counts: Sequence[npt.NDArray[np.uint64]], n_rows: int
    ) -> None: ...
    def add_source_counts(
        self, layers: Sequence[int], counts: Sequence[npt.NDArray[np.uint64]], rows: npt.NDArray[np.uint64]
    ) -> None: ...
    def source_counts(self, layer: int) -> npt.NDArray[np.uint64]: ...
    def source_rows(self) -> npt.NDArray[np.uint64]: ...
    @property
    def n_sources(self) -> int: ...
    def merge_counted_layers(
        self,
        layers: Sequence[int],
        counted: Sequence[
            tuple[
                npt.NDArray[np.uint64],
                tuple[npt.NDArray[np.uint32], npt.NDArray[np.uint32], npt.NDArray[np.uint32]],
                tuple[npt.NDArray[np.uint32], npt.NDArray[np.uint64], npt.NDArray[np.uint32]],
                tuple[npt.NDArray[np.uint32], npt.NDArray[np.uint64], npt.NDArray[np.uint32]],
            ]
        ],
        token_ids: npt.NDArray[np.uint32],
        positions: npt.NDArray[np.uint32],
    ) -> None: ...
    def add_position_counts(self, layer: int, counts: npt.NDArray[np.uint32]) -> None: ...
    def merge(self, other: NeuronStats) -> None: ...
    def merge_file(self, path: str | os.PathLike[str]) -> None: ...
    def finalize(
        self,
        *,
        coverage: float | None = None,
        token_hit_rate: float | None = None,
        detector_share: float | None = None,
        max_tokens: int | None = None,
        max_trigrams: int | None = None,
        min_count: int | None = None,
        mi_threshold: float | None = None,
        active_level: float | None = None,
        low: float | None = None,
        strong_low: float | None = None,
        high: float | None = None,
        strong_high: float | None = None,
        min_oscillations: int | None = None,
        smoothing_half_width: int | None = None,
        thin_spread: float | None = None,
    ) -> dict[str, Any]: ...
    def position_counts(self, layer: int, neuron: int) -> npt.NDArray[np.uint32]: ...
    def token_counts(self, layer: int, neuron: int) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.uint32], int]: ...
    def position_totals(self) -> npt.NDArray[np.uint64]: ...
    def token_occurrences(self) -> npt.NDArray[np.uint64]: ...
    def layer_rows(self) -> npt.NDArray[np.uint64]: ...
    @property
    def rows(self) -> int: ...
    @property
    def detail_rows(self) -> int: ...
    @property
    def config(self) -> dict[str, Any]: ...
    def memory_bytes(self) -> int: ...
    def memory_bound(self) -> int: ...
    def to_bytes(self) -> bytes: ...
    @staticmethod
    def from_bytes(data: bytes) -> NeuronStats: ...
    def save(self, path: str | os.PathLike[str]) -> None: ...
    @staticmethod
    def load(path: str | os.PathLike[str]) -> NeuronStats: ...

class Examples:
    """Example positions per neuron (rust/core/src/examples.rs): a bottom-k uniform sample of firing
    positions from the bitmasks, and the device-reduced top k, sums and maxima held for saving and merging."""

    def __init__(self, n_layers: int, n_neurons: int, k: int, seed: int) -> None: ...
    def update_layers(
        self,
        layers: list[int],
        bits: list[list[npt.NDArray[np.uint64]]],
        sequences: npt.NDArray[np.uint32],
        positions: npt.NDArray[np.uint32],
    ) -> None: ...
    def set_device_state(
        self,
        layer: int,
        values: npt.NDArray[np.float32],
        ids: npt.NDArray[np.uint64],
        sums: npt.NDArray[np.float64],
        maxima: npt.NDArray[np.float32],
    ) -> None: ...
    def device_state(
        self, layer: int
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.uint64], npt.NDArray[np.float64], npt.NDArray[np.float32]]: ...
    @property
    def summed_rows(self) -> int: ...
    def set_summed_rows(self, rows: int) -> None: ...
    @property
    def sampled_rows(self) -> int: ...
    @property
    def config(self) -> dict[str, Any]: ...
    def merge(self, other: Examples) -> None: ...
    def sample(self, layer: int, neuron: int) -> npt.NDArray[np.uint64]: ...
    def rows(self) -> dict[str, Any]: ...
    def sums_and_maxima(self) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float32]]: ...
    def memory_bytes(self) -> int: ...
    def memory_bound(self) -> int: ...
    def save(self, path: str | os.PathLike[str]) -> None: ...
    @staticmethod
    def scan_batch(
        x: npt.NDArray[np.float32],
        fired: npt.NDArray[np.uint8],
        n_detail: int,
        floor: npt.NDArray[np.float32],
        k: int,
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.float32]]: ...
    @staticmethod
    def load(path: str | os.PathLike[str]) -> Examples: ...
