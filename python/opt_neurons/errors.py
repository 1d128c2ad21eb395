"""Errors raised for bad input. Each message names the problem and the fix.

One class per kind of problem, all under `OptNeuronsError` (a ValueError, so `except ValueError` keeps
working). The Rust core's error kinds map onto these one to one (rust/python/src/lib.rs `err`):

    OptNeuronsError
    ├── ModelError
    ├── DataError                   core Value: a token id, position, layer or neuron out of range; no rows yet
    │   ├── ShapeError              core Shape: arrays of the wrong shape, length or layout
    │   └── DataMismatchError       data given to render example contexts is not the run's (hash differs)
    ├── OptionError                 core Config: a threshold, run option or NeuronStats setting out of range
    ├── OutputError
    ├── CheckpointError
    │   └── ExamplesStateError      a checkpoint's examples state is damaged or does not fit its statistics
    ├── NonFiniteActivationError
    ├── RunFolderError
    ├── StateError                  a NeuronStats state that cannot be used as asked
    │   ├── IncompatibleStateError  core Incompatible: merging states of different settings, or into itself
    │   ├── StateFileError          core Decode: a damaged, truncated, empty or other-version state file
    │   ├── StateIOError            core Io: reading or writing a state file failed (also an OSError)
    │   └── UnusableStateError      core Unusable: a merge failed midway; the state must be discarded
    └── OutOfMemoryError            (also a MemoryError)
"""


class OptNeuronsError(ValueError):
    """Base class of every error opt_neurons raises for bad input."""


class ModelError(OptNeuronsError):
    """The model cannot be loaded, or is not an OPT-like ReLU decoder."""


class DataError(OptNeuronsError):
    """The data is empty, malformed or does not fit the model."""


class ShapeError(DataError):
    """An array has the wrong shape, length, dtype or memory layout."""


class StateError(OptNeuronsError):
    """A NeuronStats state cannot be used as asked."""


class IncompatibleStateError(StateError):
    """Two states cannot be merged: different settings, or a state merged into itself."""


class StateFileError(StateError):
    """A saved state cannot be read: damaged, truncated, empty, or written by another format version."""


class StateIOError(StateError, OSError):
    """Reading or writing a state file failed (missing file, no permission, disk error)."""


class UnusableStateError(StateError):
    """A merge failed midway and left the state partly merged: it must be discarded."""


class OutOfMemoryError(OptNeuronsError, MemoryError):
    """The device ran out of memory; the message says which knob to turn."""


class OptionError(OptNeuronsError):
    """A threshold, run option or NeuronStats setting is unknown, of the wrong type, or out of its range."""


class OutputError(OptNeuronsError):
    """The output folder cannot be used: not a folder, not writable, or in use by another run."""


class CheckpointError(OptNeuronsError):
    """A checkpoint cannot be resumed: its files are malformed or do not fit this run."""


class NonFiniteActivationError(OptNeuronsError):
    """A layer's activations hold NaN or infinity: counting them would report every neuron dead."""


class RunFolderError(OptNeuronsError):
    """A saved run folder is missing files, or they are damaged or of another version."""


class ExamplesStateError(CheckpointError):
    """A checkpoint's examples state is damaged (checksum) or does not fit its statistics."""


class DataMismatchError(DataError):
    """The data given to render example contexts is not the data the run analysed (its hash differs)."""
