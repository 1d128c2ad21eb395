"""Errors raised for bad input. Each message names the problem and the fix."""


class OptNeuronsError(ValueError):
    """Base class of every error opt_neurons raises for bad input."""


class ModelError(OptNeuronsError):
    """The model cannot be loaded, or is not an OPT-like ReLU decoder."""


class DataError(OptNeuronsError):
    """The data is empty, malformed or does not fit the model."""


class OutOfMemoryError(OptNeuronsError, MemoryError):
    """The device ran out of memory; the message says which knob to turn."""


class OptionError(OptNeuronsError):
    """A threshold or run option is unknown, of the wrong type, or out of its range."""


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
