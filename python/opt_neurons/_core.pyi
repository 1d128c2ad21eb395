"""Type stubs for the compiled Rust core (opt_neurons_core via PyO3)."""

import os
from typing import Any, Sequence

import numpy as np
import numpy.typing as npt

__version__: str

DEFAULT_CAPACITY: int

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
    def add_activity_counts(self, layers: Sequence[int], counts: Sequence[npt.NDArray[np.uint64]], n_rows: int) -> None: ...
    def merge(self, other: NeuronStats) -> None: ...
    def merge_file(self, path: str | os.PathLike[str]) -> None: ...
    def finalize(
        self,
        *,
        coverage: float = 0.95,
        token_hit_rate: float = 0.95,
        detector_share: float = 0.95,
        max_tokens: int = 5,
        max_trigrams: int = 50,
        mi_threshold: float = 0.05,
        active_level: float = 0.5,
        low: float = 0.05,
        strong_low: float = 0.01,
        high: float = 0.95,
        strong_high: float = 0.99,
        min_oscillations: int = 3,
        smoothing_half_width: int = 0,
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
    summed_rows: int
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
    def load(path: str | os.PathLike[str]) -> Examples: ...
