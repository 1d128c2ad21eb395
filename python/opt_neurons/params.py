"""Every threshold of METHOD.md, with its default. `analyze()` and the CLI take each as an option.

The defaults of the core's thresholds are the Rust core's (`DetectorParams` / `PositionalParams`
`Default` impls, exposed as `_core.DEFAULT_THRESHOLDS`): set there only.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from . import _core
from .errors import OptNeuronsError

_CORE: dict[str, Any] = _core.DEFAULT_THRESHOLDS


@dataclass(frozen=True)
class Thresholds:
    # Coverage and detectors (section 4).
    coverage: float = _CORE["coverage"]  # share of a neuron's activations its covering k-grams hold
    token_hit_rate: float = _CORE["token_hit_rate"]  # share of a k-gram's occurrences the neuron must fire on
    detector_share: float = _CORE["detector_share"]  # share of activations the covered k-grams must hold
    max_tokens: int = _CORE["max_tokens"]  # token detector: cover_1 <= this
    max_trigrams: int = _CORE["max_trigrams"]  # trigram detector: cover_3 <= this
    # Positional neurons (section 5).
    mi_threshold: float = _CORE["mi_threshold"]  # nats
    active_level: float = _CORE["active_level"]
    low: float = _CORE["low"]
    strong_low: float = _CORE["strong_low"]
    high: float = _CORE["high"]
    strong_high: float = _CORE["strong_high"]
    min_oscillations: int = _CORE["min_oscillations"]
    smoothing_half_width: int = _CORE["smoothing_half_width"]  # 0: max(1, T // 256)
    # Suppression baseline: random live non-detectors drawn per detector.
    baseline_draws: int = 10
    seed: int = 0

    @classmethod
    def from_overrides(cls, overrides: dict) -> Thresholds:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise OptNeuronsError(f"unknown threshold(s) {unknown}; known: {sorted(names)}")
        return cls(**overrides)

    def core_kwargs(self) -> dict:
        """The ones the Rust core's finalize() takes."""
        d = dataclasses.asdict(self)
        for k in ("baseline_draws", "seed"):
            d.pop(k)
        return d

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
