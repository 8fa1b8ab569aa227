"""The CuPy backend on a GPU: fused kernels against their NumPy references, the whole network
against the NumPy backend, CUDA-graph replay against eager steps, no host round trips in the
step loop, and out-of-memory errors. Every test is marked ``gpu``: without a usable GPU they
are skipped with the reason (tests/conftest.py)."""

from __future__ import annotations

import warnings

import numpy
import pytest

import gpunn
from gpunn.backend import kernels as K
from gpunn.backend.cuda import cupy, cupyx
from gpunn.backend.ops import Ops
from gpunn.errors import DeviceMemoryError
from gpunn.optim import make_optimizer

pytestmark = pytest.mark.gpu

DTYPES = ("float32", "float64")
REF = Ops()


def tol(dtype, scale=1.0):
    if numpy.dtype(dtype) == numpy.float32:
        return {"rtol": 1e-4 * scale, "atol": 1e-5 * scale}
    return {"rtol": 1e-10 * scale, "atol": 1e-12 * scale}


def on_device(args):
    return [cupy.asarray(a) if isinstance(a, numpy.ndarray) else a for a in args]


def cupy_ops(**options):
    from gpunn.backend.cupy_ops import CupyOps

    return CupyOps(**options)


# ------------------------------------------------------------------------ kernels
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "spec", [*K.ELEMENTWISE.values(), *K.REDUCTIONS.values()], ids=lambda s: s.name
)
def test_kernel_matches_its_numpy_reference(spec, dtype):
    for rows, cols in ((1, 1), (7, 5), (257, 33)):
        host = K.sample_arguments(spec.name, dtype, rows=rows, cols=cols)
        device = on_device(host)
        spec.build()(*device)
        spec.reference(*host)
        for got, want in zip(device[spec.n_in :], host[spec.n_in :], strict=True):
            numpy.testing.assert_allclose(cupy.asnumpy(got), want, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (3, 10), (64, 31), (5, 1000), (1100, 2)])
def test_row_kernels_match_their_references(dtype, shape):
    rows, cols = shape
    for name in K.ROW_KERNEL_NAMES:
        host = K.sample_arguments(name, dtype, rows=rows, cols=cols)
        device = on_device(host)
        kernel = K.row_module().get_function(K.row_kernel_expression(name, dtype))
        dt = numpy.dtype(dtype)
        args = (*device[:3], numpy.int64(rows), numpy.int64(cols), dt.type(-numpy.inf))
        if name == "gpunn_bias_softmax":
            threads = K.row_threads(cols)
            kernel((rows,), (threads,), args, shared_mem=threads * dt.itemsize)
        else:
            threads = K.row_threads(rows, limit=512)
            kernel((1,), (threads,), args, shared_mem=threads * dt.itemsize)
        K.ROW_REFERENCES[name](*host)
        for got, want in zip(device[:3], host[:3], strict=True):
            numpy.testing.assert_allclose(cupy.asnumpy(got), want, **tol(dtype, 10))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ["sigmoid", "relu", "tanh", "identity", "softmax"])
def test_layer_forward_and_cost_match_the_reference_ops(dtype, act):
    ops = cupy_ops(graphs=False)
    rng = numpy.random.default_rng(0)
    A_prev = rng.normal(size=(13, 6)).astype(dtype)
    W, b = rng.normal(size=(4, 6)).astype(dtype), rng.normal(size=4).astype(dtype)
    Y = numpy.eye(4, dtype=dtype)[rng.integers(0, 4, 13)]
    Z_ref = REF.affine_forward(A_prev, W, b, numpy.empty((13, 4), dtype))
    A_ref = REF.activation_forward(act, Z_ref.copy(), numpy.empty_like(Z_ref))
    Z, A = cupy.empty((13, 4), dtype), cupy.empty((13, 4), dtype)
    ops.layer_forward(*on_device([A_prev, W, b]), act, out=A, Z=Z)
    numpy.testing.assert_allclose(Z.get(), Z_ref, **tol(dtype))
    numpy.testing.assert_allclose(A.get(), A_ref, **tol(dtype))
    if act != "softmax":
        hidden = cupy.empty((13, 4), dtype)
        ops.layer_forward(*on_device([A_prev, W, b]), act, out=hidden)
        numpy.testing.assert_allclose(hidden.get(), A_ref, **tol(dtype))
    losses = ["mse"] + (["cross_entropy"] if act in ("softmax", "sigmoid") else [])
    for loss in losses:
        want = float(REF.cost_sum(act, loss, Z_ref, A_ref, Y))
        acc = cupy.full((), 2.0, dtype)
        ops.cost_accumulate(act, loss, Z, A, cupy.asarray(Y), acc)
        numpy.testing.assert_allclose(float(acc.get()), 2.0 + want, **tol(dtype, 10))
        if act in ("softmax", "sigmoid", "identity"):
            d_ref = REF.output_delta(
                act, loss, Z_ref.copy(), A_ref, Y, 1 / 13, numpy.empty_like(Z_ref)
            )
            d = ops.output_delta(
                act, loss, Z.copy(), A, cupy.asarray(Y), 1 / 13, cupy.empty_like(Z)
            )
            numpy.testing.assert_allclose(d.get(), d_ref, **tol(dtype))


# ------------------------------------------------------------------------ the whole network
def _data(n=45, n_in=12, n_out=3, seed=0):
    rng = numpy.random.default_rng(seed)
    X = rng.uniform(0, 1, size=(n, n_in))
    return X, rng.integers(0, n_out, size=n)


CONFIGS = [
    {"activation": "sigmoid", "output": "sigmoid", "loss": "mse"},
    {"activation": "relu", "output": "softmax", "loss": "cross_entropy"},
    {"activation": "tanh", "output": "identity", "loss": "mse"},
    {"activation": "relu", "output": "sigmoid", "loss": "cross_entropy"},
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(c.values()))
def test_loss_and_gradients_match_numpy(config):
    X, y = _data()
    nets = [
        gpunn.Network([12, 16, 8, 3], backend=b, seed=3, **config)
        for b in ("numpy", cupy_ops(graphs=False))
    ]
    assert nets[0].loss(X, y) == pytest.approx(nets[1].loss(X, y), rel=1e-5)
    grads = [net.gradients(X, y) for net in nets]
    for (dW0, db0), (dW1, db1) in zip(*grads, strict=True):
        numpy.testing.assert_allclose(dW1, dW0, rtol=1e-4, atol=1e-6)
        numpy.testing.assert_allclose(db1, db0, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "nesterov", "adam"])
@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("graphs", [False, True])
def test_training_matches_numpy(optimizer, shuffle, graphs):
    X, y = _data()
    lr = 0.01 if optimizer == "adam" else 0.5
    results = []
    for backend in ("numpy", cupy_ops(graphs=graphs)):
        net = gpunn.Network(
            [12, 16, 3],
            activation="relu",
            output="softmax",
            loss="cross_entropy",
            backend=backend,
            seed=1,
        )
        history = net.fit(
            X,
            y,
            epochs=3,
            batch_size=10,
            optimizer=optimizer,
            lr=lr,
            shuffle=shuffle,
            seed=5,
            progress=False,
        )
        results.append((history["loss"], net.get_params()))
    (loss0, params0), (loss1, params1) = results
    numpy.testing.assert_allclose(loss1, loss0, rtol=1e-4)
    for (W0, b0), (W1, b1) in zip(params0, params1, strict=True):
        numpy.testing.assert_allclose(W1, W0, rtol=1e-3, atol=1e-5)
        numpy.testing.assert_allclose(b1, b0, rtol=1e-3, atol=1e-5)


def test_graph_replay_gives_the_eager_weights_and_is_used():
    X, y = _data(n=200)
    params, ops_used = [], []
    for graphs in (False, True):
        ops = cupy_ops(graphs=graphs)
        net = gpunn.Network([12, 32, 3], activation="tanh", backend=ops, seed=2)
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # capture must not fall back
            net.fit(X, y, epochs=4, batch_size=16, lr=1.0, progress=False)
        params.append(net.get_params())
        ops_used.append(ops)
    assert ops_used[0].recorded_steps == 0
    assert ops_used[1].recorded_steps >= 1  # the full batches (and the last, smaller one)
    for (W0, b0), (W1, b1) in zip(*params, strict=True):
        numpy.testing.assert_allclose(W1, W0, rtol=1e-5, atol=1e-6)
        numpy.testing.assert_allclose(b1, b0, rtol=1e-5, atol=1e-6)


def test_no_host_transfer_inside_the_step_loop():
    """The transfers of a fit depend on the number of epochs, never on the number of steps."""
    X, y = _data(n=300)
    counts = []
    for batch_size in (5, 100):
        ops = cupy_ops()
        net = gpunn.Network([12, 16, 3], backend=ops, seed=0)
        before = ops.host_transfers
        net.fit(X, y, epochs=2, batch_size=batch_size, lr=0.5, progress=False)
        counts.append(ops.host_transfers - before)
    assert counts[0] == counts[1] <= 2 + 1


def test_an_epoch_does_not_synchronise():
    from gpunn import train

    if not hasattr(cupyx, "allow_synchronize"):
        pytest.skip("this CuPy has no cupyx.allow_synchronize")
    X, y = _data(n=120)
    ops = cupy_ops()
    net = gpunn.Network([12, 16, 3], backend=ops, seed=0)
    Xd, Yd = net.device_inputs(X), net.device_targets(y, len(X))
    opt = make_optimizer("momentum", 0.1)
    with ops.training_scope(10):
        for epoch in range(2):  # warm-up and capture, then one epoch of pure replays
            train.run_epoch(net, Xd, Yd, opt, 10, True, 0, epoch)
        ops.synchronize()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            with cupyx.allow_synchronize(False):
                train.run_epoch(net, Xd, Yd, opt, 10, True, 0, 2)
    ops.synchronize()


# ------------------------------------------------------------------------ errors and options
def test_out_of_memory_becomes_device_memory_error():
    from gpunn.backend.cupy_ops import workspace_bytes

    ops = cupy_ops()
    sizes, rows = [100_000, 100_000, 10], 1 << 20
    need = workspace_bytes(sizes, rows, "float32")
    with pytest.raises(DeviceMemoryError, match=f"batch of {rows} rows"):
        with ops.memory_guard("allocating the training buffers", rows, need):
            cupy.empty(need // 4, dtype=cupy.float32)


def test_tf32_switch_sets_cupys_compute_type():
    from cupy._core import _routines_linalg as linalg

    ops = cupy_ops()
    before = cupy._core.get_compute_type(numpy.float32)
    try:
        ops.set_tf32(True)
        assert cupy._core.get_compute_type(numpy.float32) == linalg.COMPUTE_TYPE_TF32
        ops.set_tf32(False)
        assert cupy._core.get_compute_type(numpy.float32) == linalg.COMPUTE_TYPE_DEFAULT
    finally:
        cupy._core.set_compute_type(numpy.float32, before)


def test_device_values_for_recorded_updates():
    """A 0-d device learning rate and a device step counter give the host-scalar update."""
    ops = cupy_ops()
    rng = numpy.random.default_rng(0)
    p, g = rng.normal(size=64).astype("float32"), rng.normal(size=64).astype("float32")
    m, v = numpy.zeros_like(p), numpy.zeros_like(p)
    host = [cupy.asarray(a) for a in (p, g, m, v)]
    dev = [cupy.asarray(a) for a in (p, g, m, v)]
    lr = cupy.asarray(numpy.float32(0.01))
    step = cupy.zeros((), cupy.int64)
    for t in (1, 2, 3):
        ops.adam_update(*host, 0.01, 0.9, 0.999, 1e-8, t)
        ops.adam_update(*dev, lr, 0.9, 0.999, 1e-8, step)
    assert int(step.get()) == 3
    numpy.testing.assert_allclose(dev[0].get(), host[0].get(), rtol=1e-6, atol=1e-7)
