"""Model files: ``.npz`` archives of plain arrays plus JSON metadata, never pickles.

A file holds the architecture (the constructor's arguments), every W and b, the optimizer's name,
settings and state, the epoch reached, the seed that orders the batches (with the epoch, all the
random state a resumed run needs), caller-supplied arrays (such as the data scaler) and metadata
(gpunn version, backend and dtype it was trained with). It is written atomically: to a temporary
file beside the target, flushed to disk, then renamed over it, so a crash mid-write leaves the
previous file whole. It is read with ``allow_pickle=False`` and checked array by array before any
of it is used, so a corrupt or hostile file is refused with :class:`ModelFileError`.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy

from .errors import GpunnError, ModelFileError

if TYPE_CHECKING:
    from .backend import Ops
    from .network import Network
    from .optim import Optimizer

FORMAT_VERSION = 1
META_KEY = "gpunn_meta"
EXTRA_PREFIX = "extra_"
OPTIMIZER_PREFIX = "optimizer_"


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
        """The saved optimizer with its state, or None if the file has none."""
        from .optim import make_optimizer

        config = dict(self.meta.get("optimizer") or {})
        if not config:
            return None
        name = config.pop("name")
        lr = config.pop("lr")
        return make_optimizer(name, lr, **config)


def atomic_write(path: str | os.PathLike[str], write: Any) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it over ``path``.

    The old file, if any, stays intact until the new one is complete on disk; on any error the
    temporary file is removed and the error propagates.
    """
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    if not directory.is_dir():
        raise ModelFileError(f"cannot write {target}: the folder {directory} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_network(
    net: Network,
    path: str | os.PathLike[str],
    *,
    epoch: int | None = None,
    arrays: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
    fit_seed: int | None = None,
) -> None:
    """Write ``net`` (and its last optimizer, if it has trained) to ``path`` atomically."""
    from . import __version__

    opt = net.optimizer
    meta = {
        "format_version": FORMAT_VERSION,
        "gpunn_version": __version__,
        "config": net.config(),
        "backend": net.backend.name,
        "epoch": int(epoch) if epoch is not None else 0,
        "fit_seed": int(net.seed if fit_seed is None else fit_seed),
        "optimizer": opt.config() if opt is not None else None,
        "metadata": metadata or {},
    }
    payload: dict[str, numpy.ndarray] = {
        META_KEY: numpy.frombuffer(json.dumps(meta).encode(), dtype=numpy.uint8),
    }
    for l, (W, b) in enumerate(net.get_params()):
        payload[f"W{l}"], payload[f"b{l}"] = W, b
    if opt is not None:
        for key, value in opt.state_arrays(net.backend).items():
            payload[OPTIMIZER_PREFIX + key] = numpy.asarray(value)
    for key, value in (arrays or {}).items():
        payload[EXTRA_PREFIX + key] = numpy.asarray(value)
    atomic_write(path, lambda handle: numpy.savez(handle, **payload))


def read_model_file(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, numpy.ndarray]]:
    """The metadata and every array of a model file, checked to be plain numeric data."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist")
    try:
        with numpy.load(path, allow_pickle=False) as archive:
            if not isinstance(archive, numpy.lib.npyio.NpzFile):
                raise ModelFileError(f"{path} is a bare .npy array, not a gpunn model file")
            arrays = {key: archive[key] for key in archive.files}
    except GpunnError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise ModelFileError(
            f"{path} is not a readable gpunn model file (truncated, corrupt, or not an .npz "
            f"archive of plain arrays): {exc}"
        ) from None
    if META_KEY not in arrays:
        raise ModelFileError(f"{path} has no gpunn metadata: it was not written by gpunn")
    try:
        meta = json.loads(arrays.pop(META_KEY).tobytes().decode())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{path} has unreadable gpunn metadata: {exc}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        raise ModelFileError(f"{path} has malformed gpunn metadata")
    version = meta.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise ModelFileError(f"{path} has no valid format version")
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path} uses model-file format version {version}, newer than this gpunn reads "
            f"({FORMAT_VERSION}); upgrade gpunn to load it"
        )
    for key, array in arrays.items():
        if array.dtype.kind not in "biuf":
            raise ModelFileError(f"{path}: array {key!r} has dtype {array.dtype}, not numbers")
    return meta, arrays


def load(path: str | os.PathLike[str], backend: str | Ops = "auto") -> Network:
    """The network saved in ``path``, on ``backend``; ``net.checkpoint`` holds the rest."""
    from .network import Network

    meta, arrays = read_model_file(path)
    config = meta["config"]
    try:
        net = Network(backend=backend, **config)
    except GpunnError as exc:
        raise ModelFileError(f"{path} describes an invalid network: {exc}") from None
    except TypeError as exc:
        raise ModelFileError(f"{path} has unexpected network settings: {exc}") from None
    params = []
    for l, (W, b) in enumerate(zip(net.weights, net.biases)):
        pair = []
        for name, expected in ((f"W{l}", W.shape), (f"b{l}", b.shape)):
            array = arrays.get(name)
            if array is None:
                raise ModelFileError(f"{path} lacks the array {name!r}")
            if array.shape != expected:
                raise ModelFileError(
                    f"{path}: {name} has shape {array.shape}, but the network needs {expected}"
                )
            if array.dtype.kind != "f" or not numpy.isfinite(array).all():
                raise ModelFileError(f"{path}: {name} holds non-finite or non-float values")
            pair.append(array)
        params.append(tuple(pair))
    net.set_params(params)
    net.checkpoint = Checkpoint(
        meta=meta,
        arrays={k[len(EXTRA_PREFIX):]: v for k, v in arrays.items() if k.startswith(EXTRA_PREFIX)},
        optimizer_state={
            k[len(OPTIMIZER_PREFIX):]: v for k, v in arrays.items() if k.startswith(OPTIMIZER_PREFIX)
        },
    )
    return net
