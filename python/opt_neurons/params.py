"""Every threshold of METHOD.md and every run option, each with its one default and its valid range.

`analyze()` takes each as a keyword and the CLI generates a flag from each; both are checked when a
call starts, before any model is loaded, so a bad value never costs a forward pass. The defaults of the
core's thresholds are the Rust core's (`DetectorParams` / `PositionalParams` `Default` impls, exposed as
`_core.DEFAULT_THRESHOLDS`): set there only.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from typing import Any

from . import _core
from .errors import OptionError, OptNeuronsError


def _rule(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False, hi_open: bool = False,
          help: str = "", flag: str | None = None, cli: bool = True) -> dict:  # fmt: skip
    """Field metadata: the valid range (None: unbounded), the CLI help and flag name."""
    return {"lo": lo, "hi": hi, "lo_open": lo_open, "hi_open": hi_open, "help": help, "flag": flag, "cli": cli}


def _range_text(m: Any) -> str:
    lo = "-inf" if m["lo"] is None else m["lo"]
    hi = "inf" if m["hi"] is None else m["hi"]
    return (
        f"{'(' if m['lo_open'] or m['lo'] is None else '['}{lo}, {hi}{')' if m['hi_open'] or m['hi'] is None else ']'}"
    )


def _check_field(owner: str, f: dataclasses.Field, value: Any) -> None:
    """Type and range of one numeric field (None passes where the default is None)."""
    m = f.metadata
    if "lo" not in m or (value is None and f.default is None):
        return
    want_int = "int" in str(f.type) and "float" not in str(f.type)
    kind = "an integer" if want_int else "a number"
    ok_type = isinstance(value, numbers.Integral if want_int else numbers.Real)  # numpy scalars too
    if isinstance(value, bool) or not ok_type:
        raise OptionError(f"{owner} {f.name} must be {kind}, got {value!r} ({type(value).__name__})")
    if not math.isfinite(value):
        raise OptionError(f"{owner} {f.name} must be finite, got {value!r}")
    lo, hi = m["lo"], m["hi"]
    if (lo is not None and (value < lo or (m["lo_open"] and value == lo))) or (
        hi is not None and (value > hi or (m["hi_open"] and value == hi))
    ):
        raise OptionError(f"{owner} {f.name}={value!r} is out of range: it must lie in {_range_text(m)}")


def _check_all(obj: Any, owner: str) -> None:
    for f in dataclasses.fields(obj):
        _check_field(owner, f, getattr(obj, f.name))


def _from_overrides(cls: Any, overrides: dict, what: str) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise OptionError(f"unknown {what}(s) {unknown}; known: {sorted(names)}")
    return cls(**overrides)


SHARE: dict[str, Any] = {"lo": 0.0, "hi": 1.0, "lo_open": True}
_CORE: dict[str, Any] = _core.DEFAULT_THRESHOLDS


@dataclass(frozen=True)
class Thresholds:
    # Coverage and detectors (section 4).
    coverage: float = field(
        default=_CORE["coverage"],
        metadata=_rule(**SHARE, help="share of a neuron's activations its covering k-grams hold"),
    )
    token_hit_rate: float = field(
        default=_CORE["token_hit_rate"],
        metadata=_rule(**SHARE, help="share of a k-gram's occurrences the neuron must fire on"),
    )
    detector_share: float = field(
        default=_CORE["detector_share"],
        metadata=_rule(**SHARE, help="share of activations the covered k-grams must hold"),
    )
    max_tokens: int = field(default=_CORE["max_tokens"], metadata=_rule(1, help="token detector: cover_1 <= this"))
    max_trigrams: int = field(
        default=_CORE["max_trigrams"], metadata=_rule(1, help="trigram detector: cover_3 <= this")
    )
    min_count: int = field(
        default=_CORE["min_count"],
        metadata=_rule(0, help="a covered token / trigram occurs at least this often (0: no minimum, as the paper)"),
    )
    low_support_count: int = field(
        default=5,
        metadata=_rule(1, help="a token detector is marked low_support when a covered token occurs fewer times"),
    )
    # Positional neurons (section 5).
    mi_threshold: float = field(
        default=_CORE["mi_threshold"], metadata=_rule(0.0, help="mutual information (nats) for a positional neuron")
    )
    active_level: float = field(
        default=_CORE["active_level"],
        metadata=_rule(0.0, 1.0, lo_open=True, hi_open=True, help="frequency level of an active interval"),
    )
    low: float = field(
        default=_CORE["low"], metadata=_rule(0.0, 1.0, help="frequency below which a position counts as off")
    )
    strong_low: float = field(default=_CORE["strong_low"], metadata=_rule(0.0, 1.0, help="strongly off (<= low)"))
    high: float = field(
        default=_CORE["high"], metadata=_rule(0.0, 1.0, help="frequency above which a position counts as on")
    )
    strong_high: float = field(default=_CORE["strong_high"], metadata=_rule(0.0, 1.0, help="strongly on (>= high)"))
    min_oscillations: int = field(
        default=_CORE["min_oscillations"], metadata=_rule(1, help="periods an oscillating neuron shows at least")
    )
    smoothing_half_width: int = field(
        default=_CORE["smoothing_half_width"], metadata=_rule(0, help="0: max(1, T // 256)")
    )
    thin_spread: float = field(
        default=_CORE["thin_spread"],
        metadata=_rule(
            0.0, 1.0, help="an `other` positional neuron is strong (thin) when its positional_spread <= this"
        ),
    )
    # Suppression baseline: random live non-detectors drawn per detector.
    baseline_draws: int = field(default=10, metadata=_rule(0, help="random live neurons drawn per detector"))
    seed: int = field(default=0, metadata=_rule(0, help="seed of the baseline draws"))

    def __post_init__(self) -> None:
        _check_all(self, "threshold")
        if not self.strong_low <= self.low < self.high <= self.strong_high:
            raise OptionError(
                f"thresholds must satisfy strong_low <= low < high <= strong_high, got {self.strong_low}, "
                f"{self.low}, {self.high}, {self.strong_high}"
            )

    @classmethod
    def from_overrides(cls, overrides: dict) -> Thresholds:
        return _from_overrides(cls, overrides, "threshold")

    def core_kwargs(self) -> dict:
        """The ones the Rust core's finalize() takes."""
        d = dataclasses.asdict(self)
        for k in ("baseline_draws", "seed", "low_support_count"):
            d.pop(k)
        return d

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


EXECUTIONS = ("auto", "memory", "offload", "layer")
COUNTINGS = ("auto", "device", "host")
DTYPES = ("float16", "fp16", "bfloat16", "bf16", "float32", "fp32")


@dataclass(frozen=True)
class RunOptions:
    """How a run reads its data and runs the model: `analyze()`'s keywords and the CLI's flags."""

    activation_threshold: float = field(
        default=0.0, metadata=_rule(help="a neuron fires when its activation output is > this (METHOD.md)")
    )
    n_tokens: int = field(
        default=5_000_000, metadata=_rule(1, flag="tokens", help="tokens to analyse (the paper: 5 M for sections 4-5)")
    )
    detail_tokens: int | None = field(
        default=None,
        metadata=_rule(
            1,
            help="token, n-gram and position statistics over only this many tokens, dead neurons over all --tokens (the paper: 5000000 of 20000000)",
        ),
    )
    seq_len: int | None = field(
        default=None, metadata=_rule(2, help="tokens per sequence (default: the model's maximum)")
    )
    batch_size: int = field(default=8, metadata=_rule(1, help="sequences per forward pass"))
    dtype: Any = field(
        default=None,
        metadata={"help": "float16, bfloat16 or float32 (default: fp16 on GPU, fp32 on CPU)", "choices": DTYPES},
    )
    device_map: Any = field(default=None, metadata={"help": "accelerate device map, e.g. auto"})
    revision: str | None = field(default=None, metadata={"help": "hub revision (branch, tag or commit) of the model"})
    ngram_capacity: int = field(
        default=_core.DEFAULT_CAPACITY,
        metadata=_rule(
            1, help="distinct tokens / bigrams / trigrams counted exactly per neuron (memory grows with it)"
        ),
    )
    checkpoint_every: int = field(default=256, metadata=_rule(1, help="sequences between checkpoints"))
    execution: str = field(
        default="auto",
        metadata={
            "choices": EXECUTIONS,
            "help": "memory: whole model on the device; offload: accelerate device_map; layer: layer-major (one layer on the device at a time, for models larger than the GPU); auto: by size",
        },
    )
    block_size: int = field(default=64, metadata=_rule(1, help="sequences per block in layer-major execution"))
    counting: str = field(
        default="auto",
        metadata={
            "choices": COUNTINGS,
            "help": "host: the activations' bits go to the host, which counts them; device: counted where they are (torch), the host merges the counts; auto: host until a GPU measurement shows device faster",
        },
    )
    examples: int = field(
        default=16,
        metadata=_rule(
            0,
            4096,
            help="example positions kept per neuron and kind (top by value, uniform random) over the detail tokens; 0: none",
        ),
    )
    examples_seed: int = field(default=0, metadata=_rule(0, 2**63 - 1, help="seed of the random examples"))
    offload_folder: Any = field(default=None, metadata={"help": "folder for weights accelerate offloads to disk"})
    text_column: str = field(default="text", metadata={"help": "a dataset's text column"})
    source_column: str | None = field(
        default=None, metadata={"help": "a dataset's column naming each document's source (dotted for a nested field)"}
    )
    max_memory: Any = field(default=None, metadata={"cli": False})
    progress: bool = field(default=True, metadata={"cli": False})

    def __post_init__(self) -> None:
        _check_all(self, "option")
        if self.execution not in EXECUTIONS:
            raise OptionError(f"unknown execution {self.execution!r}: use one of {', '.join(EXECUTIONS)}")
        if self.counting not in COUNTINGS:
            raise OptionError(f"unknown counting {self.counting!r}: use one of {', '.join(COUNTINGS)}")
        if isinstance(self.dtype, str) and self.dtype not in DTYPES:
            raise OptionError(f"unknown dtype {self.dtype!r}: use float16, bfloat16 or float32")

    @classmethod
    def from_overrides(cls, overrides: dict) -> RunOptions:
        return _from_overrides(cls, overrides, "option")


def cli_fields(cls: Any) -> list[dataclasses.Field]:
    """The fields of `cls` that get a CLI flag."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get("cli", True)]


__all__ = ["COUNTINGS", "EXECUTIONS", "OptNeuronsError", "OptionError", "RunOptions", "Thresholds", "cli_fields"]
