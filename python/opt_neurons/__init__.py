"""opt_neurons: dead, n-gram-detecting and positional neurons in OPT language models
(Voita et al. 2023), with a Rust core for the counting."""

from ._core import __version__
from .analysis import Analysis, load
from .errors import (
    ConfigError,
    DataError,
    IncompatibleStateError,
    ModelError,
    OptNeuronsError,
    OutOfMemoryError,
    ShapeError,
    StateError,
    StateFileError,
    StateIOError,
    UnusableStateError,
)
from .params import Thresholds
from .pipeline import analyze
from .stats import NeuronStats

__all__ = [
    "Analysis",
    "ConfigError",
    "DataError",
    "IncompatibleStateError",
    "ModelError",
    "NeuronStats",
    "OptNeuronsError",
    "OutOfMemoryError",
    "ShapeError",
    "StateError",
    "StateFileError",
    "StateIOError",
    "Thresholds",
    "UnusableStateError",
    "__version__",
    "analyze",
    "load",
]
