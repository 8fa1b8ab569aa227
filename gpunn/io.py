"""Model files: ``.npz`` archives of plain arrays plus JSON metadata, never pickles.

A file holds the architecture (the constructor's arguments), every W and b, the optimizer's name,
settings and state, the epoch reached, the seed that orders the batches (with the epoch, all the
random state a resumed run needs), caller-supplied arrays (such as the data scaler) and metadata
(gpunn version, backend and dtype it was trained with).

Writing is atomic (:func:`gpunn.files.atomic_write`): a crash mid-write leaves the previous file
whole.

Reading trusts nothing in the file. It never unpickles: the archive is opened with
:mod:`zipfile` and each member's ``.npy`` header is parsed (a literal, never code). The metadata is
read and checked first; from the architecture it describes follow the exact shapes of every W and
b, and every member's header is checked against them (and against the member's size on disk)
before any array data is read, so a file that declares huge or object arrays is refused without
allocating them. A corrupt, truncated or hostile file raises :class:`ModelFileError`.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy
import numpy.lib.format as npy_format

from . import validation
from .errors import GpunnError, InputError, InputTypeError, ModelFileError, describe
from .files import as_path, atomic_write

if TYPE_CHECKING:
    from .backend import Ops
    from .network import Network
    from .optim import Optimizer

FORMAT_VERSION = 1
META_KEY = "gpunn_meta"
EXTRA_PREFIX = "extra_"
OPTIMIZER_PREFIX = "optimizer_"
CONFIG_KEYS = ("sizes", "activation", "output", "loss", "init", "dtype", "seed")

MAX_META_BYTES = 32 << 20  # gpunn train's history takes ~200 bytes an epoch: 100,000 in 20 MB
MAX_META_DEPTH = 64  # levels of nesting in the JSON metadata
MAX_MEMBERS = 10_000
MAX_HEADER_BYTES = 10_000  # of one .npy header (NumPy's own limit for untrusted files)
NPY_HEADER_ROOM = 12 + MAX_HEADER_BYTES  # a member's bytes before its data: magic to header
MAX_EXTRA_BYTES = 64 << 20  # the caller's arrays together (a data scaler takes a few KiB)
MAX_STATE_COPIES = 2  # arrays of one value per parameter an optimizer keeps (Adam: m and v)
MAX_ITEMSIZE = 16  # bytes of the widest floating-point type a member may hold
DEFLATE_RATIO_LIMIT = 64  # compressed members may expand at most this much together...
DEFLATE_FREE_BYTES = 16 << 20  # ...once they expand to more than this (zip-bomb guard)
_LAYER_KEY = re.compile(r"^([Wb])(\d+)$")
_KEY = re.compile(r"^[A-Za-z0-9_.\-]+$")

@dataclass
class Checkpoint:
    """What a model file holds besides the network: training state and the caller's extras."""

    meta: dict[str, Any]
    arrays: dict[str, numpy.ndarray] = field(default_factory=dict)
    optimizer_state: dict[str, numpy.ndarray] = field(default_factory=dict)

    @property
    def epoch(self) -> int:
        return int(self.meta.get("epoch", 0))

    def optimizer(self) -> Optimizer | None:
        """The saved optimizer with its settings, or None if the file has none."""
        from .optim import optimizer_from_config

        config = dict(self.meta.get("optimizer") or {})
        if not config:
            return None
        try:
            return optimizer_from_config(config)
        except (GpunnError, TypeError) as exc:
            raise ModelFileError(
                f"the model file's optimizer settings are invalid: {exc}"
            ) from None


# ---------------------------------------------------------------------------- rules
# What a model file may hold. Saving applies the same rules as loading, before anything is
# written, so that whatever save writes, load reads back. A broken rule raises InputError or
# InputTypeError; reading turns them into ModelFileError naming the file.
def _label(key: str) -> str:
    """How messages name the member ``key``: W0, extra array 'scaler_min', ..."""
    if key.startswith(EXTRA_PREFIX):
        return f"extra array {key[len(EXTRA_PREFIX):]!r}"
    if key.startswith(OPTIMIZER_PREFIX):
        return f"optimizer state {key[len(OPTIMIZER_PREFIX):]!r}"
    return "the metadata" if key == META_KEY else key


def _check_plain_numbers(key: str, dtype: numpy.dtype) -> None:
    if dtype.hasobject or dtype.kind not in "biuf" or dtype.itemsize == 0:
        raise InputTypeError(
            f"{_label(key)} has dtype {dtype}; a model file holds plain numbers only (object "
            "arrays are refused: loading them would need unpickling)"
        )


def _check_nesting(value: Any) -> None:
    """JSON data nested at most MAX_META_DEPTH levels deep (checked without recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if not isinstance(item, (dict, list, tuple)):
            continue
        if depth > MAX_META_DEPTH:
            raise InputError(
                f"the metadata is nested more than {MAX_META_DEPTH} levels deep; keep it flatter"
            )
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children)


def _check_sizes(
    sizes: dict[str, int], header_room: int, layout: _Layout | None = None
) -> None:
    """How much a model file may hold. ``sizes`` gives the bytes of each member (the data's when
    saving; when loading, each member as the zip directory declares it, with up to
    ``header_room`` bytes of .npy header); ``layout``, once known, bounds the weights and the
    optimizer state by what the network needs."""
    if len(sizes) > MAX_MEMBERS:
        raise InputError(f"there are {len(sizes)} arrays; a model file holds at most {MAX_MEMBERS}")
    meta = sizes.get(META_KEY, 0)
    if meta > MAX_META_BYTES + header_room:
        raise InputError(
            f"the metadata takes {meta} bytes; a model file holds at most {MAX_META_BYTES} "
            "bytes of it (pass large data as arrays instead)"
        )
    extras = [n for key, n in sizes.items() if key.startswith(EXTRA_PREFIX)]
    if sum(extras) > MAX_EXTRA_BYTES + header_room * len(extras):
        raise InputError(
            f"the extra arrays take {sum(extras)} bytes together; a model file holds at most "
            f"{MAX_EXTRA_BYTES >> 20} MiB of them"
        )
    if layout is None:
        return
    params = [n for key, n in sizes.items() if key != META_KEY and not key.startswith(EXTRA_PREFIX)]
    limit = layout.max_param_bytes + header_room * len(params)
    if sum(params) > limit:
        raise InputError(
            f"the weights and optimizer state take {sum(params)} bytes, more than a network of "
            f"{layout.n_params} parameters can need ({limit})"
        )


@dataclass(frozen=True)
class _Layout:
    """What the model file of one network holds: the shape of every W and b, and the dtype the
    network computes in (weights and optimizer state are cast to it when loaded)."""

    shapes: dict[str, tuple[int, ...]]
    dtype: numpy.dtype

    @classmethod
    def of(cls, config: dict[str, Any]) -> _Layout:
        shapes: dict[str, tuple[int, ...]] = {}
        for layer, (n_in, n_out) in enumerate(itertools.pairwise(config["sizes"])):
            shapes[f"W{layer}"], shapes[f"b{layer}"] = (n_out, n_in), (n_out,)
        return cls(shapes, numpy.dtype(config["dtype"]))

    @property
    def n_params(self) -> int:
        return sum(math.prod(shape) for shape in self.shapes.values())

    @property
    def max_param_bytes(self) -> int:
        """The most bytes the weights and an optimizer's state can take, in any float type."""
        return (1 + MAX_STATE_COPIES) * self.n_params * MAX_ITEMSIZE

    def check_header(self, key: str, shape: tuple[int, ...], dtype: numpy.dtype) -> None:
        """An array ``key`` of ``shape`` and ``dtype`` belongs in this network's model file."""
        _check_plain_numbers(key, dtype)
        if key in self.shapes:
            if shape != self.shapes[key]:
                raise InputError(
                    f"{key} has shape {shape}, but the network it describes needs "
                    f"{self.shapes[key]}"
                )
            if dtype.kind != "f":
                raise InputTypeError(f"{key} has dtype {dtype}, not floating point")
        elif key.startswith(OPTIMIZER_PREFIX):
            if shape not in ((self.n_params,), ()):
                raise InputError(
                    f"{_label(key)} has shape {shape}; the network has {self.n_params} parameters"
                )
        elif not key.startswith(EXTRA_PREFIX):
            what = "a layer the network does not have" if _LAYER_KEY.match(key) else "unknown"
            raise InputError(f"the array {key!r} is not part of a gpunn model file ({what})")

    def check_values(self, key: str, array: numpy.ndarray) -> None:
        """Finite values; the weights and optimizer state also within the network's dtype."""
        if array.dtype.kind != "f":
            return
        if not numpy.isfinite(array).all():
            raise InputError(f"{_label(key)} holds NaN or infinite values")
        if not key.startswith(EXTRA_PREFIX):
            validation.check_values(
                _label(key), numpy.atleast_1d(array), self.dtype,
                remedy="only a network with dtype='float64' can hold them",
            )


# ---------------------------------------------------------------------------- writing
def save_network(
    net: Network,
    path: str | os.PathLike[str],
    *,
    epoch: int | None = None,
    arrays: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
    fit_seed: int | None = None,
) -> None:
    """Write ``net`` (and its last optimizer, if it has trained) to ``path`` atomically.

    Everything is checked by the rules :func:`load` applies before the file is touched: extra
    arrays must hold finite real numbers, metadata must be JSON of bounded size and nesting,
    and the weights must be finite.
    """
    from . import __version__

    target = as_path(path)
    opt = net.optimizer
    if metadata is not None and not isinstance(metadata, dict):
        raise InputTypeError(f"metadata must be a dict, got {type(metadata).__name__}")
    meta = {
        "format_version": FORMAT_VERSION,
        "gpunn_version": __version__,
        "config": net.config(),
        "backend": net.backend.name,
        "epoch": validation.check_int("epoch", epoch, minimum=0) if epoch is not None else 0,
        "fit_seed": validation.check_int(
            "fit_seed", net.seed if fit_seed is None else fit_seed, minimum=0
        ),
        "optimizer": opt.config() if opt is not None else None,
        "metadata": metadata or {},
    }
    payload = {META_KEY: numpy.frombuffer(_meta_json(meta), dtype=numpy.uint8)}
    for layer, (W, b) in enumerate(net.get_params()):
        payload[f"W{layer}"], payload[f"b{layer}"] = W, b
    if opt is not None:
        for key, value in opt.state_arrays(net.backend).items():
            payload[OPTIMIZER_PREFIX + key] = numpy.asarray(value)
    payload.update(_extra_arrays(arrays))
    layout = _Layout.of(meta["config"])
    for key, array in payload.items():
        if key != META_KEY:
            layout.check_header(key, array.shape, array.dtype)
            layout.check_values(key, array)
    _check_sizes({key: array.nbytes for key, array in payload.items()}, 0, layout)
    atomic_write(target, lambda handle: numpy.savez(handle, **payload), error=ModelFileError)


def _meta_json(meta: dict[str, Any]) -> bytes:
    """The metadata as UTF-8 JSON, refused (InputError) where load would refuse it."""
    _check_nesting(meta)
    try:
        return json.dumps(meta, allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise InputTypeError(
            f"metadata must be plain JSON data (str, numbers, lists, dicts): {exc}"
        ) from None


def _extra_arrays(arrays: Any) -> dict[str, numpy.ndarray]:
    """The caller's ``arrays`` as NumPy arrays under their member names."""
    if arrays is None:
        return {}
    if not isinstance(arrays, Mapping):
        raise InputTypeError(
            f"arrays must be a dict of names to arrays, such as {{'scaler_min': lo}}, got "
            f"{type(arrays).__name__}"
        )
    members = {}
    for key, value in arrays.items():
        if not isinstance(key, str) or not _KEY.match(key):
            raise InputError(f"extra array name {key!r} must be letters, digits, '_', '.' or '-'")
        array = validation._host_view(value, f"extra array {key!r}")
        members[EXTRA_PREFIX + key] = validation._to_numpy(array)  # a host copy of a GPU array
    return members


# ---------------------------------------------------------------------------- reading
def check_model_path(path: Path) -> None:
    """Refuse a path that names no regular file: missing, a folder, a device, pipe or socket."""
    if path.is_dir():
        raise ModelFileError(f"{path} is a folder, not a gpunn model file")
    if not path.exists():
        raise ModelFileError(f"model file {path} does not exist")
    if not path.is_file():
        raise ModelFileError(
            f"{path} is not a regular file (a device, pipe or socket); name a gpunn model file"
        )


def read_model_file(
    path: str | os.PathLike[str],
) -> tuple[dict[str, Any], dict[str, numpy.ndarray]]:
    """The metadata and every array of a model file, checked before any array data is read."""
    path = as_path(path)
    check_model_path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(8)
    except OSError as exc:
        raise ModelFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    if size == 0:
        raise ModelFileError(f"{path} is empty (0 bytes): not a gpunn model file")
    if head.startswith(npy_format.MAGIC_PREFIX):
        raise ModelFileError(
            f"{path} is a bare .npy array, not a gpunn model file (save models with net.save)"
        )
    if head[:1] == b"\x80":
        raise ModelFileError(
            f"{path} looks like a Python pickle; gpunn never unpickles files (that could run "
            "code from it). Only .npz model files written by gpunn can be loaded"
        )
    if not head.startswith(b"PK"):
        raise ModelFileError(f"{path} is not a gpunn model file (not an .npz archive)")
    try:
        with zipfile.ZipFile(path) as archive:
            return _read_archive(path, archive, size)
    except ModelFileError:
        raise
    except (InputError, InputTypeError) as exc:  # a rule of model files is broken
        raise ModelFileError(f"{path}: {exc}") from None
    except GpunnError:
        raise
    except (
        zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, OSError, EOFError, ValueError,
        KeyError, NotImplementedError, RuntimeError, OverflowError, MemoryError, RecursionError,
    ) as exc:
        raise ModelFileError(
            f"{path} is not a readable gpunn model file (truncated or corrupt): "
            f"{describe(exc)}"
        ) from None


def _read_archive(
    path: Path, archive: zipfile.ZipFile, size: int
) -> tuple[dict[str, Any], dict[str, numpy.ndarray]]:
    members = _members(path, archive, size)
    declared = {key: info.file_size for key, info in members.items()}
    meta = _check_meta(path, _read_meta(path, archive, members.pop(META_KEY)))
    layout = _Layout.of(meta["config"])
    _check_sizes(declared, NPY_HEADER_ROOM, layout)  # before any other member is decompressed

    headers = {}
    for key, info in members.items():  # every header is checked before any data is read
        header = _read_header(path, archive, info)
        layout.check_header(key, header[0], header[2])
        headers[key] = header
    missing = [key for key in layout.shapes if key not in members]
    if missing:
        raise ModelFileError(f"{path} lacks the array(s) {', '.join(map(repr, missing))}")

    arrays = {key: _read_data(path, archive, members[key], *headers[key]) for key in members}
    for key, array in arrays.items():
        layout.check_values(key, array)
    return meta, arrays


def _members(path: Path, archive: zipfile.ZipFile, size: int) -> dict[str, zipfile.ZipInfo]:
    """The archive's members by key, checked from its zip directory alone: nothing is
    decompressed, and what they declare to expand to is bounded."""
    members: dict[str, zipfile.ZipInfo] = {}
    for info in archive.infolist():
        name = info.filename
        if not name.endswith(".npy") or info.is_dir() or not _KEY.match(name[:-4]):
            raise ModelFileError(f"{path} holds an unexpected member {name!r}")
        if name[:-4] in members:
            raise ModelFileError(f"{path} holds the member {name!r} twice")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise ModelFileError(f"{path}: member {name!r} uses an unsupported compression")
        if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
            raise ModelFileError(f"{path}: member {name!r} has inconsistent sizes (corrupt)")
        members[name[:-4]] = info
    if sum(info.compress_size for info in members.values()) > size:
        raise ModelFileError(f"{path}: its members claim more bytes than the file has (corrupt)")
    deflated = [info for info in members.values() if info.compress_type == zipfile.ZIP_DEFLATED]
    packed = sum(info.compress_size for info in deflated)
    expanded = sum(info.file_size for info in deflated)
    if expanded > DEFLATE_FREE_BYTES and expanded > DEFLATE_RATIO_LIMIT * max(packed, 1):
        raise ModelFileError(
            f"{path}: its compressed members claim to expand from {packed} to {expanded} bytes; "
            "refusing it (a zip bomb?)"
        )
    _check_sizes({key: info.file_size for key, info in members.items()}, NPY_HEADER_ROOM)
    if META_KEY not in members:
        raise ModelFileError(f"{path} has no gpunn metadata: it was not written by gpunn")
    return members


def _read_meta(path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> Any:
    shape, fortran, dtype, offset = _read_header(path, archive, info)
    if dtype != numpy.uint8 or len(shape) != 1 or shape[0] > MAX_META_BYTES:
        raise ModelFileError(f"{path} has malformed gpunn metadata (dtype {dtype}, shape {shape})")
    raw = _read_data(path, archive, info, shape, fortran, dtype, offset).tobytes()
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ModelFileError(f"{path} has unreadable gpunn metadata (bad JSON): {exc}") from None
    _check_nesting(meta)
    return meta


def _check_meta(path: Path, meta: Any) -> dict[str, Any]:
    """The metadata, its format version first; every config value as the constructor wants."""
    if not isinstance(meta, dict):
        raise ModelFileError(f"{path} has malformed gpunn metadata (not a JSON object)")
    version = meta.get("format_version")
    if type(version) is not int or version < 1:
        raise ModelFileError(f"{path} has no valid format version ({version!r})")
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path} uses model-file format version {version}, newer than this gpunn reads "
            f"({FORMAT_VERSION}); upgrade gpunn to load it"
        )
    config = meta.get("config")
    if not isinstance(config, dict):
        raise ModelFileError(f"{path} has malformed gpunn metadata (no network config)")
    unknown = sorted(set(config) - set(CONFIG_KEYS))
    missing = [key for key in CONFIG_KEYS if key not in config]
    if unknown or missing:
        parts = [f"unknown key(s) {unknown}"] if unknown else []
        parts += [f"missing {missing}"] if missing else []
        raise ModelFileError(f"{path} has an invalid network config: {'; '.join(parts)}")
    from .backend import HIDDEN_ACTIVATIONS, LOSSES, OUTPUT_ACTIVATIONS
    from .network import INITS

    try:
        config["sizes"] = list(validation.check_sizes(config["sizes"]))
        for key, choices in (
            ("activation", HIDDEN_ACTIVATIONS), ("output", OUTPUT_ACTIVATIONS), ("loss", LOSSES),
            ("init", INITS),
        ):
            config[key] = validation.check_choice(key, config[key], choices)
        config["dtype"] = validation.check_dtype(config["dtype"]).name
        config["seed"] = validation.check_int("seed", config["seed"], minimum=0)
    except GpunnError as exc:
        raise ModelFileError(f"{path} has an invalid network config: {exc}") from None
    for key in ("epoch", "fit_seed"):
        if key in meta:
            try:
                meta[key] = validation.check_int(key, meta[key], minimum=0)
            except GpunnError as exc:
                raise ModelFileError(f"{path} has an invalid training state: {exc}") from None
    optimizer = meta.get("optimizer")
    if optimizer is not None:
        if (
            not isinstance(optimizer, dict)
            or not isinstance(optimizer.get("name"), str)
            or not all(
                isinstance(v, (int, float)) for k, v in optimizer.items() if k != "name"
            )
            or not isinstance(optimizer.get("lr"), (int, float))
        ):
            raise ModelFileError(f"{path} has malformed optimizer settings: {optimizer!r}")
    if not isinstance(meta.get("metadata", {}), dict):
        raise ModelFileError(f"{path} has malformed metadata (not a JSON object)")
    return meta


def _read_header(
    path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo
) -> tuple[tuple[int, ...], bool, numpy.dtype, int]:
    """(shape, fortran_order, dtype, data offset) of a member, checked; no data read."""
    name = info.filename
    with archive.open(info) as handle:
        version = npy_format.read_magic(handle)
        if version == (1, 0):
            shape, fortran, dtype = npy_format.read_array_header_1_0(handle, MAX_HEADER_BYTES)
        elif version == (2, 0):
            shape, fortran, dtype = npy_format.read_array_header_2_0(handle, MAX_HEADER_BYTES)
        else:
            raise ModelFileError(f"{path}: member {name!r} has unsupported .npy version {version}")
        offset = handle.tell()
    _check_plain_numbers(name[:-4], dtype)
    if any(n < 0 for n in shape):
        raise ModelFileError(f"{path}: member {name!r} declares an invalid shape {shape}")
    nbytes = math.prod(shape) * dtype.itemsize
    if offset + nbytes != info.file_size:
        raise ModelFileError(
            f"{path}: member {name!r} declares shape {shape} of {dtype} ({nbytes} bytes) but "
            f"holds {info.file_size - offset} bytes (truncated or corrupt)"
        )
    return tuple(shape), fortran, dtype, offset


def _read_data(
    path: Path,
    archive: zipfile.ZipFile,
    info: zipfile.ZipInfo,
    shape: tuple[int, ...],
    fortran: bool,
    dtype: numpy.dtype,
    offset: int,
) -> numpy.ndarray:
    """The member's data, read straight into an array of the checked shape (CRC verified)."""
    array = numpy.empty(math.prod(shape), dtype=dtype)
    buffer = memoryview(array.view(numpy.uint8))
    with archive.open(info) as handle:
        handle.read(offset)
        filled = 0
        while filled < len(buffer):
            count = handle.readinto(buffer[filled:])
            if not count:
                raise ModelFileError(f"{path}: member {info.filename!r} is truncated")
            filled += count
        if handle.read(1):  # also makes zipfile check the member's CRC
            raise ModelFileError(f"{path}: member {info.filename!r} is longer than declared")
    if fortran:
        return array.reshape(shape[::-1]).transpose()
    return array.reshape(shape)


def load(path: str | os.PathLike[str], backend: str | Ops = "auto") -> Network:
    """The network saved in ``path``, on ``backend``; ``net.checkpoint`` holds the rest."""
    from .backend import get_backend
    from .network import Network

    path = as_path(path)
    ops = get_backend(backend)  # the caller's argument: its errors are the caller's
    meta, arrays = read_model_file(path)
    config = meta["config"]
    try:
        net = Network(backend=ops, **config)
    except (GpunnError, TypeError) as exc:
        raise ModelFileError(f"{path} describes an invalid network: {exc}") from None
    params = [(arrays[f"W{layer}"], arrays[f"b{layer}"]) for layer in range(net.n_layers)]
    try:
        net.set_params(params)
    except GpunnError as exc:
        raise ModelFileError(f"{path} holds invalid weights: {exc}") from None
    net.checkpoint = Checkpoint(
        meta=meta,
        arrays=_strip(arrays, EXTRA_PREFIX),
        optimizer_state=_strip(arrays, OPTIMIZER_PREFIX),
    )
    return net


def _strip(arrays: dict[str, numpy.ndarray], prefix: str) -> dict[str, numpy.ndarray]:
    return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
