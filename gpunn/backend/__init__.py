"""Backends: where the arrays live and which kernels run on them.

``get_backend("numpy" | "cupy" | "auto")`` returns the kernels (an :class:`Ops`) for one array
module. ``"auto"`` (or the ``GPUNN_BACKEND`` environment variable) picks CuPy when it can run on
a GPU here and NumPy otherwise, with one notice saying why; an explicit ``"cupy"`` that cannot
run raises :class:`~gpunn.errors.BackendUnavailableError` saying why and what to do.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import warnings
from typing import Any

from ..errors import BackendUnavailableError, InputError
from .cuda import array_module, cupy_module, gpu_available, unavailable_reason
from .numpy_ops import NumpyOps
from .ops import HIDDEN_ACTIVATIONS, LOSSES, OUTPUT_ACTIVATIONS, Array, Ops

BACKEND_NAMES = ("numpy", "cupy")
ENV_VAR = "GPUNN_BACKEND"

__all__ = [
    "BACKEND_NAMES",
    "HIDDEN_ACTIVATIONS",
    "LOSSES",
    "OUTPUT_ACTIVATIONS",
    "Array",
    "GpuFallbackWarning",
    "NumpyOps",
    "Ops",
    "available_backends",
    "backend_of",
    "cupy_module",
    "get_backend",
    "gpu_available",
    "requested_backend",
    "tf32_scope",
    "unavailable_reason",
]


class GpuFallbackWarning(UserWarning):
    """``backend="auto"`` found no usable GPU and runs on NumPy."""


def available_backends() -> list[str]:
    """The backends that can run here: always ``"numpy"``, and ``"cupy"`` with a usable GPU."""
    return ["numpy", "cupy"] if gpu_available() else ["numpy"]


def requested_backend(name: str | None) -> str:
    """What a backend argument asks for before anything is chosen: the name itself, or for
    ``"auto"`` (and None) the name in ``GPUNN_BACKEND``, else ``"auto"``."""
    if name is None or name == "auto":
        return os.environ.get(ENV_VAR, "").strip().lower() or "auto"
    return name


def get_backend(name: str | Ops | None = "auto") -> Ops:
    """The kernels for ``name``: ``"numpy"``, ``"cupy"`` or ``"auto"`` (None means ``"auto"``).

    ``"auto"`` reads ``GPUNN_BACKEND`` first; without it, CuPy where a GPU works, else NumPy.
    """
    if isinstance(name, Ops):
        return name
    from_env = name is None or name == "auto"
    name = requested_backend(name)
    if name == "auto":
        return _auto_backend()
    where = f"the {ENV_VAR} environment variable" if from_env else "backend"
    if not isinstance(name, str) or name.lower() not in BACKEND_NAMES:
        raise InputError(
            f"{where} is {name!r}; choose one of 'auto', " + ", ".join(map(repr, BACKEND_NAMES))
        )
    if name.lower() == "cupy":
        _require_gpu(from_env)
    return _backend(name.lower())


def _require_gpu(from_env: bool) -> None:
    """Raise BackendUnavailableError, saying how to run on the CPU instead, where the 'cupy'
    backend that was asked for (as an argument, or through GPUNN_BACKEND) cannot run."""
    reason = unavailable_reason()
    if reason is None:
        return
    if from_env:
        asked = f"{ENV_VAR}={os.environ[ENV_VAR].strip()} asks for backend 'cupy'"
        instead = f"Unset {ENV_VAR}, or set it to 'numpy' or 'auto', to run on the CPU"
    else:
        asked = "backend 'cupy' was requested"
        instead = "Use backend='numpy' to run on the CPU"
        if os.environ.get(ENV_VAR, "").strip().lower() != "cupy":
            instead += " (or 'auto', which falls back to it)"
    raise BackendUnavailableError(f"{asked}, but it cannot run here: {reason}. {instead}.")


@functools.cache
def _backend(name: str) -> Ops:
    if name == "numpy":
        return NumpyOps()
    from .cupy_ops import CupyOps  # pragma: no cover - needs a GPU

    return CupyOps()  # pragma: no cover - needs a GPU


@functools.cache
def _auto_backend() -> Ops:
    reason = unavailable_reason()
    if reason is None:  # pragma: no cover - needs a GPU
        return _backend("cupy")
    warnings.warn(
        f"gpunn: running on NumPy (CPU) because {reason}", GpuFallbackWarning,
        stacklevel=_stacklevel_outside_gpunn(),
    )
    return _backend("numpy")


def _stacklevel_outside_gpunn() -> int:
    """The ``stacklevel`` that points a warning at the first caller outside this package."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
        frame, level = frame.f_back, level + 1
    return level


def tf32_scope() -> contextlib.AbstractContextManager[Any]:
    """TensorFloat-32 float32 matrix products on the GPU for the duration (``--tf32``);
    nothing to do where no GPU can run."""
    if not gpu_available():
        return contextlib.nullcontext()
    return _backend("cupy").tf32_scope(True)


def backend_of(array: object) -> Ops:
    """The backend whose device holds ``array`` (NumPy for anything that is not on a GPU)."""
    module = array_module(array)
    return _backend("cupy" if module is not None and module is cupy_module() else "numpy")
