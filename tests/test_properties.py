"""Property-based tests of the public API over shapes, dtypes, batch sizes and values."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from gradcheck import numerical_gradients
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import gpunn
from gpunn.errors import DivergenceError, GpunnError

SETTINGS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
HEADS = [  # (output, loss) pairs the constructor accepts
    ("sigmoid", "mse"), ("identity", "mse"), ("softmax", "mse"),
    ("softmax", "cross_entropy"), ("sigmoid", "cross_entropy"),
]
DTYPES = ["float32", "float64"]


@st.composite
def networks(draw, activations=("sigmoid", "relu", "tanh", "identity"), dtype=None):
    sizes = draw(st.lists(st.integers(1, 6), min_size=2, max_size=4))
    output, loss = draw(st.sampled_from(HEADS))
    if output == "softmax" and sizes[-1] == 1:  # refused: a softmax of one unit is always 1
        sizes[-1] = draw(st.integers(2, 6))
    return gpunn.Network(
        sizes,
        activation=draw(st.sampled_from(activations)),
        output=output,
        loss=loss,
        init=draw(st.sampled_from(["normal", "glorot", "he"])),
        dtype=dtype or draw(st.sampled_from(DTYPES)),
        seed=draw(st.integers(0, 2**16)),
        backend="numpy",
    )


def features(net, n, elements=None, dtypes=None):
    dtype = st.sampled_from(dtypes or [np.float32, np.float64, np.int32, np.uint8])
    return dtype.flatmap(
        lambda dt: hnp.arrays(
            dt, (n, net.sizes[0]),
            elements=elements or (
                st.integers(0, 5) if np.dtype(dt).kind in "iu"
                else st.floats(-10, 10, width=np.dtype(dt).itemsize * 8)
            ),
        )
    )


def targets(draw, net, n):
    """Labels (n,) or float targets (n, n_out) that suit the network's head."""
    n_out = net.sizes[-1]
    if n_out > 1 and draw(st.booleans()):
        return draw(hnp.arrays(np.int64, n, elements=st.integers(0, n_out - 1)))
    if net.output == "identity":
        return draw(hnp.arrays(np.float64, (n, n_out), elements=st.floats(-3, 3)))
    if net.output == "softmax":  # probability rows: what cross-entropy with softmax assumes
        Y = draw(hnp.arrays(np.float64, (n, n_out), elements=st.floats(0.01, 1)))
        return Y / Y.sum(axis=1, keepdims=True)
    return draw(hnp.arrays(np.float64, (n, n_out), elements=st.floats(0, 1)))


@SETTINGS
@given(data=st.data())
def test_predict_shape_dtype_and_range(data):
    net = data.draw(networks())
    n = data.draw(st.integers(1, 20))
    X = data.draw(features(net, n))
    out = net.predict(X)
    assert out.shape == (n, net.sizes[-1])
    assert out.dtype == net.dtype
    assert np.isfinite(out).all()
    if net.output in ("sigmoid", "softmax"):
        assert ((out >= 0) & (out <= 1)).all()
    if net.output == "softmax":
        tolerance = 1e-4 if net.dtype == "float32" else 1e-10
        np.testing.assert_allclose(out.sum(axis=1), 1, rtol=tolerance)
    np.testing.assert_array_equal(net.predict(X), out)  # deterministic
    np.testing.assert_allclose(net.predict(X[:1]), out[:1], rtol=1e-5, atol=1e-6)


@SETTINGS
@given(data=st.data())
def test_fit_never_changes_shapes_and_evaluate_is_bounded(data):
    net = data.draw(networks())
    n = data.draw(st.integers(1, 24))
    X = data.draw(features(net, n))
    Y = targets(data.draw, net, n)
    shapes = [(W.shape, b.shape, W.dtype) for W, b in net.get_params()]
    epochs = data.draw(st.integers(1, 3))
    batch_size = data.draw(st.integers(1, 2 * n + 1))
    try:
        history = net.fit(X, Y, epochs=epochs, batch_size=batch_size, lr=0.05,
                          shuffle=data.draw(st.booleans()), progress=False)
    except DivergenceError:
        pass  # allowed: the weights are then the last finite ones
    else:
        assert len(history) == epochs
        assert all(np.isfinite(history["loss"]))
    params = net.get_params()
    assert [(W.shape, b.shape, W.dtype) for W, b in params] == shapes
    assert all(np.isfinite(W).all() and np.isfinite(b).all() for W, b in params)
    result = net.evaluate(X, Y)
    assert 0.0 <= result["accuracy"] <= 1.0
    # fit checks the weights each epoch ends with, the last update's too, for a finite cost on
    # the training data: whether it returned or raised, the weights it leaves evaluate finitely
    assert np.isfinite(result["loss"]) and result["loss"] >= -1e-6


def reference_logits(net, X):
    """z^(1..L) of each layer, in float64 on the host."""
    functions = {
        "sigmoid": lambda z: 0.5 * (1 + np.tanh(z / 2)), "tanh": np.tanh,
        "relu": lambda z: np.maximum(z, 0), "identity": lambda z: z,
        "softmax": lambda z: np.exp(z - z.max(axis=1, keepdims=True)),  # unnormalised: ≤ 1
    }
    logits, A = [], X.astype(np.float64)
    for layer, (W, b) in enumerate(net.get_params()):
        Z = A @ W.T + b
        logits.append(Z)
        A = functions[net.activation if layer < net.n_layers - 1 else net.output](Z)
    return logits


@SETTINGS
@given(data=st.data())
def test_the_divergence_check_bounds_every_logit_and_the_summed_cost(data):
    """fit skips computing the cost of its final weights when divergence.cost_bound stays below
    the dtype's range: the bound must never be below what it bounds."""
    from gpunn import divergence

    net = data.draw(networks(dtype="float64"))
    scale = data.draw(st.sampled_from([1e-3, 1.0, 1e3]))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    net.set_params([(rng.normal(size=W.shape) * scale, rng.normal(size=b.shape) * scale)
                    for W, b in net.get_params()])
    n = data.draw(st.integers(1, 12))
    X = data.draw(features(net, n))
    Y = targets(data.draw, net, n)
    ops = net.backend
    Xd = net.device_inputs(X)
    Yd = net.device_targets(Y, n)
    _, finite, magnitudes = divergence.read_back(
        ops, ops.zeros((), net.dtype), net, divergence.data_magnitudes(ops, Xd, Yd)
    )
    bound = divergence.cost_bound(net, magnitudes, n)
    largest = max(np.abs(Z).max() for Z in reference_logits(net, Xd))
    total = abs(net.evaluate(X, Y)["loss"] * n)
    assert finite and np.isfinite(bound)
    assert largest <= bound * (1 + 1e-9) and total <= bound * (1 + 1e-9)


@SETTINGS
@given(data=st.data())
def test_gradients_match_finite_differences(data):
    net = data.draw(networks(activations=("sigmoid", "tanh", "identity"), dtype="float64"))
    sizes = net.sizes
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    net.set_params([(rng.normal(size=(o, i)), rng.normal(size=o) * 0.5)
                    for i, o in itertools.pairwise(sizes)])
    n = data.draw(st.integers(1, 5))
    X = data.draw(hnp.arrays(np.float64, (n, sizes[0]), elements=st.floats(-2, 2)))
    Y = targets(data.draw, net, n)
    analytic = net.gradients(X, Y)
    for (dW, db), (nW, nb) in zip(analytic, numerical_gradients(net, X, Y), strict=True):
        np.testing.assert_allclose(dW, nW, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(db, nb, rtol=1e-4, atol=1e-6)


def corruptions(net, n):
    """(description, X, Y) triples that are wrong in exactly one way."""
    n_in, n_out = net.sizes[0], net.sizes[-1]
    good_X = np.zeros((n, n_in))
    good_Y = np.zeros(n, int)
    bad_X = [
        np.zeros((n, n_in + 1)), np.zeros((n, n_in, 2)), np.zeros((0, n_in)), np.float64(1),
        np.zeros((n, n_in), bool), np.zeros((n, n_in), complex), np.full((n, n_in), "x"),
        np.full((n, n_in), None, object),
    ]
    bad_Y = [
        np.zeros(n + 1, int), np.full(n, max(n_out, 2)), np.full(n, -1),
        np.zeros((n, n_out + 1)), np.zeros((n, n_out), complex), np.float64(0),
        np.full((n, n_out), None, object),
    ]
    if n_out > 1:
        bad_Y.append(np.full(n, 0.5))
    return [("X", x, good_Y) for x in bad_X] + [("Y", good_X, yy) for yy in bad_Y]


@SETTINGS
@given(data=st.data())
def test_bad_input_always_raises_a_gpunn_error(data):
    net = data.draw(networks())
    n = data.draw(st.integers(1, 6))
    cases = corruptions(net, n)
    which, X, Y = data.draw(st.sampled_from(cases))
    # sprinkle a NaN or infinity into otherwise good data, too
    if data.draw(st.booleans()):
        which, X, Y = "X", np.zeros((n, net.sizes[0])), np.zeros(n, int)
        X[data.draw(st.integers(0, n - 1)), data.draw(st.integers(0, net.sizes[0] - 1))] = (
            data.draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        )
    method = data.draw(st.sampled_from(["evaluate", "loss", "gradients", "fit", "predict"]))
    if method == "predict" and which == "Y":
        method = "evaluate"
    call = getattr(net, method)
    with pytest.raises(GpunnError) as info:
        if method == "predict":
            call(X)
        elif method == "fit":
            call(X, Y, epochs=1, progress=False)
        else:
            call(X, Y)
    assert isinstance(info.value, (ValueError, TypeError))
    assert which in str(info.value)


@SETTINGS
@given(
    value=st.one_of(
        st.integers(-5, 0), st.floats(allow_nan=True), st.text(max_size=3), st.none(),
        st.booleans(), st.lists(st.integers(), max_size=2),
    ),
    name=st.sampled_from(["epochs", "batch_size", "lr"]),
)
def test_bad_training_options_always_raise_a_gpunn_error(value, name):
    if name == "lr" and (value is None or (
        isinstance(value, float) and np.isfinite(value) and value > 0
    )):
        return  # a valid learning rate (None: the optimizer's default)
    net = gpunn.Network([2, 2], backend="numpy")
    with pytest.raises(GpunnError) as info:
        net.fit(np.zeros((3, 2)), np.zeros(3, int), progress=False, **{name: value})
    assert name in str(info.value)
