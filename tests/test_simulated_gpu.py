"""What only the simulated GPU of ``tests/simulated_cupy.py`` can check: that it refuses
what a GPU would refuse (so that a pass on it means something), that a step is exactly the
fused kernels and a recorded step one graph launch, training through the kernels' CUDA text
compiled for the CPU, and device memory running out where the test decides."""

from __future__ import annotations

import contextlib
import warnings

import numpy
import pytest
import simulated_cupy
from gpu_support import CONFIGS, assert_same_training, cupy_ops, data

import gpunn
from gpunn.backend import cuda as cuda_module
from gpunn.backend import kernels as K
from gpunn.errors import DeviceMemoryError
from gpunn.optim import make_optimizer


def test_cupys_products_are_refused_while_a_stream_captures(simulated):
    """As CuPy 13 and 14 refuse them (its cublas.setStream raises), so that a step recorded
    on the simulated GPU must do its products through gpunn's own cuBLAS handle."""
    cp = simulated_cupy
    a = cp.ones((2, 2), dtype="float32")
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        for product in (lambda: cp.matmul(a, a), lambda: a @ a, lambda: cp.dot(a, a)):
            with pytest.raises(NotImplementedError, match="cuBLAS API during stream capture"):
                product()
        stream.end_capture()


def test_gpunns_products_follow_the_tf32_setting_and_the_dtype(simulated):
    from gpunn.backend import cublas

    ops = cupy_ops()
    for dtype in ("float32", "float64"):
        a = simulated_cupy.ones((3, 3), dtype=dtype)
        for tf32 in (False, True):
            with ops.tf32_scope(tf32):
                ops.matmul(a, a, out=simulated_cupy.empty((3, 3), dtype=dtype))
    linalg = simulated_cupy._routines_linalg
    for dtype, setting in (("float32", linalg.COMPUTE_TYPE_PEDANTIC),
                           ("float64", linalg.COMPUTE_TYPE_PEDANTIC),
                           ("float32", linalg.COMPUTE_TYPE_FP16)):  # CuPy: float32 anyway
        simulated_cupy._core.set_compute_type(dtype, setting)
        a = simulated_cupy.ones((3, 3), dtype=dtype)
        ops.matmul(a, a, out=simulated_cupy.empty((3, 3), dtype=dtype))
    assert simulated.gemm_compute_types == [
        cublas.CUBLAS_COMPUTE_32F, cublas.CUBLAS_COMPUTE_32F_FAST_TF32,
        cublas.CUBLAS_COMPUTE_64F, cublas.CUBLAS_COMPUTE_64F,
        cublas.CUBLAS_COMPUTE_32F_PEDANTIC, cublas.CUBLAS_COMPUTE_64F_PEDANTIC,
        cublas.CUBLAS_COMPUTE_32F,
    ]


def test_a_layout_one_cublas_call_cannot_take_is_left_to_cupy(simulated):
    ops = cupy_ops()
    a = simulated_cupy.ones((4, 6), dtype="float32")[:, ::2]  # strided both ways
    out = ops.matmul(a, simulated_cupy.ones((3, 2), dtype="float32"),
                     out=simulated_cupy.empty((4, 2), dtype="float32"))
    assert out.get().tolist() == [[3.0, 3.0]] * 4
    # an output that overlaps an operand: cuBLAS would read what it has written
    square = simulated_cupy.asarray(numpy.arange(4.0, dtype=numpy.float32).reshape(2, 2))
    ops.matmul(square, square, out=square)
    assert square.get().tolist() == [[2.0, 3.0], [6.0, 11.0]]
    assert simulated.gemm_compute_types == []


def test_without_gpunns_cublas_handle_training_is_right_and_the_warning_says_why(
    simulated, monkeypatch
):
    """Where the handle cannot be made (no libcublas found, say), products fall back to
    cupy.matmul: training is still right, steps are not recorded, and the capture warning
    names the cause; the GPU running out of memory is not taken for such a cause."""
    from gpunn.backend import cupy_ops as cupy_ops_module

    def no_handle():
        raise OSError("cannot load libcublas (no such file)")

    monkeypatch.setattr(cupy_ops_module, "own_cublas_gemm", no_handle)
    X, y = data(n=40)
    reference = gpunn.Network([12, 8, 3], backend="numpy", seed=0)
    reference.fit(X, y, epochs=2, batch_size=8, lr=0.5, shuffle=False, progress=False)
    ops = cupy_ops()
    net = gpunn.Network([12, 8, 3], backend=ops, seed=0)
    with pytest.warns(RuntimeWarning, match="own cuBLAS handle is not in use: OSError: cannot "
                      "load libcublas"):
        net.fit(X, y, epochs=2, batch_size=8, lr=0.5, shuffle=False, progress=False)
    assert ops.recorded_steps == 0 and "libcublas" in ops.cublas_problem
    for (W0, b0), (W1, b1) in zip(reference.get_params(), net.get_params(), strict=True):
        numpy.testing.assert_allclose(W1, W0, rtol=1e-5, atol=1e-6)
        numpy.testing.assert_allclose(b1, b0, rtol=1e-5, atol=1e-6)

    def out_of_memory():
        raise simulated_cupy.cuda.memory.OutOfMemoryError(1 << 30, 0)

    monkeypatch.setattr(cupy_ops_module, "own_cublas_gemm", out_of_memory)
    ops = cupy_ops()
    a = simulated_cupy.ones((2, 2), dtype="float32")
    with pytest.raises(MemoryError):
        ops.matmul(a, a, out=simulated_cupy.empty((2, 2), dtype="float32"))
    assert ops.cublas_problem is None


def test_a_network_too_large_for_the_gpu_says_so(simulated):
    simulated.memory_limit = 1 << 20  # 1 MiB of device memory
    with pytest.raises(DeviceMemoryError, match="allocating the weights and gradients, which "
                       r"takes about 3\.8 MiB .*Use a smaller network"):
        gpunn.Network([1000, 500, 2], backend=cupy_ops())


class CUBLASError(RuntimeError):
    """As cuBLAS's error class in CuPy: the status code in ``status``."""

    def __init__(self, status: int) -> None:
        super().__init__({3: "CUBLAS_STATUS_ALLOC_FAILED"}.get(status, "CUBLAS_STATUS_?"))
        self.status = status


def _out_of_memory_errors():
    import simulated_cupy as cp

    return {
        "pool": lambda: cp.OutOfMemoryError(1 << 30, 1 << 34),
        "runtime": lambda: cp.cuda.runtime.CUDARuntimeError(
            "cudaErrorMemoryAllocation: out of memory", status=2),
        "cublas": lambda: CUBLASError(3),
    }


@pytest.mark.parametrize("source", ["pool", "runtime", "cublas"])
def test_out_of_memory_in_the_middle_of_training_names_the_batch(simulated, monkeypatch,
                                                                 source):
    """Wherever in training the GPU runs out of memory, and whoever reports it (CuPy's pool,
    the CUDA runtime or cuBLAS allocating outside the pool), the error names the batch size."""
    from gpunn.backend.cupy_ops import CupyOps

    error = _out_of_memory_errors()[source]
    calls = []
    forward = CupyOps.layer_forward

    def failing_forward(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # the second step, still eager
            raise error()
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(CupyOps, "layer_forward", failing_forward)
    X, y = data(n=40)
    net = gpunn.Network([12, 8, 3], backend=cupy_ops())
    with pytest.raises(DeviceMemoryError, match="while training for a batch of 8 rows"):
        net.fit(X, y, epochs=3, batch_size=8, progress=False)


@pytest.mark.parametrize("error", [
    lambda cp: cp.cuda.runtime.CUDARuntimeError("cudaErrorIllegalAddress", status=700),
    lambda cp: CUBLASError(13),  # CUBLAS_STATUS_EXECUTION_FAILED
    lambda cp: ValueError("not about memory"),
], ids=["runtime", "cublas", "other"])
def test_other_device_errors_pass_through_the_memory_guard(simulated, error):
    import simulated_cupy as cp

    raised = error(cp)
    with pytest.raises(type(raised)) as caught, cupy_ops().memory_guard("training", 8, 1024):
        raise raised
    assert caught.value is raised


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(c.values()))
@pytest.mark.parametrize("optimizer", ["nesterov", "adam"])
def test_training_runs_the_cuda_code_compiled_for_the_cpu(config, optimizer):
    """The simulated GPU with every fused kernel running its CUDA text compiled for the CPU
    (tests/host_kernels.py), recorded steps and all: the training matches NumPy's."""
    import host_kernels

    reason = host_kernels.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    X, y = data(n=37)
    results, histories = [], []
    with simulated_cupy.install(compiled_kernels=True):
        for backend in ("numpy", cupy_ops()):
            net = gpunn.Network([12, 10, 3], backend=backend, seed=2, dtype="float64", **config)
            with warnings.catch_warnings():
                warnings.simplefilter("error", RuntimeWarning)
                history = net.fit(X, y, epochs=2, batch_size=8, optimizer=optimizer,
                                  lr=0.01 if optimizer == "adam" else 0.05, progress=False,
                                  validation_data=(X[:9], y[:9]))
            results.append(net)
            histories.append([history])
    assert_same_training(*results, histories, rtol=1e-8)  # C++ and NumPy round apart


def test_the_simulation_catches_what_a_gpu_would_refuse(simulated):
    """The checks that make a pass on the simulated GPU mean something."""
    import simulated_cupy as cp

    from gpunn.backend.cupy_ops import CupyOps

    ops = CupyOps()
    params, grads = cp.zeros(8, dtype=numpy.float32), cp.ones(8, dtype=numpy.float32)
    with pytest.raises(TypeError, match="Python float"):  # float32 would not stay float32
        K.SGD_UPDATE.build()(grads, 0.1, numpy.float32(0), params)
    with pytest.raises(TypeError, match="mismatched"):
        K.SGD_UPDATE.build()(grads, numpy.float64(0.1), numpy.float32(0), params)
    with pytest.raises(TypeError, match="host"):
        K.SGD_UPDATE.build()(grads.get(), numpy.float32(0.1), numpy.float32(0), params)
    with pytest.raises(TypeError, match="Implicit conversion"):
        numpy.asarray(params)
    with pytest.raises(ValueError, match="broadcast"):
        K.SGD_UPDATE.build()(grads, numpy.float32(0.1), numpy.float32(0), params[:4])
    with pytest.raises(TypeError, match="mismatched"):  # an int32 cursor for an int64 one
        K.ADVANCE_CURSOR.build()(numpy.int64(3), numpy.int64(10), cp.zeros((), numpy.int32))
    with pytest.raises(TypeError, match="decided by array arguments only"):
        cp._check_arguments("k", [(False, "T", "lr")], (numpy.float32(0.1),))
    with pytest.raises(TypeError, match="unknown parameter type 'real'"):
        cp._check_arguments("k", [(False, "real", "x")], (params,))
    with pytest.raises(TypeError, match="options must be a tuple"):
        cp.RawModule(code="", options=["--std=c++14"])
    expression = K.row_kernel_expression("gpunn_bias_softmax", numpy.float32)
    z = cp.zeros((2, 4), dtype=numpy.float32)
    softmax_args = (z, cp.zeros(4, dtype=numpy.float32), z, numpy.int64(2), numpy.int64(4),
                    numpy.float32(-1e30))
    with pytest.raises(TypeError, match="must be tuples"):
        K.row_module().get_function(expression)([2], (32,), softmax_args, shared_mem=128)

    def step_that_reads_the_loss():
        ops.sgd_update(params, grads, 0.1)
        float(params.sum())

    # the warning gives the step's own error, not the "capture invalidated" that follows it
    with pytest.warns(RuntimeWarning, match=r"could not be recorded as a CUDA graph "
                      r"\(CUDARuntimeError: cudaErrorStreamCaptureUnsupported: .* not permitted"):
        for _ in range(ops.warmup + 1):
            ops.run_step("reads", step_that_reads_the_loss)
    assert ops.recorded_steps == 0
    with ops.stream, pytest.raises(cp.CUDARuntimeError, match="CaptureInvalidated"):  # as CUDA
        ops.stream.begin_capture()
        with contextlib.suppress(cp.CUDARuntimeError):
            float(params.sum())
        ops.stream.end_capture()

    params.fill(0)
    lr = [1.0]
    for call in range(ops.warmup + 3):  # eager, eager, captured, then two replays
        if call > ops.warmup:
            lr[0] = 100.0  # too late: the graph holds the 1.0 it was captured with
        ops.run_step("frozen", lambda: ops.sgd_update(params, grads, lr[0]))
    assert ops.recorded_steps == 1
    numpy.testing.assert_array_equal(params.get(), -float(ops.warmup + 3))
    with cp.cupyx.allow_synchronize(False), pytest.raises(cp.DeviceSynchronized):
        params.get()
    with cp.cupyx.allow_synchronize(False), pytest.raises(cp.DeviceSynchronized):
        params[params > 0]  # a boolean mask: CuPy counts its hits on the host

    side = cp.cuda.Stream(non_blocking=True)  # does not wait for the legacy stream
    data = cp.zeros(4, dtype=numpy.float32)  # written on the legacy stream
    with side, pytest.raises(cp.RaceError):
        data += 1
    side.wait_event(cp.cuda.get_current_stream().record())
    with side:
        data += 1  # ordered after the write now
    with pytest.raises(cp.RaceError):  # the legacy stream reads before the side one is done
        data.get()
    cp.cuda.get_current_stream().wait_event(side.record())
    numpy.testing.assert_array_equal(data.get(), 1.0)


def test_the_simulation_offers_only_what_cupy_has():
    """Every name the simulation defines for gpunn to use exists in the installed CuPy (its
    NumPy fallbacks are limited to CuPy's names by ``install``)."""
    real = cuda_module.cupy
    if real is None:
        pytest.skip("CuPy is not installed: nothing to compare the simulation with")
    protocols = {"__array__", "__array_ufunc__", "__array_function__", "__float__", "__int__",
                 "__bool__", "__len__", "__getitem__", "__setitem__"}
    own = {n for n in vars(simulated_cupy.ndarray) if not n.startswith("_") or n in protocols}
    assert own - set(dir(real.ndarray)) == set()
    module = {"asarray", "array", "asnumpy", "empty", "zeros", "ones", "full", "ndarray",
              "ElementwiseKernel", "ReductionKernel", "RawModule", "get_default_memory_pool",
              "cuda", "_core"}
    assert module - set(dir(real)) == set()
    cuda = {n for n in vars(simulated_cupy.cuda) if not n.startswith("_")}
    assert cuda - set(dir(real.cuda)) == set()
    assert set(vars(simulated_cupy.runtime)) - set(dir(real.cuda.runtime)) == set()


@pytest.mark.parametrize("hidden", [1, 2, 3])
@pytest.mark.parametrize("optimizer", ["sgd", "nesterov", "adam"])
def test_a_step_is_the_fused_kernels_and_a_recorded_step_one_launch(simulated, hidden,
                                                                      optimizer):
    """Per eager step of L layers: the batch gather (X, Y, and the cursor), per layer a GEMM
    and ONE bias + σ kernel, one cost, one output delta, per layer dW, db, and (below the
    last) δ propagation and σ', and ONE update for all layers (Adam: one more, its step
    count): 4 + 6L launches, nothing else. Recorded, the same step is one graph launch and
    nothing else: more steps in an epoch add graph launches only."""
    from gpunn import train

    sizes = [12, *([16] * hidden), 3]
    layers = len(sizes) - 1

    def last_epoch(graphs, n):
        """(launches, of which graph launches) of an epoch after two epochs of warm-up."""
        ops = cupy_ops(graphs=graphs)
        net = gpunn.Network(sizes, output="softmax", loss="cross_entropy", backend=ops, seed=0)
        X, y = data(n=n)
        Xd, Yd = net.device_inputs(X), net.device_targets(y, len(X))
        opt = make_optimizer(optimizer, 0.01)
        with ops.training_scope():
            for epoch in range(3):
                launches, graphs_before = simulated.launches, simulated.graph_launches
                train.run_epoch(net, Xd, Yd, opt, 10, True, 0, epoch)
        return simulated.launches - launches, simulated.graph_launches - graphs_before

    (eager_60, no_graphs), (eager_120, _) = last_epoch(False, 60), last_epoch(False, 120)
    (recorded_60, graphs_60), (recorded_120, graphs_120) = (last_epoch(True, 60),
                                                            last_epoch(True, 120))
    assert no_graphs == 0 and (graphs_60, graphs_120) == (6, 12)
    assert recorded_120 - recorded_60 == 6  # six more steps: six more graph launches
    assert eager_120 - eager_60 == 6 * (4 + 6 * layers + (optimizer == "adam"))


def test_tf32_on_a_gpu_without_it_keeps_the_default(simulated):
    """Below compute capability 8.0 CuPy's ``set_compute_type`` warns and keeps
    COMPUTE_TYPE_DEFAULT for TF32 (cupy/_core/_routines_linalg.pyx): the backend then says it
    is not on TF32, and the constants are CuPy's own values."""
    from cupy._core import _routines_linalg as linalg

    assert (linalg.COMPUTE_TYPE_DEFAULT, linalg.COMPUTE_TYPE_TF32) == (1, 7)
    ops = cupy_ops()
    ops.set_tf32(True)
    assert ops.tf32 is True
    ops.set_tf32(False)
    simulated.compute_capability = "75"
    with pytest.warns(UserWarning, match="compute capability 8.0"):
        ops.set_tf32(True)
    assert ops.tf32 is False
    assert simulated_cupy._core.get_compute_type(numpy.float32) == linalg.COMPUTE_TYPE_DEFAULT
    with pytest.raises(ValueError, match="Unknown compute type"):
        simulated_cupy._core.set_compute_type(numpy.float32, 42)


def test_an_unshuffled_epoch_writes_its_order_once(simulated, monkeypatch):
    """The order 0..n−1 of unshuffled epochs is copied to the device once, not every epoch;
    a shuffled epoch in between replaces it, and the next unshuffled one puts it back."""
    from gpunn import train

    X, y = data(n=30)
    nets = [gpunn.Network([12, 8, 3], backend=b, seed=0, dtype="float64")
            for b in ("numpy", cupy_ops())]
    on_gpu = nets[1]
    Xd, Yd = on_gpu.device_inputs(X), on_gpu.device_targets(y, len(X))
    copies = []
    copy_into = on_gpu.backend.copy_into
    monkeypatch.setattr(on_gpu.backend, "copy_into", lambda out, src: (
        copies.append(out is train.epoch_order(on_gpu, len(X)).index), copy_into(out, src))[1])
    opts = [make_optimizer("momentum", 0.1) for _ in nets]
    with on_gpu.backend.training_scope():
        for epoch, shuffle in enumerate([False, False, False, True, False, False]):
            before = sum(copies)
            for net, opt in zip(nets, opts, strict=True):
                inputs = (Xd, Yd) if net is on_gpu else (X, net.device_targets(y, len(X)))
                train.run_epoch(net, *inputs, opt, 10, shuffle, 0, epoch)
            assert sum(copies) - before == (epoch in (0, 3, 4)), epoch
    for (W0, b0), (W1, b1) in zip(nets[0].get_params(), on_gpu.get_params(), strict=True):
        numpy.testing.assert_allclose(W1, W0, rtol=1e-9)
        numpy.testing.assert_allclose(b1, b0, rtol=1e-9)
