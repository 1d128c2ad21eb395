"""Every threshold of METHOD.md, with its default. `analyze()` and the CLI take each as an option."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .errors import OptNeuronsError


@dataclass(frozen=True)
class Thresholds:
    # Coverage and detectors (section 4).
    coverage: float = 0.95  # share of a neuron's activations its covering k-grams hold
    token_hit_rate: float = 0.95  # share of a k-gram's occurrences the neuron must fire on
    detector_share: float = 0.95  # share of activations the covered k-grams must hold
    max_tokens: int = 5  # token detector: cover_1 <= this
    max_trigrams: int = 50  # trigram detector: cover_3 <= this
    # Positional neurons (section 5).
    mi_threshold: float = 0.05  # nats
    active_level: float = 0.5
    low: float = 0.05
    strong_low: float = 0.01
    high: float = 0.95
    strong_high: float = 0.99
    min_oscillations: int = 3
    smoothing_half_width: int = 0  # 0: max(1, T // 256)
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
