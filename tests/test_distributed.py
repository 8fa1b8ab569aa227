"""Data-parallel training (gpunn.distributed): N ranks with global batch B train exactly like
one process with batch B.

The equivalence is proved in-process with a group of threads that reduce through shared
memory (any N, uneven splits, idle ranks), then across real processes with mpiexec, and on GPUs
with NCCL where there are GPUs.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import numpy
import pytest

import gpunn
from gpunn import distributed
from gpunn.backend import NumpyOps, gpu_available
from gpunn.distributed import (
    Communicator,
    DistributedWarning,
    MPICommunicator,
    SingleProcess,
    connect,
    evaluate_distributed,
    launcher_world,
    verify_replicas,
)
from gpunn.errors import BackendUnavailableError, GpunnError, InputError
from gpunn.train import shard_rows

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "mpi_equivalence.py"
LAUNCHER_VARS = [v for entry in distributed.LAUNCHER_ENV for v in entry[1:]]


# ---------------------------------------------------------------------- an in-process group
class ThreadGroup:
    """``size`` ranks as threads of this process; collectives meet at a barrier."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.barrier = threading.Barrier(size, timeout=60)
        self.slots: list = [None] * size

    def run(self, work):
        """work(comm) on every rank, in parallel; the results in rank order."""
        results: list = [None] * self.size
        errors: list = []

        def target(rank: int) -> None:
            try:
                results[rank] = work(ThreadComm(self, rank))
            except BaseException as exc:  # let the other ranks out of the barrier
                errors.append(exc)
                self.barrier.abort()

        threads = [threading.Thread(target=target, args=(r,)) for r in range(self.size)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        real = [e for e in errors if not isinstance(e, threading.BrokenBarrierError)]
        if real or errors:
            raise (real or errors)[0]
        return results


class ThreadComm:
    """One rank of a :class:`ThreadGroup`; sums in rank order, like a deterministic MPI."""

    def __init__(self, group: ThreadGroup, rank: int) -> None:
        self.group, self.rank, self.size = group, rank, group.size
        self.allreduces = 0

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def allreduce_sum(self, array):
        g = self.group
        g.slots[self.rank] = numpy.array(array, copy=True)
        g.barrier.wait()
        total = g.slots[0].copy()
        for other in g.slots[1:]:
            total += other
        g.barrier.wait()
        array[...] = total
        self.allreduces += 1
        return array

    def broadcast(self, array, root: int = 0):
        g = self.group
        g.slots[self.rank] = numpy.array(array, copy=True)
        g.barrier.wait()
        value = g.slots[root].copy()
        g.barrier.wait()
        array[...] = value
        return array

    def barrier(self) -> None:
        self.group.barrier.wait()


class NoReduce(SingleProcess):
    """A broken engine: claims 2 ranks but never sums (shows the tests can fail)."""

    def __init__(self, rank: int) -> None:
        self.rank, self.size = rank, 2


def make_net(sizes=(8, 6, 3), dtype="float64", seed=5, **kw) -> gpunn.Network:
    kw = {"activation": "tanh", "output": "softmax", "loss": "cross_entropy", **kw}
    return gpunn.Network(list(sizes), backend="numpy", dtype=dtype, seed=seed, **kw)


def data(n: int, n_in: int = 8, n_out: int = 3, seed: int = 1):
    rng = numpy.random.default_rng(seed)
    return rng.random((n, n_in)), rng.integers(0, n_out, n)


def max_diff(a: gpunn.Network, b: gpunn.Network) -> float:
    return float(numpy.max(numpy.abs(a.backend.to_host(a.params) - b.backend.to_host(b.params))))


def train_group(size: int, n: int, batch: int, **options):
    """(the N ranks' networks, a one-process reference) after the same training."""
    X, y = data(n)
    kw = {"epochs": 2, "batch_size": batch, "lr": 0.3, "progress": False, "seed": 4, **options}
    net_options = kw.pop("net", {})

    def work(comm):
        net = make_net(**net_options)
        net.fit(X, y, comm=comm, **kw)  # fit checks first that the replicas agree
        return net, comm

    ranks = ThreadGroup(size).run(work)
    ref = make_net(**net_options)
    ref.fit(X, y, **kw)
    return ranks, ref


# ---------------------------------------------------------------------- equivalence
@pytest.mark.parametrize(
    ("size", "n", "batch"),
    [
        (2, 40, 10),  # even split
        (3, 53, 10),  # B=10 over 3 ranks: shares 4, 3, 3; the last batch (3) one row each
        (4, 22, 3),  # every batch smaller than N: one rank idle each step
        (3, 7, 1),  # batch 1: two of three ranks idle every step
        (5, 64, 64),  # one full batch per epoch
    ],
)
def test_n_ranks_train_like_one_process(size, n, batch):
    ranks, ref = train_group(size, n, batch)
    for net, comm in ranks:
        assert max_diff(net, ref) < 1e-12
        steps = -(-n // batch)
        assert comm.allreduces == 1 + 2 * (steps + 1)  # verify; each step; each epoch's cost
    first = ranks[0][0].backend.to_host(ranks[0][0].params)
    for net, _ in ranks[1:]:
        numpy.testing.assert_array_equal(net.backend.to_host(net.params), first)


@pytest.mark.parametrize("optimizer", ["momentum", "adam"])
def test_equivalence_holds_for_stateful_optimizers(optimizer):
    ranks, ref = train_group(3, 31, 8, optimizer=optimizer, lr=0.05)
    assert all(max_diff(net, ref) < 1e-11 for net, _ in ranks)


def test_float32_equivalence_up_to_rounding():
    net_options = {"dtype": "float32", "sizes": (8, 16, 3), "activation": "relu"}
    ranks, ref = train_group(2, 96, 32, net=net_options)
    assert all(max_diff(net, ref) < 1e-5 for net, _ in ranks)


def test_history_is_the_global_loss():
    X, y = data(45)
    kw = {"epochs": 2, "batch_size": 9, "lr": 0.3, "progress": False}
    histories = ThreadGroup(3).run(lambda comm: make_net().fit(X, y, comm=comm, **kw))
    ref = make_net().fit(X, y, **kw)
    for history in histories:
        numpy.testing.assert_allclose(history["loss"], ref["loss"], rtol=1e-12)


def test_without_the_allreduce_the_ranks_drift_apart():
    X, y = data(40)
    kw = {"epochs": 2, "batch_size": 10, "lr": 0.3, "progress": False}
    ref = make_net()
    ref.fit(X, y, **kw)
    broken = make_net()
    broken.fit(X, y, comm=NoReduce(0), **kw)
    assert max_diff(broken, ref) > 1e-3


def test_single_process_is_exactly_no_communicator():
    X, y = data(30)
    kw = {"epochs": 2, "batch_size": 7, "lr": 0.3, "progress": False}
    a, b = make_net(), make_net()
    a.fit(X, y, comm=SingleProcess(), **kw)
    b.fit(X, y, **kw)
    numpy.testing.assert_array_equal(a.params, b.params)


# ---------------------------------------------------------------------- communicators
def test_single_process_collectives_are_no_ops():
    comm = SingleProcess()
    assert (comm.rank, comm.size, comm.is_root) == (0, 1, True)
    assert isinstance(comm, Communicator)
    x = numpy.arange(4.0)
    assert comm.allreduce_sum(x) is x and comm.broadcast(x) is x
    numpy.testing.assert_array_equal(x, numpy.arange(4.0))
    scalar = numpy.array(2.5)
    assert comm.allreduce_sum(scalar) == 2.5
    comm.barrier()
    with pytest.raises(InputError, match="root rank 1"):
        comm.broadcast(x, root=1)


def test_thread_group_collectives():
    def work(comm):
        x = numpy.full(3, float(comm.rank + 1))
        comm.allreduce_sum(x)
        s = numpy.array(float(comm.rank))  # 0-d
        comm.allreduce_sum(s)
        b = numpy.full(2, float(comm.rank))
        comm.broadcast(b, root=2)
        return x, float(s), b

    for x, s, b in ThreadGroup(3).run(work):
        numpy.testing.assert_array_equal(x, [6.0, 6.0, 6.0])
        assert s == 3.0
        numpy.testing.assert_array_equal(b, [2.0, 2.0])


@pytest.mark.parametrize(("n", "size"), [(10, 3), (2, 4), (0, 2), (1024, 7), (5, 1)])
def test_shares_cover_every_row_once(n, size):
    parts = [shard_rows(0, n, rank, size) for rank in range(size)]
    assert parts[0][0] == 0 and parts[-1][1] == n
    assert all(parts[r][1] == parts[r + 1][0] for r in range(size - 1))
    lengths = [hi - lo for lo, hi in parts]
    assert max(lengths) - min(lengths) <= 1 and sorted(lengths, reverse=True) == lengths


@pytest.mark.parametrize(("n", "size"), [(50, 3), (2, 3), (4100 * 2 + 3, 2)])
def test_evaluate_distributed_equals_evaluate(n, size):
    X, y = data(n, seed=9)
    ref = make_net().evaluate(X, y)

    def work(comm):
        net = make_net()
        return evaluate_distributed(net, net.device_inputs(X), net.device_targets(y, n), comm)

    for result in ThreadGroup(size).run(work):
        assert result["accuracy"] == ref["accuracy"]
        assert result["loss"] == pytest.approx(ref["loss"], rel=1e-12)


def test_verify_replicas_raises_on_every_rank_when_ranks_differ():
    def different_seed(comm):
        net = make_net(seed=comm.rank)
        with pytest.raises(InputError, match=r"initial parameters differ on 1 rank") as info:
            verify_replicas(comm, net, 100, 10)
        return str(info.value)

    assert len(ThreadGroup(2).run(different_seed)) == 2

    def different_batch(comm):
        with pytest.raises(InputError, match="settings"):
            verify_replicas(comm, make_net(), 100, 10 + comm.rank)

    ThreadGroup(3).run(different_batch)
    ThreadGroup(3).run(lambda comm: verify_replicas(comm, make_net(), 100, 10))


# ---------------------------------------------------------------------- connect and launchers
@pytest.fixture
def no_launcher(monkeypatch):
    for var in LAUNCHER_VARS:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_launcher_world_reads_common_launchers():
    assert launcher_world({}) is None
    hydra = {"PMI_SIZE": "4", "PMI_RANK": "2", "MPI_LOCALRANKID": "0"}
    assert launcher_world(hydra) == ("MPICH/Hydra", 4, 2, 0)
    ompi = {"OMPI_COMM_WORLD_SIZE": "8", "OMPI_COMM_WORLD_RANK": "5"}
    assert launcher_world(ompi) == ("Open MPI", 8, 5, 5)
    slurm = {"SLURM_NTASKS": "2", "SLURM_PROCID": "1", "SLURM_LOCALID": "1"}
    assert launcher_world(slurm) == ("Slurm srun", 2, 1, 1)
    assert launcher_world({"PMI_SIZE": "x", "PMI_RANK": "0"}) is None


def test_connect_rejects_unknown_engines():
    with pytest.raises(InputError, match="choose one of auto, mpi, nccl, none"):
        connect("gloo", "numpy")
    assert isinstance(connect("none", "numpy"), SingleProcess)


def test_connect_without_mpi4py_says_what_to_install(no_launcher):
    no_launcher.setitem(sys.modules, "mpi4py", None)  # import mpi4py now fails
    for engine in ("mpi", "auto"):
        with pytest.raises(BackendUnavailableError, match=r'pip install "gpunn\[mpi\]"'):
            connect(engine, "numpy")
    assert issubclass(BackendUnavailableError, GpunnError)


@pytest.mark.skipif(gpu_available(), reason="checks the error where there is no GPU")
def test_connect_nccl_without_gpu_is_a_clear_error(no_launcher):
    with pytest.raises(BackendUnavailableError, match="NCCL engine is not available"):
        connect("nccl", "numpy")
    assert distributed.usable_nccl() is None
    assert distributed.nccl_unavailable_reason() is not None


def test_connect_none_chooses_no_backend(monkeypatch):
    """A single process needs no backend: connect("none") gives no GPU fallback notice."""
    from gpunn import backend

    monkeypatch.setattr(backend, "_auto_backend", functools.cache(backend._auto_backend))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert isinstance(connect("none"), SingleProcess)
    assert backend._auto_backend.cache_info().misses == 0


def mpi_or_skip():
    try:
        return distributed._import_mpi()
    except BackendUnavailableError as exc:
        pytest.skip(f"mpi4py is not installed ({exc})")


def test_connect_without_launcher_runs_as_one_process(no_launcher):
    mpi_or_skip()
    with pytest.warns(DistributedWarning, match="mpiexec -n N"):
        comm = connect("mpi", "numpy")
    assert isinstance(comm, SingleProcess)


def test_connect_detects_an_mpiexec_of_another_mpi(no_launcher):
    mpi_or_skip()  # MPI is initialised before the fake launcher variables appear
    no_launcher.setenv("PMI_SIZE", "2")
    no_launcher.setenv("PMI_RANK", "0")
    with pytest.raises(InputError, match=r"started 2 processes but MPI .* sees 1"):
        connect("mpi", "numpy")


def test_connect_selects_the_launchers_gpu_before_choosing_the_backend(no_launcher,
                                                                      monkeypatch):
    """Choosing a GPU backend runs a first kernel on the current GPU: a rank must be on its
    own GPU by then, or every rank makes a CUDA context on GPU 0."""
    mpi_or_skip()
    events = []
    monkeypatch.setattr(distributed._cuda, "cupy_module", lambda: object())
    monkeypatch.setattr(distributed, "_use_local_gpu", lambda rank: events.append(("gpu", rank)))
    monkeypatch.setattr(distributed, "get_backend",
                        lambda ops: events.append(("backend", ops)) or NumpyOps())
    no_launcher.setenv("PMI_SIZE", "2")
    no_launcher.setenv("PMI_RANK", "1")
    no_launcher.setenv("MPI_LOCALRANKID", "1")
    with pytest.raises(InputError, match="started 2 processes"):
        connect("mpi", "auto")
    assert events[:2] == [("gpu", 1), ("backend", "auto")]
    # a CPU run never touches a GPU: making it current would make a CUDA context there
    for backend, environment in (("numpy", ""), ("auto", "numpy"), (None, "numpy")):
        events.clear()
        no_launcher.setenv("GPUNN_BACKEND", environment)
        with pytest.raises(InputError, match="started 2 processes"):
            connect("mpi", backend)
        assert events[0] == ("backend", backend)
        assert ("gpu", 1) not in events


def test_mpi_communicator_in_one_process(no_launcher):
    MPI = mpi_or_skip()
    comm = MPICommunicator("numpy", MPI.COMM_SELF)
    assert (comm.rank, comm.size, comm.is_root, comm.on_gpu) == (0, 1, True, False)
    x = numpy.arange(5, dtype=numpy.float32)
    comm.allreduce_sum(x)
    comm.broadcast(x)
    numpy.testing.assert_array_equal(x, numpy.arange(5, dtype=numpy.float32))
    scalar = numpy.array(1.5)
    comm.allreduce_sum(scalar)
    assert scalar == 1.5
    comm.barrier()
    with pytest.raises(InputError, match="contiguous"):
        comm.allreduce_sum(numpy.zeros((4, 4))[:, 1])


class FakeDeviceOps(NumpyOps):
    """NumPy arrays that MPI is told it cannot read directly: exercises the host staging."""

    name = "fake-device"


def test_mpi_stages_device_arrays_through_the_host(no_launcher):
    MPI = mpi_or_skip()
    no_launcher.setenv(distributed.CUDA_AWARE_ENV, "0")
    ops = FakeDeviceOps()
    comm = MPICommunicator(ops, MPI.COMM_SELF)
    assert comm.on_gpu and not comm.cuda_aware
    x = numpy.arange(3.0)
    before = ops.host_transfers
    assert comm.allreduce_sum(x) is x
    assert ops.host_transfers == before + 1
    numpy.testing.assert_array_equal(x, [0.0, 1.0, 2.0])
    no_launcher.setenv(distributed.CUDA_AWARE_ENV, "1")
    assert MPICommunicator(ops, MPI.COMM_SELF).cuda_aware


def test_cuda_awareness_is_detected_or_forced(no_launcher):
    MPI = mpi_or_skip()
    no_launcher.setenv(distributed.CUDA_AWARE_ENV, "1")
    assert distributed.mpi_cuda_aware(MPI) is True
    no_launcher.setenv(distributed.CUDA_AWARE_ENV, "0")
    assert distributed.mpi_cuda_aware(MPI) is False
    no_launcher.delenv(distributed.CUDA_AWARE_ENV)
    assert isinstance(distributed.mpi_cuda_aware(MPI), bool)


# ---------------------------------------------------------------------- real processes
def mpiexec_or_skip() -> str:
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        pytest.skip('mpi4py is not installed: pip install "gpunn[mpi]"')
    beside = Path(sys.executable).with_name("mpiexec")
    found = str(beside) if beside.exists() else shutil.which("mpiexec")
    if found is None:
        pytest.skip('no mpiexec on PATH: pip install "gpunn[mpi]" (the mpich wheel has one)')
    return found


def launch(n: int, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    # Open MPI refuses root and more ranks than cores unless told; MPICH ignores these
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    env["OMPI_MCA_rmaps_base_oversubscribe"] = "1"
    command = [mpiexec_or_skip(), "-n", str(n), sys.executable, str(SCRIPT), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("ranks", [2, 3])
def test_mpi_ranks_train_like_one_process(ranks):
    done = launch(ranks)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"4/4 cases: {ranks} ranks (mpi, numpy) equal single-process training" in done.stdout


def test_mpi_ranks_on_simulated_gpus_train_like_one_process():
    """The CuPy backend over MPI (device arrays staged through the host), each rank on the
    simulated GPU of tests/simulated_cupy.py, with recorded steps."""
    done = launch(2, "simulated")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4/4 cases: 2 ranks (mpi, cupy) equal single-process training" in done.stdout


# ---------------------------------------------------------------------- GPUs
def gpu_count() -> int:
    if not gpu_available():
        return 0
    return gpunn.backend.cupy_module().cuda.runtime.getDeviceCount()


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_available(), reason="needs CuPy and an NVIDIA GPU")
def test_nccl_one_rank_smoke(no_launcher):
    if distributed.usable_nccl() is None:
        pytest.skip(f"NCCL is not available: {distributed.nccl_unavailable_reason()}")
    mpi_or_skip()
    comm = distributed.NCCLCommunicator("cupy")
    try:
        assert (comm.rank, comm.size) == (0, 1)
        net = gpunn.Network([8, 6, 3], "tanh", "softmax", "cross_entropy", backend="cupy", seed=2)
        x = net.backend.asarray(numpy.arange(4, dtype=numpy.float32))
        comm.allreduce_sum(x)
        comm.broadcast(x)
        scalar = net.backend.zeros((), "float32") + 2
        comm.allreduce_sum(scalar)
        comm.barrier()
        numpy.testing.assert_array_equal(net.backend.to_host(x), numpy.arange(4))
        assert float(net.backend.to_host(scalar)) == 2.0
        X, y = data(50)
        kw = {"epochs": 2, "batch_size": 16, "lr": 0.3, "progress": False}
        ref = gpunn.Network([8, 6, 3], "tanh", "softmax", "cross_entropy", backend="cupy", seed=2)
        net.fit(X, y, comm=comm, **kw)
        ref.fit(X, y, **kw)
        numpy.testing.assert_allclose(net.get_params()[0][0], ref.get_params()[0][0], atol=1e-6)
    finally:
        comm.close()


@pytest.mark.gpu
@pytest.mark.skipif(gpu_count() < 2, reason="needs two or more NVIDIA GPUs (one rank per GPU)")
def test_nccl_ranks_train_like_one_process():
    if distributed.usable_nccl() is None:
        pytest.skip(f"NCCL is not available: {distributed.nccl_unavailable_reason()}")
    done = launch(gpu_count(), "nccl")
    assert done.returncode == 0, done.stdout + done.stderr
