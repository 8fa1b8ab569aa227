"""The NumPy fast path computes what the reference kernels compute, and allocates nothing."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import gpunn
from gpunn.backend import NumpyOps, Ops

HIDDEN = ("sigmoid", "relu", "tanh", "identity")
HEADS = (("sigmoid", "mse"), ("identity", "mse"), ("softmax", "mse"),
         ("softmax", "cross_entropy"), ("sigmoid", "cross_entropy"))


@pytest.fixture(params=["float32", "float64"])
def dtype(request):
    return np.dtype(request.param)


def tolerance(dtype):
    return {"rtol": 2e-6, "atol": 1e-6} if dtype == np.float32 else {"rtol": 1e-12, "atol": 1e-12}


def batch(rng, dtype, shape=(9, 5), scale=3.0):
    return (rng.normal(size=shape) * scale).astype(dtype)


@pytest.mark.parametrize("name", [*HIDDEN, "softmax"])
def test_activation_forward(name, dtype):
    rng = np.random.default_rng(0)
    Z = batch(rng, dtype)
    expected = Ops().activation_forward(name, Z, np.empty_like(Z))
    got = NumpyOps().activation_forward(name, Z, np.empty_like(Z))
    np.testing.assert_allclose(got, expected, **tolerance(dtype))
    assert got.dtype == dtype


def test_sigmoid_of_extreme_inputs_is_exact_above_normal_below_and_warning_free():
    Z = np.array([[-1000.0, -100.0, -88.0, -10.0, 0.0, 88.0, 100.0, 1000.0]], dtype=np.float32)
    with np.errstate(all="raise"):
        got = NumpyOps().sigmoid(Z, np.empty_like(Z))
    np.testing.assert_array_equal(got[:, 3:], Ops().sigmoid(Z[:, 3:], np.empty((1, 5), np.float32)))
    assert got[0, 4] == 0.5 and np.all(got[0, -3:] == 1.0)
    tiny = got[0, :3]  # floored at e^-60: nothing subnormal reaches the next layer's GEMM
    assert np.all(tiny < 1e-25) and np.all(tiny >= np.finfo(np.float32).tiny)


@pytest.mark.parametrize("name", HIDDEN)
def test_activation_backward(name, dtype):
    rng = np.random.default_rng(1)
    A = Ops().activation_forward(name, batch(rng, dtype), np.empty((9, 5), dtype))
    delta = batch(rng, dtype)
    expected = Ops().activation_backward(name, A, delta.copy(), np.empty_like(A))
    got = NumpyOps().activation_backward(name, A, delta.copy(), np.empty_like(A))
    np.testing.assert_allclose(got, expected, **tolerance(dtype))


@pytest.mark.parametrize(("output", "loss"), HEADS)
def test_output_delta_and_cost(output, loss, dtype):
    rng = np.random.default_rng(2)
    Z = batch(rng, dtype)
    A = Ops().activation_forward(output, Z, np.empty_like(Z))
    Y = np.eye(5, dtype=dtype)[rng.integers(0, 5, 9)]
    reference, fast = Ops(), NumpyOps()
    np.testing.assert_allclose(
        fast.cost_sum(output, loss, Z, A, Y), reference.cost_sum(output, loss, Z, A, Y),
        **tolerance(dtype),
    )
    expected = reference.output_delta(output, loss, Z.copy(), A, Y, 1 / 9, np.empty_like(A))
    got = fast.output_delta(output, loss, Z.copy(), A, Y, 1 / 9, np.empty_like(A))
    np.testing.assert_allclose(got, expected, **tolerance(dtype))


def test_affine_kernels(dtype):
    rng = np.random.default_rng(3)
    A, W = batch(rng, dtype, (9, 4)), batch(rng, dtype, (5, 4))
    b, delta = batch(rng, dtype, (5,)), batch(rng, dtype)
    for ops in (Ops(), NumpyOps()):
        Z = ops.affine_forward(A, W, b, np.empty((9, 5), dtype))
        np.testing.assert_allclose(Z, A @ W.T + b, **tolerance(dtype))
        dW, db = np.empty_like(W), np.empty_like(b)
        ops.affine_backward_weights(delta, A, dW, db)
        np.testing.assert_allclose(dW, delta.T @ A, **tolerance(dtype))
        np.testing.assert_allclose(db, delta.sum(axis=0), **tolerance(dtype))


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
@pytest.mark.parametrize("update", ["sgd", "momentum", "nesterov", "adam"])
def test_updates(update, weight_decay, dtype):
    rng = np.random.default_rng(4)
    results = []
    for ops in (Ops(), NumpyOps()):
        params, state = batch(rng.__class__(rng.bit_generator.__class__(7)), dtype, (40,)), None
        state = [np.zeros_like(params), np.zeros_like(params)]
        grad_rng = np.random.default_rng(8)
        for step in range(1, 4):
            grads = batch(grad_rng, dtype, (40,))
            if update == "sgd":
                ops.sgd_update(params, grads, 0.1, weight_decay)
            elif update == "adam":
                ops.adam_update(params, grads, *state, 0.01, 0.9, 0.999, 1e-8, step, weight_decay)
            else:
                ops.momentum_update(params, grads, state[0], 0.1, 0.9, update == "nesterov",
                                    weight_decay)
        results.append(params)
    np.testing.assert_allclose(results[1], results[0], **tolerance(dtype))
    assert results[1].dtype == dtype


@pytest.mark.parametrize("ops", [Ops(), NumpyOps()], ids=["reference", "numpy"])
def test_adam_step_counter_on_the_device_gives_the_host_count_update(ops):
    """A 0-d counter holding t − 1, advanced by the update, stands for t (recorded updates)."""
    rng = np.random.default_rng(9)
    by_count, by_counter = rng.normal(size=(2, 30)).astype(np.float32)
    by_counter[...] = by_count
    states = [[np.zeros(30, np.float32), np.zeros(30, np.float32)] for _ in range(2)]
    counter = np.zeros((), np.int64)
    for t in range(1, 4):
        grads = rng.normal(size=30).astype(np.float32)
        ops.adam_update(by_count, grads.copy(), *states[0], 0.01, 0.9, 0.999, 1e-8, t)
        ops.adam_update(by_counter, grads.copy(), *states[1], 0.01, 0.9, 0.999, 1e-8, counter)
        assert int(counter) == t
    np.testing.assert_array_equal(by_counter, by_count)


def test_gather_rows_matches_fancy_indexing():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(20, 3))
    index = rng.permutation(20)[:7]
    np.testing.assert_array_equal(NumpyOps().gather_rows(X, index, np.empty((7, 3))), X[index])


@pytest.mark.parametrize(
    ("sizes", "activation", "output", "loss", "optimizer", "shuffle"),
    [
        ([100, 128, 128], "sigmoid", "sigmoid", "mse", "sgd", False),
        ([100, 128, 128, 128], "relu", "softmax", "cross_entropy", "sgd", True),
        ([100, 128, 128], "tanh", "softmax", "cross_entropy", "nesterov", True),
        ([100, 128, 128], "relu", "identity", "mse", "adam", True),
    ],
)
def test_a_warmed_up_training_epoch_allocates_no_arrays(sizes, activation, output, loss,
                                                        optimizer, shuffle):
    """Every batch-sized temporary would show as a peak of at least 128 rows × 128 × 4 bytes.
    What does show is Python's bookkeeping (views, frames), NumPy's iterator buffer for the
    broadcast bias add (at most 8192 elements, freed at once) and, once per epoch, the
    permutation."""
    rng = np.random.default_rng(6)
    net = gpunn.Network(sizes, activation=activation, output=output, loss=loss, backend="numpy")
    n, rows = 512, 128
    X = net.backend.asarray(rng.normal(size=(n, sizes[0])), dtype=net.dtype)
    Y = net.device_targets(rng.integers(0, sizes[-1], n), n)
    opt = gpunn.optim.make_optimizer(optimizer, 0.01)
    run = lambda: gpunn.train.run_epoch(net, X, Y, opt, rows, shuffle, 0, 0)  # noqa: E731
    run()  # warm-up: workspaces, scratch buffers and optimizer state are allocated here
    smallest_buffer = rows * min(sizes[1:]) * net.dtype.itemsize
    permutation_bytes = n * 8 * 3 if shuffle else 0
    tracemalloc.start()
    try:
        run()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < permutation_bytes + smallest_buffer, f"an epoch allocated up to {peak} bytes"
