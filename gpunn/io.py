"""Model files: ``.npz`` archives of plain arrays plus JSON metadata, never pickles.

A file holds the architecture (the constructor's arguments), every W and b, the optimizer's name,
settings and state, the epoch reached, the seed that orders the batches (with the epoch, all the
random state a resumed run needs), caller-supplied arrays (such as the data scaler) and metadata
(gpunn version, backend and dtype it was trained with).

Writing is atomic: the archive goes to a temporary file in the target's folder (an unnamed one
where the system supports it, so that even a killed process leaves nothing behind), is flushed to
disk, and is then renamed over the target, so a crash mid-write leaves the previous file whole.

Reading trusts nothing in the file. It never unpickles: the archive is opened with
:mod:`zipfile` and each member's ``.npy`` header is parsed (a literal, never code). The metadata is
read and checked first; from the architecture it describes follow the exact shapes of every W and
b, and every member's header is checked against them (and against the member's size on disk)
before any array data is read, so a file that declares huge or object arrays is refused without
allocating them. A corrupt, truncated or hostile file raises :class:`ModelFileError`.
"""

from __future__ import annotations

import errno
import itertools
import json
import math
import os
import re
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy
import numpy.lib.format as npy_format

from . import validation
from .errors import GpunnError, InputError, InputTypeError, ModelFileError

if TYPE_CHECKING:
    from .backend import Ops
    from .network import Network
    from .optim import Optimizer

FORMAT_VERSION = 1
META_KEY = "gpunn_meta"
EXTRA_PREFIX = "extra_"
OPTIMIZER_PREFIX = "optimizer_"
CONFIG_KEYS = ("sizes", "activation", "output", "loss", "init", "dtype", "seed")

MAX_META_BYTES = 1 << 20  # the JSON metadata of any real model is a few hundred bytes
MAX_MEMBERS = 10_000
MAX_HEADER_BYTES = 10_000  # of one .npy header (NumPy's own limit for untrusted files)
DEFLATE_RATIO_LIMIT = 64  # a compressed member may expand at most this much...
DEFLATE_FREE_BYTES = 16 << 20  # ...once it is larger than this (zip-bomb guard)
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


# ---------------------------------------------------------------------------- writing
def _as_path(path: Any, what: str = "path") -> Path:
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not isinstance(path, (str, os.PathLike)):
        raise InputTypeError(f"{what} must be a file path (str or Path), got {type(path).__name__}")
    return Path(path)


def atomic_write(path: str | os.PathLike[str], write: Any) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it over ``path``.

    The old file, if any, stays intact until the new one is complete on disk. On an error the
    temporary file is removed and the error propagates (OSErrors as :class:`ModelFileError`).
    Where the system offers unnamed temporary files (Linux ``O_TMPFILE``) the data is written to
    one and given a name only once complete, so even a killed process leaves no stray file;
    elsewhere, temporary files left by dead processes are removed by the next save.
    """
    target = _as_path(path)
    directory = target.parent
    if not directory.is_dir():
        raise ModelFileError(f"cannot write {target}: the folder {directory} does not exist")
    if target.is_dir():
        raise ModelFileError(
            f"cannot write {target}: it is a folder; name a file such as model.npz"
        )
    _remove_stale_temporaries(directory, target.name)
    tmp: Path | None = None
    try:
        fd = _open_unnamed(directory)
        if fd is not None:
            with os.fdopen(fd, "wb") as handle:
                _write_all(handle, write)
                tmp = _name_unnamed(handle.fileno(), directory, target.name)
        if tmp is None:  # no unnamed files here: write a named temporary file instead
            tmp = _temporary_name(directory, target.name)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
            with os.fdopen(os.open(tmp, flags, 0o666), "wb") as handle:
                _write_all(handle, write)
        os.replace(tmp, target)
        tmp = None
        _fsync_directory(directory)
    except OSError as exc:
        raise ModelFileError(f"cannot write {target}: {exc.strerror or exc}") from exc
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def _write_all(handle: Any, write: Any) -> None:
    write(handle)
    handle.flush()
    os.fsync(handle.fileno())


def _name_unnamed(fd: int, directory: Path, name: str) -> Path | None:
    """Link the complete unnamed file into ``directory`` under a temporary name (None if the
    system refuses: the caller then writes a named temporary file)."""
    tmp = _temporary_name(directory, name)
    root = os.open("/", os.O_RDONLY)
    try:  # a dir_fd makes os.link use linkat(AT_SYMLINK_FOLLOW), which /proc/self/fd needs
        os.link(f"/proc/self/fd/{fd}", tmp, src_dir_fd=root, follow_symlinks=True)
    except OSError:
        return None
    finally:
        os.close(root)
    return tmp


def _open_unnamed(directory: Path) -> int | None:
    """A descriptor of an unnamed file in ``directory`` (Linux O_TMPFILE), or None."""
    flag = getattr(os, "O_TMPFILE", None)
    if flag is None or not os.path.isdir("/proc/self/fd"):
        return None
    try:
        return os.open(directory, flag | os.O_WRONLY, 0o666)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT):
            return None  # the file system does not support it: use a named temporary file
        raise


def _temporary_name(directory: Path, name: str) -> Path:
    return directory / f".{name}.{os.getpid()}.{os.urandom(4).hex()}.tmp"


def _remove_stale_temporaries(directory: Path, name: str) -> None:
    """Delete ``.<name>.<pid>.<random>.tmp`` files whose writing process no longer exists."""
    pattern = re.compile(rf"^\.{re.escape(name)}\.(\d+)\.[0-9a-f]{{8}}\.tmp$")
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    for entry in entries:
        match = pattern.match(entry.name)
        if match is None or int(match.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(match.group(1)), 0)
        except ProcessLookupError:
            Path(entry.path).unlink(missing_ok=True)
        except (OSError, OverflowError):
            continue  # alive (another user's) or not ours to judge


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable (where directories can be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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

    Everything is checked before the file is touched: extra arrays must hold real numbers,
    metadata must be JSON, and the weights must be finite.
    """
    from . import __version__

    target = _as_path(path)
    opt = net.optimizer
    meta = {
        "format_version": FORMAT_VERSION,
        "gpunn_version": __version__,
        "config": net.config(),
        "backend": net.backend.name,
        "epoch": validation.check_positive_int("epoch", epoch, 0) if epoch is not None else 0,
        "fit_seed": validation.check_positive_int(
            "fit_seed", net.seed if fit_seed is None else fit_seed, 0
        ),
        "optimizer": opt.config() if opt is not None else None,
        "metadata": metadata or {},
    }
    if not isinstance(meta["metadata"], dict):
        raise InputTypeError(f"metadata must be a dict, got {type(metadata).__name__}")
    try:
        text = json.dumps(meta, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InputTypeError(
            f"metadata must be plain JSON data (str, numbers, lists, dicts): {exc}"
        ) from None
    payload: dict[str, numpy.ndarray] = {
        META_KEY: numpy.frombuffer(text.encode(), dtype=numpy.uint8),
    }
    for layer, (W, b) in enumerate(net.get_params()):
        if not (numpy.isfinite(W).all() and numpy.isfinite(b).all()):
            raise InputError(
                f"the network's layer {layer + 1} holds NaN or infinite weights; not saving it"
            )
        payload[f"W{layer}"], payload[f"b{layer}"] = W, b
    if opt is not None:
        for key, value in opt.state_arrays(net.backend).items():
            payload[OPTIMIZER_PREFIX + key] = numpy.asarray(value)
    for key, value in (arrays or {}).items():
        if not isinstance(key, str) or not _KEY.match(key):
            raise InputError(f"extra array name {key!r} must be letters, digits, '_', '.' or '-'")
        array = numpy.asarray(value)
        if array.dtype.kind not in "biuf":
            raise InputTypeError(
                f"extra array {key!r} has dtype {array.dtype}; model files hold numbers only"
            )
        payload[EXTRA_PREFIX + key] = array
    atomic_write(target, lambda handle: numpy.savez(handle, **payload))


# ---------------------------------------------------------------------------- reading
def read_model_file(
    path: str | os.PathLike[str],
) -> tuple[dict[str, Any], dict[str, numpy.ndarray]]:
    """The metadata and every array of a model file, checked before any array data is read."""
    path = _as_path(path)
    if path.is_dir():
        raise ModelFileError(f"{path} is a folder, not a gpunn model file")
    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist")
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
    except GpunnError:
        raise
    except (
        zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, OSError, EOFError, ValueError,
        KeyError, NotImplementedError, RuntimeError, OverflowError, MemoryError, RecursionError,
    ) as exc:
        raise ModelFileError(
            f"{path} is not a readable gpunn model file (truncated or corrupt): "
            f"{type(exc).__name__}: {exc}"
        ) from None


def _read_archive(
    path: Path, archive: zipfile.ZipFile, size: int
) -> tuple[dict[str, Any], dict[str, numpy.ndarray]]:
    infos = archive.infolist()
    if len(infos) > MAX_MEMBERS:
        raise ModelFileError(f"{path} has {len(infos)} members; a gpunn model file has a few")
    members: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        name = info.filename
        if not name.endswith(".npy") or info.is_dir() or not _KEY.match(name[:-4]):
            raise ModelFileError(f"{path} holds an unexpected member {name!r}")
        if name[:-4] in members:
            raise ModelFileError(f"{path} holds the member {name!r} twice")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise ModelFileError(f"{path}: member {name!r} uses an unsupported compression")
        if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
            raise ModelFileError(f"{path}: member {name!r} has inconsistent sizes (corrupt)")
        if (
            info.file_size > DEFLATE_FREE_BYTES
            and info.file_size > DEFLATE_RATIO_LIMIT * max(info.compress_size, 1)
        ):
            raise ModelFileError(
                f"{path}: member {name!r} claims to expand from {info.compress_size} to "
                f"{info.file_size} bytes; refusing it (a zip bomb?)"
            )
        members[name[:-4]] = info
    if sum(info.compress_size for info in infos) > size:
        raise ModelFileError(f"{path}: its members claim more bytes than the file has (corrupt)")
    if META_KEY not in members:
        raise ModelFileError(f"{path} has no gpunn metadata: it was not written by gpunn")

    meta = _check_meta(path, _read_meta(path, archive, members.pop(META_KEY)))
    sizes = meta["config"]["sizes"]
    expected: dict[str, tuple[int, ...]] = {}
    for layer, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        expected[f"W{layer}"], expected[f"b{layer}"] = (n_out, n_in), (n_out,)
    n_params = sum(math.prod(shape) for shape in expected.values())

    headers = {}
    for key, info in members.items():  # every header is checked before any data is read
        header = _read_header(path, archive, info)
        shape, dtype = header[0], header[2]
        if key in expected:
            if shape != expected[key]:
                raise ModelFileError(
                    f"{path}: {key} has shape {shape}, but the network it describes needs "
                    f"{expected[key]}"
                )
            if dtype.kind != "f":
                raise ModelFileError(f"{path}: {key} has dtype {dtype}, not floating point")
        elif key.startswith(OPTIMIZER_PREFIX):
            if shape not in ((n_params,), ()):
                raise ModelFileError(
                    f"{path}: optimizer state {key[len(OPTIMIZER_PREFIX):]!r} has shape {shape}; "
                    f"the network has {n_params} parameters"
                )
        elif not key.startswith(EXTRA_PREFIX):
            what = "a layer the network does not have" if _LAYER_KEY.match(key) else "unknown"
            raise ModelFileError(f"{path} holds an array {key!r} ({what})")
        headers[key] = header
    missing = [key for key in expected if key not in members]
    if missing:
        raise ModelFileError(f"{path} lacks the array(s) {', '.join(map(repr, missing))}")

    arrays = {key: _read_data(path, archive, members[key], *headers[key]) for key in members}
    for key, array in arrays.items():
        if array.dtype.kind == "f" and not numpy.isfinite(array).all():
            raise ModelFileError(f"{path}: {key} holds NaN or infinite values")
    return meta, arrays


def _read_meta(path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> Any:
    shape, fortran, dtype, offset = _read_header(path, archive, info)
    if dtype != numpy.uint8 or len(shape) != 1 or shape[0] > MAX_META_BYTES:
        raise ModelFileError(f"{path} has malformed gpunn metadata (dtype {dtype}, shape {shape})")
    raw = _read_data(path, archive, info, shape, fortran, dtype, offset).tobytes()
    try:
        return json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ModelFileError(f"{path} has unreadable gpunn metadata (bad JSON): {exc}") from None


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
        config["seed"] = validation.check_positive_int("seed", config["seed"], 0)
        for key in ("epoch", "fit_seed"):
            if key in meta:
                meta[key] = validation.check_positive_int(key, meta[key], 0)
    except GpunnError as exc:
        raise ModelFileError(f"{path} has an invalid network config: {exc}") from None
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
    if dtype.hasobject or dtype.kind not in "biuf" or dtype.itemsize == 0:
        raise ModelFileError(
            f"{path}: member {name!r} has dtype {dtype}; a model file holds plain numbers only "
            "(object arrays are refused: loading them would need unpickling)"
        )
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

    path = _as_path(path)
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
