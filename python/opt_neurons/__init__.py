"""opt_neurons: dead, n-gram-detecting and positional neurons in the feed-forward layers of OPT, GPT-2,
Pythia, Llama-family and other decoder language models (Voita et al. 2023), with a Rust core for the counting."""

from ._core import __version__
from .analysis import Analysis, load
from .architectures import register_architecture
from .errors import (
    CheckpointError,
    DataError,
    DataMismatchError,
    ExamplesStateError,
    IncompatibleStateError,
    ModelError,
    NonFiniteActivationError,
    OptionError,
    OptNeuronsError,
    OutOfMemoryError,
    OutputError,
    RunFolderError,
    ShapeError,
    StateError,
    StateFileError,
    StateIOError,
    UnusableStateError,
)
from .params import Thresholds
from .pipeline import analyze
from .report import compare, write_report
from .stats import NeuronStats
from .tables import build_tables

__all__ = [
    "Analysis",
    "CheckpointError",
    "DataError",
    "DataMismatchError",
    "ExamplesStateError",
    "IncompatibleStateError",
    "ModelError",
    "NeuronStats",
    "NonFiniteActivationError",
    "OptNeuronsError",
    "OptionError",
    "OutOfMemoryError",
    "OutputError",
    "RunFolderError",
    "ShapeError",
    "StateError",
    "StateFileError",
    "StateIOError",
    "Thresholds",
    "UnusableStateError",
    "__version__",
    "analyze",
    "build_tables",
    "compare",
    "load",
    "write_report",
    "register_architecture",
]
