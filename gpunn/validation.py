"""Checks at the public boundary: bad input is refused here, with a message that names the
argument, says what is wrong and what to do, before any work is done.

Every check runs once per public call (never inside the training step loop) and costs at most
one pass over the data: the values of a float array are screened with a single dot product
(x·x is finite, and small enough for the network's dtype, exactly when every value is), and
only when that screen fails does a second, exact pass find the offending rows for the message.

Dtypes: features X, float targets and weights may be floats or integers (cast exactly enough to
the network's dtype); booleans, complex numbers, strings and objects are refused. Integer class
labels may be bool, int or float holding whole numbers.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from typing import Any

import numpy

from .backend.cuda import array_module
from .errors import InputError, InputTypeError

FLOAT_DTYPES = ("float32", "float64")


# ---------------------------------------------------------------------------- scalars and names
def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices`` (case-insensitive), else an error listing them."""
    if isinstance(value, str) and value.strip().lower() in choices:
        return value.strip().lower()
    valid = ", ".join(repr(c) for c in choices)
    raise InputError(f"{name} is {value!r}; choose one of {valid}")


def check_dtype(dtype: Any) -> numpy.dtype:
    """float32 or float64: the dtypes the kernels are written for."""
    resolved = None
    if dtype is not None:  # numpy.dtype(None) would silently mean float64
        try:
            resolved = numpy.dtype(dtype)
        except (TypeError, ValueError):
            resolved = None
    if resolved is None or resolved.name not in FLOAT_DTYPES:
        shown = dtype if resolved is None else resolved.name
        raise InputTypeError(
            f"dtype is {shown!r}; choose 'float32' or 'float64' (the network computes in floats)"
        )
    return resolved


def check_int(name: str, value: Any, *, minimum: int) -> int:
    """An integer ≥ ``minimum`` (bool refused; NumPy integers accepted)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        kind = type(value).__name__
        raise InputTypeError(f"{name} must be an integer ≥ {minimum}, got {value!r} ({kind})")
    if value < minimum:
        raise InputError(f"{name} must be at least {minimum}, got {value}")
    return int(value)


def check_float(name: str, value: Any, *, minimum: float, inclusive: bool) -> float:
    """A finite number > ``minimum`` (≥ with ``inclusive``); bool refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputTypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not (math.isfinite(value) and (value >= minimum if inclusive else value > minimum)):
        bound = "≥" if inclusive else ">"
        raise InputError(f"{name} must be a finite number {bound} {minimum:g}, got {value}")
    return value


def check_fraction(name: str, value: Any) -> float:
    """A number in [0, 1) (bool refused): a share of the data, a momentum, a decay rate."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputTypeError(f"{name} must be a number in [0, 1), got {value!r}")
    value = float(value)
    if not 0.0 <= value < 1.0:  # also false for NaN
        raise InputError(f"{name} must lie in [0, 1), got {value}")
    return value


def check_bool(name: str, value: Any) -> bool:
    """True or False (NumPy booleans accepted): never a string such as ``"no"``."""
    if isinstance(value, (bool, numpy.bool_)):
        return bool(value)
    raise InputTypeError(f"{name} must be True or False, got {value!r}")


def check_sizes(sizes: Any) -> tuple[int, ...]:
    """Layer sizes, input first: at least an input and an output layer, each ≥ 1."""
    if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Iterable):
        raise InputTypeError(
            f"sizes must be a list of layer sizes such as [784, 30, 10], got {sizes!r}"
        )
    sizes = list(sizes)
    if len(sizes) < 2:
        raise InputError(
            "sizes must name at least an input and an output layer, e.g. [784, 30, 10]; "
            f"got {sizes}"
        )
    for i, n in enumerate(sizes):
        check_int(f"sizes[{i}]", n, minimum=1)
    return tuple(int(n) for n in sizes)


def check_validation_data(value: Any) -> tuple[Any, Any]:
    """``validation_data`` as the pair (X_val, Y_val)."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        what = (
            f"a {type(value).__name__} of length {len(value)}"
            if isinstance(value, (tuple, list))
            else f"a {type(value).__name__}"
        )
        raise InputTypeError(
            f"validation_data must be a pair (X_val, Y_val), got {what}"
        )
    return value[0], value[1]


# ---------------------------------------------------------------------------- arrays
def _host_view(array: Any, name: str) -> Any:
    """The array itself if it is an array of some backend, else ``numpy.asarray`` of it.

    A masked array with masked values and a SciPy sparse matrix are refused: converting them
    would silently drop the mask, or give an array of one object.
    """
    if isinstance(array, numpy.ma.MaskedArray):
        if numpy.ma.is_masked(array):
            raise InputTypeError(
                f"{name} is a masked array with {int(numpy.ma.count_masked(array))} masked "
                f"value(s), and gpunn does not use masks; fill them ({name}.filled(value)) or "
                "drop those samples first"
            )
        array = array.data  # nothing is masked: the values are all there
    if type(array).__module__.startswith("scipy.sparse"):
        raise InputTypeError(
            f"{name} is a SciPy sparse matrix; gpunn needs a dense array: pass {name}.toarray()"
        )
    module = array_module(array)
    if module is numpy:
        return numpy.asarray(array)  # a subclass such as numpy.matrix as a plain array
    if module is not None:
        return array
    if getattr(array, "requires_grad", False):
        raise InputTypeError(
            f"{name} is a tensor that requires grad, which gpunn does not read: pass "
            f"{name}.detach() (gpunn computes its own gradients and takes no part in autograd)"
        )
    try:
        return numpy.asarray(array)
    except (ValueError, TypeError) as exc:
        raise InputError(
            f"{name} cannot be read as an array of numbers ({exc}); every row must have the "
            "same length"
        ) from None


def _check_kind(name: str, array: Any, *, allow_bool: bool = False) -> None:
    """Real numbers only: integers, floats (and booleans where ``allow_bool``)."""
    kind = array.dtype.kind
    if kind in "iuf" or (kind == "b" and allow_bool):
        return
    if kind == "b":
        raise InputTypeError(
            f"{name} has dtype bool; pass numbers (e.g. {name}.astype('float32') if the "
            "booleans stand for 0 and 1)"
        )
    if kind == "c":
        raise InputTypeError(
            f"{name} has dtype {array.dtype}: complex values are not supported; pass real numbers"
        )
    hint = ""
    if kind in "USO":
        hint = " (a CSV header row read as data? convert strings or objects to numbers first)"
    raise InputTypeError(f"{name} has dtype {array.dtype}; it must hold real numbers{hint}")


def _to_numpy(array: Any) -> numpy.ndarray:
    get = getattr(array, "get", None)
    return get() if callable(get) else numpy.asarray(array)


def check_values(
    name: str,
    X: Any,
    dtype: Any = None,
    *,
    error: type[InputError] = InputError,
    line_numbers: Sequence[int] | None = None,
    remedy: str = "scale the data or use dtype='float64'",
) -> None:
    """Every value finite and, for a narrower ``dtype`` (the one ``X`` will be cast to), within
    its range; else ``error`` naming the first bad row (its line in the file, with
    ``line_numbers``, one per row of ``X``), or for values out of range ending with ``remedy``.

    One pass in the common case: x·x (over all values) is finite and at most max² exactly
    when no value is NaN, infinite or beyond ±max. Only a failed screen pays for the exact
    search that names the rows.
    """
    if X.dtype.kind != "f" or X.size == 0:
        return
    xp = array_module(X)
    limit = float(numpy.finfo(X.dtype).max)
    if dtype is not None and numpy.dtype(dtype).itemsize < X.dtype.itemsize:
        limit = float(numpy.finfo(dtype).max)
    flat = X.reshape(-1)
    work = flat if X.dtype.itemsize >= 4 else flat.astype(xp.float32)
    screen = float(xp.vdot(work, work))
    if math.isfinite(screen) and math.sqrt(screen) <= limit:
        return
    finite_rows = xp.isfinite(X).reshape(X.shape[0], -1).all(axis=1)
    if not bool(finite_rows.all()):
        bad_rows = numpy.flatnonzero(~_to_numpy(finite_rows))
        first = int(bad_rows[0])
        where = f"line {line_numbers[first]}" if line_numbers is not None else f"row {first}"
        raise error(
            f"{name} contains NaN or infinite values in {bad_rows.size} sample(s), first at "
            f"{where}; clean or impute them first"
        )
    largest = float(xp.abs(X).max())
    if largest > limit:
        raise error(
            f"{name} holds values up to {largest:.3g}, beyond the range of "
            f"{numpy.dtype(dtype).name} (±{limit:.3g}); {remedy}"
        )


def check_features(X: Any, n_features: int, name: str = "X", dtype: Any = None) -> Any:
    """A 2-D array of finite real numbers with ``n_features`` columns and at least one row.

    A 1-D array is taken as one feature per sample when the network has a single input.
    ``dtype``, the network's dtype, bounds the values that survive the cast to it.
    """
    if X is None:
        raise InputTypeError(f"{name} is None; pass an array of shape (n_samples, {n_features})")
    X = _host_view(X, name)
    _check_kind(name, X)
    if X.ndim == 1 and n_features == 1:
        X = X.reshape(-1, 1)
    if X.ndim == 0:
        raise InputError(
            f"{name} is a single number ({X.item()!r}); pass an array of shape "
            f"(n_samples, {n_features}), one sample per row"
        )
    if X.ndim == 1:
        hint = (
            f"; for one sample pass {name}.reshape(1, -1)"
            if X.shape[0] == n_features
            else ""
        )
        raise InputError(
            f"{name} has shape {tuple(X.shape)}; it must be 2-D (n_samples, {n_features}), "
            f"one sample per row{hint}"
        )
    if X.ndim != 2:
        raise InputError(
            f"{name} has shape {tuple(X.shape)}; it must be 2-D (n_samples, {n_features}), "
            f"one sample per row (flatten each sample, e.g. {name}.reshape(len({name}), -1))"
        )
    if X.shape[0] == 0:
        raise InputError(f"{name} is empty: it has no samples")
    if X.shape[1] != n_features:
        hint = ""
        if X.shape[0] == n_features:
            hint = f"; it looks transposed: pass {name}.T, one sample per row"
        elif X.shape[1] == n_features + 1:
            hint = " (an index or label column left in the data?)"
        raise InputError(
            f"{name} has {X.shape[1]} features per sample but the network's input layer has "
            f"{n_features}{hint}"
        )
    check_values(name, X, dtype)
    return X


def check_targets(
    Y: Any,
    n_samples: int,
    n_outputs: int,
    name: str = "Y",
    dtype: Any = None,
    output: str | None = None,
    loss: str | None = None,
) -> tuple[Any, bool]:
    """Targets for ``n_samples`` rows: integer class labels (n,) or floats (n, n_outputs).

    Returns the array and whether it holds labels (to be one-hot encoded). With a single output
    unit, a 1-D array holds the target values themselves: integer or boolean labels must then
    be 0 or 1, and float values are taken as they are (regression). Given the network's
    ``output`` and ``loss``, cross-entropy targets are checked to be probabilities: in [0, 1],
    and with softmax each row summing to 1 (δ^(L) = (softmax − y)/n holds only then).
    """
    if Y is None:
        raise InputTypeError(f"{name} is None; pass labels (n,) or targets (n, {n_outputs})")
    Y = _host_view(Y, name)
    _check_kind(name, Y, allow_bool=Y.ndim == 1)
    if Y.ndim == 0:
        raise InputError(
            f"{name} is a single number ({Y.item()!r}); pass labels ({n_samples},) or targets "
            f"({n_samples}, {n_outputs}), one per sample"
        )
    if Y.shape[0] != n_samples:
        raise InputError(
            f"{name} has {Y.shape[0]} samples but X has {n_samples}; they must match row for row"
        )
    if Y.ndim == 1:
        if n_outputs == 1 and Y.dtype.kind == "f":
            check_values(name, Y, dtype)
            if loss == "cross_entropy":
                _check_probabilities(name, Y.reshape(-1, 1), output)
            return Y, True
        hint = (
            "; for regression targets pass floats"
            if n_outputs == 1
            else f"; a 1-D {name} is read as class labels: pass integers, or a 2-D array of "
            f"targets (n, {n_outputs})"
        )
        check_class_labels(name, Y, max(n_outputs, 2), hint=hint)
        return Y, True
    if Y.ndim != 2 or Y.shape[1] != n_outputs:
        hint = ""
        if Y.ndim == 2 and Y.shape[1] == 1 and n_outputs > 1:
            hint = f"; for class labels in a column pass {name}.ravel()"
        raise InputError(
            f"{name} has shape {tuple(Y.shape)}; it must be class labels ({n_samples},) or targets "
            f"({n_samples}, {n_outputs}) to match the output layer{hint}"
        )
    check_values(name, Y, dtype)
    if loss == "cross_entropy":
        _check_probabilities(name, Y, output)
    return Y, False


def _check_probabilities(name: str, Y: Any, output: str | None) -> None:
    """Cross-entropy targets: values in [0, 1]; with softmax, rows that sum to 1."""
    if not bool(((Y >= 0) & (Y <= 1)).all()):
        raise InputError(
            f"{name} holds values outside [0, 1], but loss='cross_entropy' needs probabilities "
            "as targets; pass class labels, one-hot rows, or use loss='mse'"
        )
    if output == "softmax":
        xp = array_module(Y)
        sums = Y.sum(axis=1, dtype=xp.float64)
        off = xp.abs(sums - 1) > 1e-3
        if bool(off.any()):
            row = int(numpy.flatnonzero(_to_numpy(off))[0])
            raise InputError(
                f"{name} row {row} sums to {float(sums[row]):.4g}, but with output='softmax' "
                "and loss='cross_entropy' each row of targets must sum to 1 (a probability "
                "distribution over the classes); pass class labels or one-hot rows"
            )


def check_class_labels(
    name: str,
    y: Any,
    n_classes: int | None = None,
    *,
    error: type[InputError] = InputError,
    hint: str = "",
) -> None:
    """1-D class labels ``y`` (integers, booleans, or floats holding whole numbers; on any
    backend) lie in 0..n_classes-1; without ``n_classes`` they must start at 0 (a subset may
    lack the higher classes).

    Else ``error``: labels that seem to run from 1 to k get the hint to subtract 1, labels
    starting above 0 the hint to renumber them, and the other messages end with ``hint``.
    """
    if y.dtype.kind == "b":
        return
    top = "k-1" if n_classes is None else str(n_classes - 1)
    if y.dtype.kind == "f":
        check_values(name, y, error=error)
        xp = array_module(y)
        fractional = xp.floor(y) != y
        if bool(fractional.any()):
            row = int(numpy.flatnonzero(_to_numpy(fractional))[0])
            raise error(
                f"{name} holds non-integer values (first {y[row].item():g} at row {row}), but "
                f"class labels are whole numbers 0..{top}{hint}"
            )
    low, high = y.min().item(), y.max().item()
    if n_classes is None:
        if low == 0:
            return
        rule = "labels must start at 0 (0..k-1)"
        one_based = low == 1
    else:
        if low >= 0 and high < n_classes:
            return
        rule = f"with {n_classes} classes they must lie in 0..{top}"
        one_based = low >= 1 and high == n_classes
    if one_based:
        advice = f"; they seem to run from 1 to {high:g}: subtract 1"
    elif low > 0 and n_classes is None:
        advice = "; renumber them, e.g. classes, y = np.unique(y, return_inverse=True)"
    else:
        advice = hint
    raise error(f"{name} holds class labels from {low:g} to {high:g}, but {rule}{advice}")


def _check_finite_parameters(name: str, array: Any) -> None:
    """No NaN or infinite weight or bias in ``array``: one sum in the common case, and only
    when that is not finite a search for the first bad entry, for the message."""
    if array.dtype.kind != "f":
        return
    xp = array_module(array)
    if bool(xp.isfinite(array.sum(dtype=xp.float64))):
        return
    bad = numpy.argwhere(~numpy.isfinite(_to_numpy(array)))
    if len(bad):
        raise InputError(
            f"{name} contains NaN or infinite values ({len(bad)} of them, the first at index "
            f"{tuple(int(i) for i in bad[0])}); a network's weights and biases must be finite "
            "(parameters from a diverged run? train again with a lower learning rate)"
        )


def check_params(
    params: Any,
    shapes: Sequence[tuple[tuple[int, ...], tuple[int, ...]]],
    dtype: Any = None,
) -> list[tuple[Any, Any]]:
    """``[(W, b), ...]`` with one pair per layer, each array of the expected shape, finite reals
    within the range of ``dtype`` (the network's, which they are cast to).

    ``shapes`` holds ``(W.shape, b.shape)`` per layer. Arrays already on a device are kept there.
    """
    if isinstance(params, (str, bytes)) or not isinstance(params, Iterable):
        raise InputTypeError(f"params must be a list of (W, b) pairs, got {type(params).__name__}")
    params = list(params)
    if len(params) != len(shapes):
        raise InputError(
            f"params has {len(params)} (W, b) pairs; this network has {len(shapes)} layers"
        )
    checked = []
    for layer, (pair, expected) in enumerate(zip(params, shapes, strict=True), start=1):
        if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise InputTypeError(
                f"params[{layer - 1}] must be a pair (W, b) for layer {layer}, "
                f"got {type(pair).__name__}"
                + (f" of length {len(pair)}" if isinstance(pair, Sequence) else "")
            )
        arrays = []
        for what, array, shape in zip(("W", "b"), pair, expected, strict=True):
            label = f"layer {layer} {what}"
            if array is None:
                raise InputTypeError(f"{label} is None; pass an array of shape {shape}")
            array = _host_view(array, label)
            _check_kind(label, array)
            if tuple(array.shape) != tuple(shape):
                raise InputError(f"{label} has shape {tuple(array.shape)}; expected {tuple(shape)}")
            _check_finite_parameters(label, array)
            check_values(
                label, array, dtype,
                remedy="only a network with dtype='float64' can hold such weights",
            )
            arrays.append(array)
        checked.append((arrays[0], arrays[1]))
    return checked
