"""The CuPy backend: fused kernels against their NumPy references, the whole network against
the NumPy backend, CUDA-graph replay against eager steps, no host round trips in the step loop,
and out-of-memory errors.

Every test runs twice: on the simulated GPU of ``tests/simulated_cupy.py`` (NumPy under CuPy's
rules: no implicit host conversion, typed kernel arguments, capture that records instead of
running, synchronisation forbidden while capturing), which needs no GPU, and on a real GPU
(marked ``gpu``; skipped with the reason where CuPy cannot run, tests/conftest.py). On the
simulated GPU a kernel *is* its NumPy reference, so there the kernel tests check the calls
(argument types and shapes) and the real GPU checks the CUDA code. What only the simulation
can check is in tests/test_simulated_gpu.py.
"""

from __future__ import annotations

import warnings

import host_kernels as H
import numpy
import pytest
from gpu_support import CONFIGS, assert_same_training, cupy_ops, data

import gpunn
from gpunn.backend import kernels as K
from gpunn.backend.ops import Ops
from gpunn.errors import DeviceMemoryError
from gpunn.optim import make_optimizer

DTYPES = ("float32", "float64")
REF = Ops()


def tol(dtype, scale=1.0):
    if numpy.dtype(dtype) == numpy.float32:
        return {"rtol": 1e-4 * scale, "atol": 1e-5 * scale}
    return {"rtol": 1e-10 * scale, "atol": 1e-12 * scale}


def on_device(cupy, args):
    return [cupy.asarray(a) if isinstance(a, numpy.ndarray) else a for a in args]


# ------------------------------------------------------------------------ kernels
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "spec", [*K.ELEMENTWISE.values(), *K.REDUCTIONS.values()], ids=lambda s: s.name
)
def test_kernel_matches_its_numpy_reference(spec, dtype, device):
    cupy = device.cupy
    for rows, cols in ((1, 1), (7, 5), (257, 33)):
        host = H.sample_arguments(spec.name, dtype, rows=rows, cols=cols)
        on_gpu = on_device(cupy, host)
        spec.build()(*on_gpu)
        spec.reference(*host)
        for got, want in zip(on_gpu[spec.n_in :], host[spec.n_in :], strict=True):
            numpy.testing.assert_allclose(cupy.asnumpy(got), want, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (3, 10), (64, 31), (5, 1000), (1100, 2)])
def test_row_kernels_match_their_references(dtype, shape, device):
    cupy = device.cupy
    rows, cols = shape
    for name in K.ROW_KERNEL_NAMES:
        host = H.sample_arguments(name, dtype, rows=rows, cols=cols)
        on_gpu = on_device(cupy, host)
        kernel = K.row_module().get_function(K.row_kernel_expression(name, dtype))
        dt = numpy.dtype(dtype)
        args = (*on_gpu[:3], numpy.int64(rows), numpy.int64(cols), dt.type(-numpy.inf))
        if name == "gpunn_bias_softmax":
            threads = K.row_threads(cols)
            kernel((rows,), (threads,), args, shared_mem=threads * dt.itemsize)
        else:
            threads = K.row_threads(rows, limit=512)
            kernel((1,), (threads,), args, shared_mem=threads * dt.itemsize)
        H.ROW_REFERENCES[name](*host)
        for got, want in zip(on_gpu[:3], host[:3], strict=True):
            numpy.testing.assert_allclose(cupy.asnumpy(got), want, **tol(dtype, 10))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ["sigmoid", "relu", "tanh", "identity", "softmax"])
def test_layer_forward_and_cost_match_the_reference_ops(dtype, act, device):
    cupy = device.cupy
    ops = cupy_ops(graphs=False)
    rng = numpy.random.default_rng(0)
    A_prev = rng.normal(size=(13, 6)).astype(dtype)
    W, b = rng.normal(size=(4, 6)).astype(dtype), rng.normal(size=4).astype(dtype)
    Y = numpy.eye(4, dtype=dtype)[rng.integers(0, 4, 13)]
    Z_ref = REF.affine_forward(A_prev, W, b, numpy.empty((13, 4), dtype))
    A_ref = REF.activation_forward(act, Z_ref.copy(), numpy.empty_like(Z_ref))
    Z, A = cupy.empty((13, 4), dtype), cupy.empty((13, 4), dtype)
    ops.layer_forward(*on_device(cupy, [A_prev, W, b]), act, out=A, Z=Z)
    numpy.testing.assert_allclose(Z.get(), Z_ref, **tol(dtype))
    numpy.testing.assert_allclose(A.get(), A_ref, **tol(dtype))
    if act != "softmax":
        hidden = cupy.empty((13, 4), dtype)
        ops.layer_forward(*on_device(cupy, [A_prev, W, b]), act, out=hidden)
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
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(c.values()))
def test_loss_and_gradients_match_numpy(config, device):
    X, y = data()
    nets = [
        gpunn.Network([12, 16, 8, 3], backend=b, seed=3, **config)
        for b in ("numpy", cupy_ops(graphs=False))
    ]
    assert nets[0].loss(X, y) == pytest.approx(nets[1].loss(X, y), rel=1e-5)
    grads = [net.gradients(X, y) for net in nets]
    for (dW0, db0), (dW1, db1) in zip(*grads, strict=True):
        numpy.testing.assert_allclose(dW1, dW0, rtol=1e-4, atol=1e-6)
        numpy.testing.assert_allclose(db1, db0, rtol=1e-4, atol=1e-6)


def test_relu_of_an_overflowing_product_is_zero_on_both_backends(device):
    """relu(−inf) = 0: an input so large that a hidden unit's product overflows to −inf gives
    that unit 0 on NumPy as on the GPU (not NaN, as z·[z > 0] would), and the same outputs."""
    X = numpy.zeros((2, 3), numpy.float32)
    X[0] = 3e38
    params = [(numpy.array([[-2.0, 0, 0], [1, 0, 0], [-1, -1, -1]]), numpy.zeros(3)),
              (numpy.ones((2, 3)), numpy.array([0.0, 1.0]))]
    outputs = []
    for backend in ("numpy", cupy_ops()):
        net = gpunn.Network([3, 3, 2], activation="relu", output="softmax",
                            loss="cross_entropy", backend=backend)
        net.set_params(params)
        with numpy.errstate(over="ignore"):
            outputs.append(net.predict(X))
    assert numpy.isfinite(outputs[0]).all()
    numpy.testing.assert_allclose(outputs[1], outputs[0], rtol=1e-6)


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "nesterov", "adam"])
@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("graphs", [False, True])
def test_training_matches_numpy(optimizer, shuffle, graphs, device):
    X, y = data()
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


def test_graph_replay_gives_the_eager_weights_and_is_used(device):
    X, y = data(n=200)
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


def test_no_host_transfer_inside_the_step_loop(device):
    """The transfers of a fit depend on the number of epochs, never on the number of steps.

    On the simulated GPU every device-to-host read counts (``float()`` and ``.item()`` too,
    not only gpunn's own ``to_host``), and every host-to-device copy."""
    X, y = data(n=300)
    counts, reads, writes = [], [], []
    for batch_size in (5, 100):
        ops = cupy_ops()
        net = gpunn.Network([12, 16, 3], backend=ops, seed=0)
        before = ops.host_transfers
        if device.simulated:
            read_before, write_before = device.state.device_to_host, device.state.host_to_device
        net.fit(X, y, epochs=2, batch_size=batch_size, lr=0.5, progress=False)
        counts.append(ops.host_transfers - before)
        if device.simulated:
            reads.append(device.state.device_to_host - read_before)
            writes.append(device.state.host_to_device - write_before)
    assert counts[0] == counts[1] <= 2 + 1
    if device.simulated:  # and nothing is copied to the device per step either
        assert reads[0] == reads[1] == counts[0] and writes[0] == writes[1]


def test_an_epoch_does_not_synchronise(device):
    from gpunn import train

    cupyx = device.cupyx
    if not hasattr(cupyx, "allow_synchronize"):
        pytest.skip("this CuPy has no cupyx.allow_synchronize")
    X, y = data(n=120)
    ops = cupy_ops()
    net = gpunn.Network([12, 16, 3], backend=ops, seed=0)
    Xd, Yd = net.device_inputs(X), net.device_targets(y, len(X))
    opt = make_optimizer("momentum", 0.1)
    with ops.training_scope():
        for epoch in range(2):  # warm-up and capture, then one epoch of pure replays
            train.run_epoch(net, Xd, Yd, opt, 10, True, 0, epoch)
        ops.synchronize()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            with cupyx.allow_synchronize(False):
                train.run_epoch(net, Xd, Yd, opt, 10, True, 0, 2)
    ops.synchronize()


# ------------------------------------------------------------------------ errors and options
def test_out_of_memory_becomes_device_memory_error(device):
    cupy = device.cupy
    from gpunn.network import Workspace

    ops = cupy_ops()
    sizes, rows = [100_000, 100_000, 10], 1 << 20
    need = Workspace.nbytes(sizes, rows, "float32")
    with pytest.raises(DeviceMemoryError, match=f"batch of {rows} rows"):
        with ops.memory_guard("allocating the training buffers", rows, need):
            cupy.empty(need // 4, dtype=cupy.float32)


def test_products_go_through_gpunns_cublas_handle_and_equal_cupys(device):
    """CuPy refuses cuBLAS calls while a stream captures, so a step's products go through
    gpunn's own handle: in the layouts a step uses (transposed views of the flat parameters,
    the first rows of a workspace), in float32 and float64, they equal cupy.matmul's."""
    cupy = device.cupy
    ops = cupy_ops()
    rng = numpy.random.default_rng(3)
    for dtype, rtol in (("float32", 1e-5), ("float64", 1e-12)):
        params = cupy.asarray(rng.standard_normal(8 * 5 + 8), dtype)
        W = params[: 8 * 5].reshape(8, 5)
        A_prev = cupy.asarray(rng.standard_normal((12, 5)), dtype)[:9]
        delta = cupy.asarray(rng.standard_normal((12, 8)), dtype)[:9]
        dW = cupy.zeros(8 * 5 + 8, dtype)[: 8 * 5].reshape(8, 5)
        for a, b, out in ((A_prev, W.T, cupy.empty((9, 8), dtype)), (delta.T, A_prev, dW),
                          (delta, W, cupy.empty((9, 5), dtype))):
            assert ops.matmul(a, b, out=out) is out
            numpy.testing.assert_allclose(out.get(), cupy.matmul(a, b).get(), rtol=rtol,
                                          atol=rtol)
    assert ops.cublas_problem is None


def test_tf32_switch_sets_cupys_compute_type(device):
    cupy = device.cupy
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


def test_tf32_scope_restores_any_setting_and_is_part_of_a_recorded_step(device):
    """tf32_scope puts back whatever compute type was set, and a recorded step made without
    TF32 is not replayed inside the scope (nor one made inside it after)."""
    cupy = device.cupy
    from cupy._core import _routines_linalg as linalg

    ops = cupy_ops()
    before = cupy._core.get_compute_type(numpy.float32)
    try:
        cupy._core.set_compute_type(numpy.float32, linalg.COMPUTE_TYPE_PEDANTIC)
        with ops.tf32_scope(True):
            assert cupy._core.get_compute_type(numpy.float32) == linalg.COMPUTE_TYPE_TF32
        assert cupy._core.get_compute_type(numpy.float32) == linalg.COMPUTE_TYPE_PEDANTIC
    finally:
        cupy._core.set_compute_type(numpy.float32, before)
    X, y = data(n=40)
    Xd, Yd = cupy.asarray(X.astype(numpy.float32)), cupy.asarray(numpy.eye(3)[y], "float32")
    net = gpunn.Network([12, 8, 3], backend=ops, seed=0)
    options = {"epochs": 2, "batch_size": 8, "lr": 0.1, "shuffle": False, "progress": False}
    net.fit(Xd, Yd, **options)
    recorded = ops.recorded_steps
    with ops.tf32_scope(True):
        net.fit(Xd, Yd, **options)
    assert ops.recorded_steps > recorded  # recorded anew, with TF32
    recorded = ops.recorded_steps
    net.fit(Xd, Yd, **options)
    assert ops.recorded_steps == recorded  # the first recording serves again


def test_device_values_for_recorded_updates(device):
    """A 0-d device learning rate and a device step counter give the host-scalar update."""
    cupy = device.cupy
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


# ------------------------------------------------------------------------ the whole surface
def _fit_both(fits, sizes=(12, 16, 3), n=53, graphs=True, network=None, **common):
    """The same fits (a list of keyword sets) on NumPy and on the CuPy backend, in float64;
    returns (numpy net, cupy net, their histories, the CupyOps). A step that cannot be
    recorded would warn: here that is an error."""
    X, y = data(n=n, n_in=sizes[0], n_out=sizes[-1])
    val = data(n=17, n_in=sizes[0], n_out=sizes[-1], seed=1)
    ops = cupy_ops(graphs=graphs)
    nets, histories = [], []
    for backend in ("numpy", ops):
        net = gpunn.Network(list(sizes), backend=backend, seed=4, dtype="float64",
                            **(network or {}))
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            histories.append([
                net.fit(X, y, progress=False, seed=7, validation_data=val,
                        **{**common, **settings})
                for settings in fits
            ])
        nets.append(net)
    return nets[0], nets[1], histories, ops


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "nesterov", "adam"])
@pytest.mark.parametrize("schedule", [None, "step", "cosine"])
def test_recorded_training_follows_the_schedule(device, optimizer, schedule):
    """The learning rate is frozen into a recorded step and is part of its key: a schedule
    that changes it every epoch records each value anew and gives NumPy's weights."""
    opt = make_optimizer(optimizer, 0.01 if optimizer == "adam" else 0.3, weight_decay=1e-3)
    opt_ref = make_optimizer(optimizer, 0.01 if optimizer == "adam" else 0.3, weight_decay=1e-3)
    X, y = data(n=53)
    nets = []
    for backend, o in (("numpy", opt_ref), (cupy_ops(), opt)):
        net = gpunn.Network([12, 16, 3], backend=backend, seed=4, dtype="float64")
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            history = net.fit(X, y, epochs=5, batch_size=10, optimizer=o, schedule=schedule,
                              seed=7, progress=False)
        nets.append((net, history))
    (net0, h0), (net1, h1) = nets
    assert_same_training(net0, net1, [[h0], [h1]])


@pytest.mark.parametrize(
    "network",
    [
        {"activation": "sigmoid", "output": "sigmoid", "loss": "mse"},
        {"activation": "tanh", "output": "identity", "loss": "mse"},
        {"activation": "relu", "output": "sigmoid", "loss": "cross_entropy"},
        {"activation": "relu", "output": "softmax", "loss": "cross_entropy"},
    ],
    ids=lambda c: "-".join(c.values()),
)
def test_recorded_training_over_batch_sizes_and_fits(device, network):
    """Several fits on one network with changing batch sizes (a last batch of another size
    every epoch, buffers re-made for a new batch size), shuffled and in order, with
    validation: the recorded steps give NumPy's weights and metrics."""
    fits = [
        {"epochs": 3, "batch_size": 10},
        {"epochs": 2, "batch_size": 4, "shuffle": False},
        {"epochs": 2, "batch_size": 64},
        {"epochs": 2, "batch_size": 10, "optimizer": "momentum"},
    ]
    net0, net1, histories, ops = _fit_both(fits, sizes=(12, 9, 7, 3), network=network, lr=0.2)
    assert_same_training(net0, net1, histories)
    if device.simulated:
        assert ops.recorded_steps >= 2
        assert device.state.graph_launches > 0


@pytest.mark.parametrize("optimizer", ["momentum", "nesterov", "adam"])
def test_repeated_fits_on_the_same_device_data_keep_the_optimizer(device, optimizer):
    """Five fits on one network with the same device arrays (so the same addresses, as a
    memory pool hands out again): every fit's first update creates the optimizer's state
    and must not be recorded, or later fits replay an update that zeroes a stale state."""
    cupy = device.cupy
    X, y = data(n=48)
    Y = numpy.eye(3)[y]  # float targets in the network's dtype: used on the device as given
    options = {"epochs": 1, "batch_size": 16, "lr": 0.01 if optimizer == "adam" else 0.1,
               "optimizer": optimizer, "shuffle": False, "progress": False}
    nets = []
    for backend, arrays in (("numpy", (X, Y)), (cupy_ops(), (cupy.asarray(X), cupy.asarray(Y)))):
        net = gpunn.Network([12, 8, 3], backend=backend, seed=1, dtype="float64")
        for _ in range(5):
            net.fit(*arrays, **options)
            assert net.optimizer.state, "the optimizer's state was never created"
        nets.append(net)
    for (W0, b0), (W1, b1) in zip(nets[0].get_params(), nets[1].get_params(), strict=True):
        numpy.testing.assert_allclose(W1, W0, rtol=1e-10, atol=1e-12)
        numpy.testing.assert_allclose(b1, b0, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
def test_divergence_on_the_gpu_keeps_the_last_good_epoch(device, optimizer):
    """Good epochs, then a learning rate that diverges: the GPU backend raises in the same
    epoch as NumPy and restores the same weights and optimizer state, recorded steps and all;
    a later fit with a sane rate goes on as on NumPy."""
    from gpunn.errors import DivergenceError

    rng = numpy.random.default_rng(0)
    X = rng.normal(size=(64, 4))
    Y = numpy.stack([X.sum(axis=1), X[:, 0] - X[:, 1]], axis=1) * 10
    nets = []
    for backend in ("numpy", cupy_ops()):
        net = gpunn.Network([4, 16, 2], activation="relu", output="identity", loss="mse",
                            backend=backend, dtype="float64", seed=3)
        opt = make_optimizer(optimizer, 1e-3)
        net.fit(X, Y, epochs=3, batch_size=8, optimizer=opt, progress=False)
        opt.lr = opt.base_lr = 1e300 if optimizer == "adam" else 1e7  # Adam's steps are ≤ η
        with pytest.raises(DivergenceError, match="epoch 4"):
            net.fit(X, Y, epochs=3, batch_size=8, optimizer=opt, initial_epoch=3,
                    progress=False)
        state = {k: v.copy() for k, v in opt.state_arrays(net.backend).items()}
        opt.lr = opt.base_lr = 1e-3
        net.fit(X, Y, epochs=2, batch_size=8, optimizer=opt, initial_epoch=3, progress=False)
        nets.append((net.get_params(), state))
    (p0, s0), (p1, s1) = nets
    assert s0.keys() == s1.keys()
    for key in s0:
        numpy.testing.assert_allclose(s1[key], s0[key], rtol=1e-9, atol=1e-12)
    for (W0, b0), (W1, b1) in zip(p0, p1, strict=True):
        numpy.testing.assert_allclose(W1, W0, rtol=1e-9, atol=1e-12)
        numpy.testing.assert_allclose(b1, b0, rtol=1e-9, atol=1e-12)


def test_graphs_off_and_on_take_the_same_steps(device):
    """GPUNN_CUDA_GRAPHS=0 (graphs=False) and recording give the same weights bit for bit on
    the simulated GPU, and within float rounding on a real one."""
    runs = []
    for graphs in (False, True):
        _, net1, _, ops = _fit_both([{"epochs": 4, "batch_size": 8}], graphs=graphs, lr=0.4,
                                    optimizer="nesterov")
        runs.append((net1.get_params(), ops.recorded_steps))
    (p_off, rec_off), (p_on, rec_on) = runs
    assert rec_off == 0 < rec_on
    rtol = 0 if device.simulated else 1e-12
    for (W0, b0), (W1, b1) in zip(p_off, p_on, strict=True):
        numpy.testing.assert_allclose(W1, W0, rtol=rtol)
        numpy.testing.assert_allclose(b1, b0, rtol=rtol)


def test_predict_evaluate_and_model_files_cross_backends(device, tmp_path):
    """A network trained on the GPU predicts as NumPy does, and its model file loads on NumPy."""
    net0, net1, _, _ = _fit_both([{"epochs": 2, "batch_size": 16}], lr=0.3)
    X, y = data(n=30, seed=3)
    numpy.testing.assert_allclose(net1.predict(X), net0.predict(X), rtol=1e-9)
    assert net1.evaluate(X, y)["loss"] == pytest.approx(net0.evaluate(X, y)["loss"], rel=1e-9)
    path = tmp_path / "gpu.npz"
    net1.save(path)
    loaded = gpunn.load(path, backend="numpy")
    numpy.testing.assert_allclose(loaded.predict(X), net1.predict(X), rtol=1e-12)
    on_gpu = gpunn.load(path, backend=cupy_ops())
    numpy.testing.assert_allclose(on_gpu.predict(X), net1.predict(X), rtol=1e-12)


def test_backend_by_name(device):
    """``backend="cupy"`` and ``"auto"`` choose the CuPy backend where it can run."""
    from gpunn.backend import available_backends, get_backend
    from gpunn.backend.cupy_ops import CupyOps

    assert available_backends() == ["numpy", "cupy"]
    assert isinstance(get_backend("cupy"), CupyOps)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback notice
        assert isinstance(get_backend("auto"), CupyOps)
    net = gpunn.Network([4, 3, 2], backend="cupy")
    assert isinstance(net.params, device.cupy.ndarray)


def test_fit_evaluate_and_predict_take_arrays_already_on_the_device(device):
    """Device arrays go in as they are: no implicit conversion to NumPy (CuPy refuses it)."""
    cupy = device.cupy
    X, y = data(n=40)
    Y = numpy.eye(3)[y]
    for targets in (y, Y):  # labels and one-hot rows
        net = gpunn.Network([12, 8, 3], output="softmax", loss="cross_entropy",
                            backend=cupy_ops(), seed=0)
        Xd, Td = cupy.asarray(X), cupy.asarray(targets)
        net.fit(Xd, Td, epochs=2, batch_size=8, lr=0.3, progress=False,
                validation_data=(Xd, Td))
        host = gpunn.Network([12, 8, 3], output="softmax", loss="cross_entropy", seed=0)
        host.fit(X, targets, epochs=2, batch_size=8, lr=0.3, progress=False)
        numpy.testing.assert_allclose(net.predict(Xd), host.predict(X), rtol=1e-4, atol=1e-6)
        assert net.evaluate(Xd, Td)["loss"] == pytest.approx(host.evaluate(X, targets)["loss"],
                                                             rel=1e-4)
    # in the network's dtype, device arrays are used as they are: no copy
    Xf, Yf = cupy.asarray(X.astype(numpy.float32)), cupy.asarray(numpy.eye(3, dtype="float32")[y])
    fresh = gpunn.Network([12, 8, 3], backend=cupy_ops(), seed=0)
    assert fresh.device_inputs(Xf) is Xf and fresh.device_targets(Yf, len(y)) is Yf
    # a column slice is not C-contiguous: the recorded gather reads it through its strides
    wide = cupy.asarray(numpy.hstack([X, 1 + X]).astype(numpy.float32))
    net = gpunn.Network([12, 8, 3], backend=cupy_ops(graphs=True), seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # every step is recorded
        net.fit(wide[:, :12], cupy.asarray(y), epochs=2, batch_size=8, progress=False)
    host = gpunn.Network([12, 8, 3], backend="numpy", seed=0)
    host.fit(X.astype(numpy.float32), y, epochs=2, batch_size=8, progress=False)
    for (W0, b0), (W1, b1) in zip(host.get_params(), net.get_params(), strict=True):
        numpy.testing.assert_allclose(W1, W0, rtol=1e-4, atol=1e-6)
        numpy.testing.assert_allclose(b1, b0, rtol=1e-4, atol=1e-6)
    on_cpu = gpunn.Network([12, 8, 3], backend="numpy")
    with pytest.raises(gpunn.InputTypeError, match=r"X is a GPU .* \(its \.get\(\)\)"):
        on_cpu.fit(cupy.asarray(X), y, progress=False)
    with pytest.raises(gpunn.InputTypeError, match="Y is a GPU"):
        on_cpu.evaluate(X, cupy.asarray(y))
    with pytest.raises(gpunn.InputError, match="NaN"):
        net.fit(cupy.asarray(numpy.full((4, 12), numpy.nan)), cupy.asarray(y[:4]),
                progress=False)


def test_a_recorded_step_is_not_replayed_for_other_strides_at_the_same_address(device):
    """A recorded gather holds its source's address, shape AND strides (CuPy passes a raw
    array to a kernel as data pointer, shape and strides, which a CUDA graph keeps as they
    were): another view with the same address and shape but other strides (a freed array's
    memory given to a new one, say) must be recorded anew, not read with the old layout."""
    cupy = device.cupy
    X, y = data(n=40)
    Xf, Y = X.astype(numpy.float32), numpy.eye(3, dtype=numpy.float32)[y]
    buf = cupy.asarray(numpy.hstack([Xf, 1 + Xf]))
    strided = buf[:, :12]  # row stride 24 values
    packed = buf.reshape(-1)[: 40 * 12].reshape(40, 12)  # same address and shape, stride 12
    assert strided.data.ptr == packed.data.ptr and strided.strides != packed.strides
    Yd = cupy.asarray(Y)
    options = {"epochs": 2, "batch_size": 8, "shuffle": False, "progress": False}
    net = gpunn.Network([12, 8, 3], backend=cupy_ops(graphs=True), seed=0)
    net.fit(strided, Yd, **options)
    net.fit(packed, Yd, **options)
    host = gpunn.Network([12, 8, 3], backend="numpy", dtype="float32", seed=0)
    host.fit(Xf, Y, **options)
    host.fit(cupy.asnumpy(packed), Y, **options)
    for (W0, b0), (W1, b1) in zip(host.get_params(), net.get_params(), strict=True):
        numpy.testing.assert_allclose(W1, W0, rtol=1e-4, atol=1e-6)
        numpy.testing.assert_allclose(b1, b0, rtol=1e-4, atol=1e-6)


def test_evaluate_reads_strided_targets_on_the_device(device):
    """Targets in the network's dtype are used without a copy, so they may be a strided view
    (a column slice, Fortran order). The softmax cross-entropy cost kernel takes raw pointers
    (CuPy passes an array to a RawKernel as its data pointer, without strides), so such targets
    must be made contiguous first, or the cost reads the wrong values."""
    cupy = device.cupy
    X, y = data(n=40)
    Y = numpy.eye(3, dtype=numpy.float32)[y]
    Xf = X.astype(numpy.float32)
    host = gpunn.Network([12, 8, 3], output="softmax", loss="cross_entropy", seed=0,
                         dtype="float32")
    want = host.evaluate(Xf, Y)
    net = gpunn.Network([12, 8, 3], output="softmax", loss="cross_entropy", seed=0,
                        dtype="float32", backend=cupy_ops())
    wide = cupy.asarray(numpy.hstack([Y, 1 - Y]))
    fortran = cupy.asarray(numpy.asfortranarray(Y))
    for targets in (wide[:, :3], fortran):
        assert not targets.flags.c_contiguous
        got = net.evaluate(cupy.asarray(Xf), targets)
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)
        assert got["accuracy"] == want["accuracy"]


def test_bench_runs_the_cupy_backend(device):
    """``gpunn bench --backends cupy``: the gpunn contender and the GEMM ceiling, timed with
    CUDA events (seconds mean nothing on the simulated GPU; the run must complete)."""
    from gpunn.bench import run_bench

    before = device.cupy._core.get_compute_type(numpy.float32)
    result = run_bench(configs=["seed"], backends=["cupy"], batch_sizes=[10], quick=True,
                       peers=False, gemm_n=256, log=None)
    rows = [r for r in result["rows"] if r["contender"] == "gpunn"]
    assert [r["status"] for r in rows] == ["ok"], rows
    assert rows[0]["timer"] == "cuda-event" and rows[0]["samples_per_s"] > 0
    gemm = result["gemm"]
    assert [gemm[name]["dtype"] for name in ("cupy", "cupy-tf32", "cupy-float16")] == [
        "float32", "float32-tf32", "float16"]
    assert all(gemm[name]["gflops"] > 0 for name in ("cupy", "cupy-tf32", "cupy-float16"))
    from gpunn.backend import get_backend

    assert get_backend("cupy").tf32 is False  # the TF32 measurement switched it back off
    assert device.cupy._core.get_compute_type(numpy.float32) == before
    assert result["settings"]["tf32"] is False
    with get_backend("cupy").tf32_scope(True):  # as under gpunn bench --tf32
        result = run_bench(configs=["seed"], backends=["cupy"], batch_sizes=[10], quick=True,
                           peers=False, gemm_n=64, log=None)
    assert result["settings"]["tf32"] is True
    assert result["gemm"]["cupy"]["dtype"] == "float32-tf32"


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "nesterov", "adam"])
def test_resumed_training_equals_the_straight_run(device, tmp_path, optimizer):
    """2 epochs, saved, loaded with the optimizer's state, 2 more: the weights of 4 straight
    epochs, on the GPU as on NumPy (Adam's device step counter restarts at the saved count)."""
    X, y = data(n=50)
    options = {"batch_size": 8, "optimizer": optimizer, "lr": 0.01, "seed": 3,
               "total_epochs": 4, "progress": False, "schedule": "cosine"}
    straight = gpunn.Network([12, 9, 3], backend=cupy_ops(), seed=1, dtype="float64")
    straight.fit(X, y, epochs=4, **options)
    half = gpunn.Network([12, 9, 3], backend=cupy_ops(), seed=1, dtype="float64")
    half.fit(X, y, epochs=2, **options)
    half.save(tmp_path / "half.npz")
    resumed = gpunn.load(tmp_path / "half.npz", backend=cupy_ops())
    opt = resumed.checkpoint.optimizer()
    opt.load_state_arrays(resumed.backend, resumed.checkpoint.optimizer_state, resumed.dtype)
    resumed.fit(X, y, epochs=2, initial_epoch=2, **{**options, "optimizer": opt, "lr": None})
    for (W0, b0), (W1, b1) in zip(straight.get_params(), resumed.get_params(), strict=True):
        numpy.testing.assert_allclose(W1, W0, rtol=1e-12, atol=1e-14)
        numpy.testing.assert_allclose(b1, b0, rtol=1e-12, atol=1e-14)


def test_command_line_trains_on_the_gpu_and_resumes(device, tmp_path, capsys, monkeypatch):
    """``gpunn train --backend cupy --tf32``, saved, resumed on the GPU, evaluated on NumPy:
    the resumed run ends where the uninterrupted one does."""
    from gpunn import cli, train

    compute_types = []  # CuPy's float32 compute type during each epoch
    run_epoch = train.run_epoch

    def spying_run_epoch(*args, **kwargs):
        compute_types.append(device.cupy._core.get_compute_type(numpy.float32))
        return run_epoch(*args, **kwargs)

    monkeypatch.setattr(train, "run_epoch", spying_run_epoch)
    from cupy._core import _routines_linalg as linalg

    before = device.cupy._core.get_compute_type(numpy.float32)
    rng = numpy.random.default_rng(2)
    X = rng.normal(size=(120, 5))
    numpy.savez(tmp_path / "d.npz", X=X, y=(X[:, 0] > X[:, 1]).astype(int))
    data = ["--data", str(tmp_path / "d.npz"), "--hidden", "7", "--batch-size", "16",
            "--optimizer", "adam", "--lr", "0.01", "--schedule", "cosine", "--schedule-epochs",
            "4", "--quiet"]
    straight, half = str(tmp_path / "straight.npz"), str(tmp_path / "half.npz")
    assert cli.main(["train", *data, "--backend", "cupy", "--epochs", "4", "--save",
                     straight]) == 0
    assert cli.main(["train", *data, "--backend", "cupy", "--epochs", "2", "--save", half]) == 0
    assert cli.main(["train", "--backend", "cupy", "--quiet", "--resume", half, "--epochs", "2",
                     "--save", half, "--tf32"]) == 0
    assert compute_types[-2:] == [linalg.COMPUTE_TYPE_TF32] * 2  # the resumed epochs
    assert linalg.COMPUTE_TYPE_TF32 not in compute_types[:-2]
    assert device.cupy._core.get_compute_type(numpy.float32) == before  # put back
    a, b = gpunn.load(straight, backend="numpy"), gpunn.load(half, backend="numpy")
    rtol = 1e-12 if device.simulated else 1e-3  # TF32 changes the last two epochs on a GPU
    for (W0, b0), (W1, b1) in zip(a.get_params(), b.get_params(), strict=True):
        numpy.testing.assert_allclose(W1, W0, rtol=rtol, atol=rtol * 1e-2)
        numpy.testing.assert_allclose(b1, b0, rtol=rtol, atol=rtol * 1e-2)
    capsys.readouterr()
    assert cli.main(["evaluate", half, "--data", str(tmp_path / "d.npz"), "--backend",
                     "numpy"]) == 0
    assert "accuracy" in capsys.readouterr().out


def test_machine_info_describes_the_gpu(device):
    """``gpunn info`` and the benchmark's machine record name the GPU and list the backend."""
    from gpunn.bench import format_machine_info, machine_info

    text = format_machine_info(machine_info())
    assert "numpy, cupy" in text
    name = cupy_ops().device_name()
    assert name and name in text


@pytest.mark.parametrize("optimizer", ["momentum", "adam"])
def test_an_optimizer_moves_with_training_from_one_backend_to_the_other(device, optimizer):
    """An optimizer that trained a NumPy network carries its state to a GPU network and back
    (in the network's dtype): training goes on as it would have on NumPy."""
    import copy

    X, y = data(n=40)
    opt = make_optimizer(optimizer, 0.05)
    on_cpu = gpunn.Network([12, 10, 3], backend="numpy", seed=1, dtype="float64")
    on_cpu.fit(X, y, epochs=1, batch_size=8, optimizer=opt, progress=False)
    twin = copy.deepcopy(opt)
    on_gpu = gpunn.Network([12, 10, 3], backend=cupy_ops(), seed=1, dtype="float64")
    on_gpu.set_params(on_cpu.get_params())
    histories = [[on_cpu.fit(X, y, epochs=2, batch_size=8, optimizer=twin, progress=False)],
                 [on_gpu.fit(X, y, epochs=2, batch_size=8, optimizer=opt, progress=False)]]
    assert_same_training(on_cpu, on_gpu, histories)
    back = gpunn.Network([12, 10, 3], backend="numpy", seed=1, dtype="float32")
    back.set_params(on_gpu.get_params())
    back.fit(X, y, epochs=1, batch_size=8, optimizer=opt, progress=False)  # GPU state, to NumPy
    assert all(isinstance(a, numpy.ndarray) and a.dtype == numpy.float32
               for a in opt.state.values())
