"""Checks at the public boundary: bad input is refused here, with a message that names the
argument, says what is wrong and what to do, before any work is done."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from typing import Any

import numpy

from .errors import InputError, InputTypeError

FLOAT_DTYPES = ("float32", "float64")


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices`` (case-insensitive), else an error listing them."""
    if isinstance(value, str) and value.lower() in choices:
        return value.lower()
    valid = ", ".join(repr(c) for c in choices)
    raise InputError(f"{name} is {value!r}; choose one of {valid}")


def check_dtype(dtype: Any) -> numpy.dtype:
    """float32 or float64: the dtypes the kernels are written for."""
    try:
        resolved = numpy.dtype(dtype)
    except TypeError:
        resolved = None
    if resolved is None or resolved.name not in FLOAT_DTYPES:
        raise InputTypeError(f"dtype is {dtype!r}; choose 'float32' or 'float64'")
    return resolved


def check_positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InputTypeError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise InputError(f"{name} must be at least {minimum}, got {value}")
    return int(value)


def check_positive_float(name: str, value: Any, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputTypeError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = "non-negative" if allow_zero else "positive"
        raise InputError(f"{name} must be a finite {bound} number, got {value}")
    return value


def check_sizes(sizes: Any) -> tuple[int, ...]:
    """Layer sizes, input first: at least an input and an output layer, each ≥ 1."""
    if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Iterable):
        raise InputTypeError(f"sizes must be a list of layer sizes such as [784, 30, 10], got {sizes!r}")
    sizes = list(sizes)
    if len(sizes) < 2:
        raise InputError(
            f"sizes must name at least an input and an output layer, e.g. [784, 30, 10]; got {sizes}"
        )
    for i, n in enumerate(sizes):
        check_positive_int(f"sizes[{i}]", n)
    return tuple(int(n) for n in sizes)


def _host_view(array: Any) -> Any:
    """The array itself if it is an array of some backend, else ``numpy.asarray`` of it."""
    return array if hasattr(array, "__array_namespace__") else numpy.asarray(array)


def check_features(X: Any, n_features: int, name: str = "X") -> Any:
    """A 2-D array of finite real numbers with ``n_features`` columns and at least one row."""
    if X is None:
        raise InputTypeError(f"{name} is None; pass an array of shape (n_samples, {n_features})")
    X = _host_view(X)
    if X.dtype.kind not in "biuf":
        raise InputTypeError(
            f"{name} has dtype {X.dtype}; it must hold numbers (convert strings or objects first)"
        )
    if X.ndim == 1 and n_features == 1:
        X = X.reshape(-1, 1)
    if X.ndim != 2:
        raise InputError(
            f"{name} has shape {tuple(X.shape)}; it must be 2-D (n_samples, {n_features}), "
            "one sample per row"
        )
    if X.shape[0] == 0:
        raise InputError(f"{name} is empty: it has no samples")
    if X.shape[1] != n_features:
        raise InputError(
            f"{name} has {X.shape[1]} features per sample but the network's input layer has "
            f"{n_features}"
        )
    _check_finite(name, X)
    return X


def _check_finite(name: str, X: Any) -> None:
    if X.dtype.kind != "f":
        return
    xp = X.__array_namespace__()
    finite_rows = xp.isfinite(X).reshape(X.shape[0], -1).all(axis=1)
    if not bool(finite_rows.all()):
        bad_rows = numpy.flatnonzero(~_to_numpy(finite_rows))
        raise InputError(
            f"{name} contains NaN or infinite values in {bad_rows.size} sample(s), first at row "
            f"{int(bad_rows[0])}; clean or impute them before training"
        )


def _to_numpy(array: Any) -> numpy.ndarray:
    get = getattr(array, "get", None)
    return get() if callable(get) else numpy.asarray(array)


def check_targets(Y: Any, n_samples: int, n_outputs: int, name: str = "Y") -> tuple[Any, bool]:
    """Targets for ``n_samples`` rows: integer class labels (n,) or floats (n, n_outputs).

    Returns the array and whether it holds labels (to be one-hot encoded). With a single output
    unit, labels 0/1 are the target values themselves.
    """
    if Y is None:
        raise InputTypeError(f"{name} is None; pass labels (n,) or targets (n, {n_outputs})")
    Y = _host_view(Y)
    if Y.dtype.kind not in "biuf":
        raise InputTypeError(f"{name} has dtype {Y.dtype}; it must hold numbers")
    if Y.shape[:1] != (n_samples,):
        raise InputError(
            f"{name} has {Y.shape[0] if Y.ndim else 0} samples but X has {n_samples}; "
            "they must match row for row"
        )
    if Y.ndim == 1:
        return _check_labels(Y, n_outputs, name), True
    if Y.ndim != 2 or Y.shape[1] != n_outputs:
        raise InputError(
            f"{name} has shape {tuple(Y.shape)}; it must be class labels ({n_samples},) or targets "
            f"({n_samples}, {n_outputs}) to match the output layer"
        )
    _check_finite(name, Y)
    return Y, False


def _check_labels(y: Any, n_outputs: int, name: str) -> Any:
    n_classes = max(n_outputs, 2)
    if y.dtype.kind == "f":
        _check_finite(name, y)
        if not bool((y == y.astype(numpy.int64)).all()):
            raise InputError(
                f"{name} is 1-D, so it is read as class labels, but it holds non-integer values; "
                f"pass integer labels or a 2-D array of targets (n, {n_outputs})"
            )
    low, high = int(y.min()), int(y.max())
    if low < 0 or high >= n_classes:
        hint = ""
        if low == 1 and high == n_classes:
            hint = f"; labels seem to run from 1 to {n_classes}: subtract 1"
        raise InputError(
            f"{name} holds class labels from {low} to {high}, but the output layer has "
            f"{n_outputs} unit(s), so labels must lie in 0..{n_classes - 1}{hint}"
        )
    return y
