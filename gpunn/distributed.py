"""Data-parallel training across processes and GPUs, on MPI (mpi4py) or NCCL (CuPy).

Synchronous data parallelism: each of N ranks holds a full copy of the network and the whole
data set, takes a contiguous share of every global mini-batch of m rows (see
:func:`gpunn.train.shard_rows`), and back-propagates its share with the cost scaled by 1/m. The
gradient of the batch is the sum of the shares,

    ∂C/∂W = (1/m) Σ_i ∂C_i/∂W = Σ_ranks (1/m) Σ_{i in share} ∂C_i/∂W,

so one allreduce (sum) of the flat gradient buffer gives every rank the gradient a single process
would have computed for that batch; every rank applies the same update, and the copies stay
identical. The batch order comes from the shared seed, so N ranks with global batch m follow the
same trajectory as one process with batch m, up to the rounding of the summation order.

A communicator is what :func:`gpunn.train.fit` takes as ``comm``::

    from gpunn import distributed
    comm = distributed.connect("auto", "numpy")      # rank and size from mpiexec
    net = gpunn.Network([784, 256, 10], backend="numpy", seed=0)
    net.fit(X, y, batch_size=1024, comm=comm, progress=comm.is_root)

and is launched as ``mpiexec -n 4 python train.py``. Engines:

* :class:`MPICommunicator`: mpi4py (``pip install "gpunn[mpi]"``); NumPy arrays are reduced in
  place; CuPy arrays directly where the MPI library is CUDA-aware, else staged through the host.
* :class:`NCCLCommunicator`: CuPy's NCCL, one process per GPU, bootstrapped over MPI; the
  allreduce is queued on the current CUDA stream and does not wait for the host.
* :class:`SingleProcess`: one rank, every collective a no-op.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import warnings
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from .backend import Array, Ops, get_backend, requested_backend
from .backend import cuda as _cuda
from .errors import BackendUnavailableError, InputError, describe

if TYPE_CHECKING:
    from .network import Network

ENGINES = ("auto", "mpi", "nccl", "none")
MPI_INSTALL_HINT = 'pip install "gpunn[mpi]" (mpi4py and an MPI runtime with its mpiexec)'
NCCL_INSTALL_HINT = (
    'pip install "nvidia-nccl-cu12" (or -cu13, matching your CuPy) and "gpunn[mpi]" '
    "(NCCL is bootstrapped over MPI)"
)
CUDA_AWARE_ENV = "GPUNN_MPI_CUDA_AWARE"  # "1"/"0": override the detection of CUDA-aware MPI

# (world size, rank, local rank) variables set by the common launchers, first match wins.
LAUNCHER_ENV = (
    ("Open MPI", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK"),
    ("MPICH/Hydra", "PMI_SIZE", "PMI_RANK", "MPI_LOCALRANKID"),
    ("PMIx", "PMIX_SIZE", "PMIX_RANK", "PMIX_LOCAL_RANK"),
    ("MVAPICH2", "MV2_COMM_WORLD_SIZE", "MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_LOCAL_RANK"),
    ("Slurm srun", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID"),
    ("Cray PALS", "PALS_SIZE", "PALS_RANKID", "PALS_LOCAL_RANKID"),
)


class DistributedWarning(UserWarning):
    """A distributed run goes on, differently from what was asked (e.g. as one process)."""


@runtime_checkable
class Communicator(Protocol):
    """What the training loop needs from a group of ranks.

    ``allreduce_sum`` and ``broadcast`` work in place on a contiguous array of the network's
    device (0-d arrays too) and return it; ``rank`` is this process's index in 0..size−1.
    """

    rank: int
    size: int

    @property
    def is_root(self) -> bool: ...

    def allreduce_sum(self, array: Array) -> Array: ...

    def broadcast(self, array: Array, root: int = 0) -> Array: ...

    def barrier(self) -> None: ...


class _Base:
    rank = 0
    size = 1
    local_rank = 0
    engine = "none"

    @property
    def is_root(self) -> bool:
        """True on rank 0, the rank that prints progress and writes model files."""
        return self.rank == 0

    def close(self) -> None:
        """Release the engine's resources (the communicator is unusable afterwards)."""

    def __enter__(self) -> _Base:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} rank {self.rank} of {self.size}>"


class SingleProcess(_Base):
    """A group of one: every collective leaves its array as it is."""

    def allreduce_sum(self, array: Array) -> Array:
        """Σ over one rank: the array itself."""
        return array

    def broadcast(self, array: Array, root: int = 0) -> Array:
        _check_root(root, 1)
        return array

    def barrier(self) -> None:
        """Nothing to wait for."""


class MPICommunicator(_Base):
    """Ranks of an MPI job (``MPI.COMM_WORLD`` unless ``mpi_comm`` is given), via mpi4py.

    NumPy arrays are reduced in place with ``Allreduce(IN_PLACE, ...)``. CuPy arrays are handed
    to MPI directly when the MPI library is CUDA-aware (detected with ``MPIX_Query_cuda_support``,
    or forced with ``GPUNN_MPI_CUDA_AWARE=1``/``0``), after the stream has finished writing them;
    otherwise they are copied to the host, reduced there and copied back.
    """

    engine = "mpi"

    def __init__(self, ops: Ops | str | None = None, mpi_comm: Any = None) -> None:
        MPI = _import_mpi()
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD if mpi_comm is None else mpi_comm
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self.ops = get_backend(ops)
        self.local_rank = _local_rank(MPI, self.comm)
        self.on_gpu = self.ops.name != "numpy"  # device arrays that MPI may not read
        self.cuda_aware = self.on_gpu and mpi_cuda_aware(MPI)
        if self.ops.name == "cupy":
            _use_local_gpu(self.local_rank)

    def _buffer(self, array: Array) -> tuple[Array, Any]:
        """(what MPI reads and writes, the host copy to copy back from, or None)."""
        _check_contiguous(array)
        if not self.on_gpu or not self.ops.is_device_array(array):
            return array, None
        self.ops.synchronize()  # MPI knows nothing of CUDA streams
        if self.cuda_aware:
            return array, None
        host = self.ops.to_host(array)
        return host, host

    def allreduce_sum(self, array: Array) -> Array:
        """array ← Σ_ranks array, in place."""
        buf, staged = self._buffer(array)
        self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
        if staged is not None:
            array[...] = self.ops.asarray(staged)
        return array

    def broadcast(self, array: Array, root: int = 0) -> Array:
        """array ← rank ``root``'s array, in place."""
        _check_root(root, self.size)
        buf, staged = self._buffer(array)
        self.comm.Bcast(buf, root=root)
        if staged is not None:
            array[...] = self.ops.asarray(staged)
        return array

    def barrier(self) -> None:
        """Wait until every rank has queued its device work and reached this point."""
        self.ops.synchronize()
        self.comm.Barrier()


class NCCLCommunicator(_Base):
    """One process per GPU, reducing with NVIDIA's NCCL through CuPy.

    Each process uses the GPU numbered by its rank on its host (``local_rank`` modulo the
    visible devices). Rank 0 draws the NCCL unique id and MPI broadcasts it (the bootstrap);
    after that every collective is an NCCL call queued on the current CUDA stream: it waits for
    the kernels before it and the host does not wait for it, and it can be captured in a CUDA
    graph.
    """

    engine = "nccl"

    def __init__(self, ops: Ops | str | None = "cupy", mpi_comm: Any = None) -> None:
        nccl = usable_nccl()
        if nccl is None:
            raise BackendUnavailableError(
                f"the NCCL engine is not available here: {nccl_unavailable_reason()}; "
                f"{NCCL_INSTALL_HINT}, or use --distributed mpi"
            )
        self.ops = get_backend(ops)
        if self.ops.name != "cupy":
            raise InputError(
                f"the NCCL engine reduces GPU arrays; this network runs on {self.ops.name!r}. "
                "Use the MPI engine for CPU ranks (--distributed mpi)"
            )
        MPI = _import_mpi()
        self.MPI = MPI
        self.mpi = MPI.COMM_WORLD if mpi_comm is None else mpi_comm
        self.rank = self.mpi.Get_rank()
        self.size = self.mpi.Get_size()
        self.local_rank = _local_rank(MPI, self.mpi)
        self.device = _use_local_gpu(self.local_rank)
        unique_id = nccl.get_unique_id() if self.rank == 0 else None
        unique_id = self.mpi.bcast(unique_id, root=0)
        self.nccl = nccl
        self.comm = nccl.NcclCommunicator(self.size, unique_id, self.rank)
        self._types = {
            "float16": nccl.NCCL_FLOAT16,
            "float32": nccl.NCCL_FLOAT32,
            "float64": nccl.NCCL_FLOAT64,
            "int32": nccl.NCCL_INT32,
            "int64": nccl.NCCL_INT64,
        }

    def _args(self, array: Array) -> tuple[int, int, int, int]:
        """(device pointer, element count, NCCL datatype, current stream pointer)."""
        _check_contiguous(array)
        dtype = self._types.get(array.dtype.name)
        if dtype is None:
            raise InputError(f"NCCL cannot reduce arrays of dtype {array.dtype.name}")
        stream = _cuda.cupy_module().cuda.get_current_stream()
        return array.data.ptr, array.size, dtype, stream.ptr

    def allreduce_sum(self, array: Array) -> Array:
        """array ← Σ_ranks array, in place, queued on the current stream (no host sync)."""
        ptr, count, dtype, stream = self._args(array)
        self.comm.allReduce(ptr, ptr, count, dtype, self.nccl.NCCL_SUM, stream)
        return array

    def broadcast(self, array: Array, root: int = 0) -> Array:
        """array ← rank ``root``'s array, in place, queued on the current stream."""
        _check_root(root, self.size)
        ptr, count, dtype, stream = self._args(array)
        self.comm.broadcast(ptr, ptr, count, dtype, root, stream)
        return array

    def barrier(self) -> None:
        """Wait for this GPU's queued work, then for every rank (over MPI)."""
        self.ops.synchronize()
        self.mpi.Barrier()

    def close(self) -> None:
        comm, self.comm = self.comm, None
        if comm is not None:
            comm.destroy()


# ---------------------------------------------------------------------- choosing an engine
def launcher_world(environ: Any = None) -> tuple[str, int, int, int] | None:
    """(launcher, size, rank, local rank) read from a launcher's environment, or None.

    Knows Open MPI, MPICH's Hydra, PMIx, MVAPICH2, Slurm's srun and Cray PALS.
    """
    env = os.environ if environ is None else environ
    for name, size_var, rank_var, local_var in LAUNCHER_ENV:
        if size_var in env and rank_var in env:
            try:
                size, rank = int(env[size_var]), int(env[rank_var])
                local = int(env.get(local_var, rank))
            except ValueError:
                continue
            return name, size, rank, local
    return None


def connect(engine: str = "auto", ops: Ops | str | None = None) -> Communicator:
    """A communicator over the ranks the launcher started (``mpiexec -n N ...``).

    engine: ``"mpi"`` (mpi4py), ``"nccl"`` (CuPy's NCCL, one process per GPU), ``"auto"``
    (NCCL when ``ops`` is the CuPy backend and NCCL is installed, else MPI) or ``"none"``
    (:class:`SingleProcess`). ops: the network's backend (``net.backend``) or its name.

    On GPUs, call this before creating the network: it selects this rank's GPU (by its rank on
    the host), and the network's arrays must be allocated there.

    Launched without a launcher, the run goes on as one process, with a
    :class:`DistributedWarning` (the engine must still be installed). Raises
    :class:`~gpunn.errors.BackendUnavailableError` when the engine is not installed, and
    :class:`~gpunn.errors.InputError` for an unknown engine or when the launcher started N > 1
    processes but the engine sees a different number (an ``mpiexec`` of another MPI library
    than the one mpi4py was built for starts N separate one-process jobs).
    """
    if not isinstance(engine, str) or engine.strip().lower() not in ENGINES:
        raise InputError(f"distributed engine is {engine!r}; choose one of {', '.join(ENGINES)}")
    engine = engine.strip().lower()
    if engine == "none":
        return SingleProcess()
    world = launcher_world()
    if world is not None and _may_choose_the_gpu(ops):
        _select_launcher_gpu(world[3])
    ops = get_backend(ops)
    if engine == "auto":
        if world is None:
            engine = "nccl" if ops.name == "cupy" and usable_nccl() is not None else "mpi"
        elif ops.name == "cupy" and usable_nccl() is not None and _mpi_importable():
            engine = "nccl"
        else:
            engine = "mpi"  # raises below, with the install hint, if mpi4py is missing
    if engine == "mpi":
        _import_mpi()
    else:
        _require_nccl()
    if world is None:
        warnings.warn(
            f"gpunn: distributed engine {engine!r} was asked for but no MPI launcher started "
            "this process; training as a single process. Launch N ranks with "
            "`mpiexec -n N ...`",
            DistributedWarning,
            stacklevel=2,
        )
        return SingleProcess()
    comm: _Base = MPICommunicator(ops) if engine == "mpi" else NCCLCommunicator(ops)
    if comm.size != world[1]:
        launcher, size = world[0], world[1]
        comm.close()
        raise InputError(
            f"{launcher} started {size} processes but MPI (mpi4py) sees {comm.size}: the "
            "mpiexec on PATH belongs to another MPI library than the one mpi4py uses. Run the "
            "mpiexec installed with mpi4py's MPI (for gpunn[mpi]: the one in the same "
            "environment's bin/)"
        )
    return comm


def _mpi_importable() -> bool:
    try:
        _import_mpi()
    except BackendUnavailableError:
        return False
    return True


def _import_mpi() -> Any:
    """mpi4py's MPI module (initialising MPI), or a BackendUnavailableError saying how to get it."""
    try:
        from mpi4py import MPI
    except (ImportError, RuntimeError, OSError) as exc:
        raise BackendUnavailableError(
            f"the MPI engine is not available ({describe(exc)}); {MPI_INSTALL_HINT}"
        ) from exc
    return MPI


def _require_nccl() -> None:
    if usable_nccl() is None:
        raise BackendUnavailableError(
            f"the NCCL engine is not available here: {nccl_unavailable_reason()}; "
            f"{NCCL_INSTALL_HINT}"
        )
    _import_mpi()


def usable_nccl() -> Any:
    """CuPy's NCCL binding (``cupy.cuda.nccl``) when CuPy, a GPU and libnccl are all here,
    else None."""
    if nccl_unavailable_reason() is not None:
        return None
    return _cuda.nccl_module()


def nccl_unavailable_reason() -> str | None:
    """None when NCCL can be used here, else why not."""
    gpu = _cuda.unavailable_reason()
    if gpu is not None:
        return gpu
    if _cuda.nccl_module() is None:
        return "CuPy cannot load the NCCL library (libnccl.so.2)"
    return None


def mpi_cuda_aware(MPI: Any = None) -> bool:
    """Whether the MPI library can read and write GPU memory directly.

    ``GPUNN_MPI_CUDA_AWARE=1`` or ``0`` decides; otherwise asks the library's
    ``MPIX_Query_cuda_support()`` (Open MPI, MPICH, MVAPICH2); False when it cannot tell.
    """
    forced = os.environ.get(CUDA_AWARE_ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    if MPI is None:
        MPI = _import_mpi()
    for path in _loaded_mpi_libraries():
        try:
            query = getattr(ctypes.CDLL(path), "MPIX_Query_cuda_support", None)
        except OSError:
            continue
        if query is not None:
            query.restype = ctypes.c_int
            query.argtypes = []
            return bool(query())
    return False


def _loaded_mpi_libraries() -> list[str]:
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "libmpi" in line}
    except OSError:
        return []
    return sorted(p for p in paths if p.startswith("/"))


def _local_rank(MPI: Any, mpi_comm: Any) -> int:
    """This process's index among the ranks on its host (from the launcher, else from MPI)."""
    world = launcher_world()
    if world is not None and world[1] == mpi_comm.Get_size():
        return world[3]
    try:
        host = mpi_comm.Split_type(MPI.COMM_TYPE_SHARED)
    except Exception:  # an MPI without shared-memory communicators: one rank per host
        return 0
    try:
        return host.Get_rank()
    finally:
        host.Free()


def _may_choose_the_gpu(ops: Ops | str | None) -> bool:
    """Whether choosing the backend ``ops`` names may pick CuPy: "cupy", or "auto" (or None)
    unless GPUNN_BACKEND says numpy. A backend already made has chosen its device."""
    if isinstance(ops, Ops) or not (ops is None or isinstance(ops, str)):
        return False
    return requested_backend(ops).strip().lower() in ("cupy", "auto")


def _select_launcher_gpu(local_rank: int) -> None:
    """Make this rank's GPU current before the backend is chosen, where the launcher says the
    rank's place on its host: choosing a backend runs a first kernel, and every rank would
    otherwise make a CUDA context (hundreds of MB) on GPU 0. Nothing happens without CuPy or
    a GPU (the backend choice then says why)."""
    if _cuda.cupy_module() is None:
        return
    with contextlib.suppress(Exception):
        _use_local_gpu(local_rank)


def _use_local_gpu(local_rank: int) -> int:
    """Make GPU ``local_rank`` (modulo the visible ones) this process's current device."""
    cupy = _cuda.cupy_module()
    if cupy is None:
        raise BackendUnavailableError(f"no GPU for this rank: {_cuda.unavailable_reason()}")
    count = cupy.cuda.runtime.getDeviceCount()
    device = local_rank % count
    cupy.cuda.Device(device).use()
    return device


def _check_contiguous(array: Array) -> None:
    if not array.flags.c_contiguous:
        raise InputError(
            f"collectives need a contiguous array; got shape {array.shape} with strides "
            f"{array.strides}"
        )


def _check_root(root: int, size: int) -> None:
    if not 0 <= root < size:
        raise InputError(f"root rank {root} is not in 0..{size - 1}")


# ---------------------------------------------------------------------- training helpers
def verify_replicas(comm: Communicator, net: Network, *settings: float) -> None:
    """Raise InputError on every rank unless all ranks hold the same parameters and settings.

    Call once before training (e.g. with the number of samples, batch size and seed): rank
    0's parameters and settings are broadcast, compared exactly on each rank, and the number
    of ranks that differ is summed, so that every rank raises (none is left waiting in an
    allreduce). One broadcast of the parameters: the cost of one training step's allreduce.
    """
    if comm.size == 1:
        return
    ops = net.backend
    cupy = _cuda.cupy_module()
    if cupy is not None and ops.is_device_array(net.params) and ops.name == "cupy":
        device = net.params.device.id
        current = cupy.cuda.Device().id
        if device != current:
            raise InputError(
                f"rank {comm.rank}'s network lives on GPU {device} but connect() chose GPU "
                f"{current} for it: create the network after connect()"
            )
    root_params = comm.broadcast(ops.copy(net.params), root=0)
    mine = ops.asarray([float(s) for s in settings], dtype="float64")
    root_settings = comm.broadcast(ops.copy(mine), root=0)
    flags = ops.pack_scalars(
        ops.any_differ(root_params, net.params), ops.any_differ(root_settings, mine)
    )
    comm.allreduce_sum(flags)
    params_differ, settings_differ = ops.to_host(flags).tolist()
    if params_differ or settings_differ:
        what = []
        if params_differ:
            what.append(f"the initial parameters differ on {int(params_differ)} rank(s)")
        if settings_differ:
            what.append(
                f"the training settings (samples, batch size, seed...) differ on "
                f"{int(settings_differ)} rank(s)"
            )
        raise InputError(
            "data-parallel ranks are not replicas of rank 0: "
            + "; ".join(what)
            + ". Every rank must build the same network (same sizes, init and seed) and load "
            "the same data with the same options"
        )


def evaluate_distributed(net: Network, Xd: Array, Yd: Array, comm: Communicator) -> dict:
    """:meth:`Network.evaluate_device` with the rows shared across ranks, totals reduced.

    Rank r evaluates its contiguous share of the n rows; the sums of the cost and of the
    correctly classified rows are allreduced (one collective, one read-back), so every rank
    returns the same ``{"loss": Σ cost / n, "accuracy": Σ correct / n}``.
    """
    from .train import shard_rows

    n = Xd.shape[0]
    lo, hi = shard_rows(0, n, comm.rank, comm.size)
    totals = net.evaluation_totals(Xd[lo:hi], Yd[lo:hi])
    comm.allreduce_sum(totals)
    cost, correct = net.backend.to_host(totals).tolist()
    return {"loss": cost / n, "accuracy": correct / n}
