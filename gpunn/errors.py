"""The exceptions gpunn raises: each names the argument and what is wrong with it."""


class GpunnError(Exception):
    """Base class of every error gpunn raises on purpose."""


class InputError(GpunnError, ValueError):
    """An argument has a wrong value or shape (NaN, out-of-range label, bad size...)."""


class InputTypeError(GpunnError, TypeError):
    """An argument has the wrong type or dtype."""


class DataError(InputError):
    """A dataset or data file is missing, malformed or inconsistent."""


class ModelFileError(GpunnError, ValueError):
    """A model file is missing, truncated, corrupt, hostile or of an unknown format version."""


class OutputFileError(GpunnError, OSError):
    """An output file (metrics, plot, report) cannot be written where it was asked for."""


class BackendUnavailableError(GpunnError, RuntimeError):
    """An explicitly requested backend cannot be used here (not installed, no GPU, old driver)."""


class NumericalError(GpunnError, FloatingPointError):
    """The network's outputs, cost or gradients came out NaN or infinite: they overflow its
    dtype (inputs or weights too large for it)."""


class DivergenceError(NumericalError):
    """Training produced a NaN or infinite loss or weight.

    The network keeps its last finite weights (those at the start of the diverging epoch).
    """


class DeviceMemoryError(GpunnError, MemoryError):
    """The device ran out of memory; the message names the batch size and the memory needed."""


def describe(exc: BaseException) -> str:
    """``"TypeName: message"``: an exception as one line of a report or of a longer message."""
    return f"{type(exc).__name__}: {exc}"
