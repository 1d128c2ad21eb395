"""Errors raised for bad input. Each message names the problem and the fix."""


class OptNeuronsError(ValueError):
    """Base class of every error opt_neurons raises for bad input."""


class ModelError(OptNeuronsError):
    """The model cannot be loaded, or is not an OPT-like ReLU decoder."""


class DataError(OptNeuronsError):
    """The data is empty, malformed or does not fit the model."""


class OutOfMemoryError(OptNeuronsError, MemoryError):
    """The device ran out of memory; the message says which knob to turn."""
