"""Divergence: fit stops with DivergenceError and keeps the last finite weights."""

from __future__ import annotations

import numpy as np
import pytest

import gpunn
from gpunn.errors import DivergenceError

# A diverging run overflows on purpose; NumPy's RuntimeWarnings about it are expected here.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def regression_data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    return X, np.stack([X.sum(axis=1), X[:, 0] - X[:, 1]], axis=1) * 10


class Recorder(gpunn.Callback):
    """Keeps a copy of the weights at the end of every finished epoch."""

    def __init__(self):
        self.params = []

    def on_epoch_end(self, net, record):
        self.params.append(net.get_params())


def assert_params_equal(actual, expected):
    for (W, b), (W0, b0) in zip(actual, expected, strict=True):
        np.testing.assert_array_equal(W, W0)
        np.testing.assert_array_equal(b, b0)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("optimizer", ["sgd", "momentum"])
def test_huge_learning_rate_stops_with_finite_weights(dtype, optimizer):
    X, Y = regression_data()
    net = gpunn.Network([4, 16, 2], activation="relu", output="identity", loss="mse",
                        backend="numpy", dtype=dtype)
    start = net.get_params()
    recorder = Recorder()
    with pytest.raises(DivergenceError) as info:
        net.fit(X, Y, epochs=20, batch_size=8, lr=1e6, optimizer=optimizer,
                callbacks=[recorder], progress=False)
    message = str(info.value)
    assert "lower learning rate" in message and "1e+06" in message
    assert isinstance(info.value, FloatingPointError)
    kept = net.get_params()
    assert all(np.isfinite(W).all() and np.isfinite(b).all() for W, b in kept)
    assert_params_equal(kept, recorder.params[-1] if recorder.params else start)
    out = net.predict(X)  # the network is still usable
    assert out.shape == (64, 2) and out.dtype == np.dtype(dtype)


def test_divergence_after_some_good_epochs_keeps_the_last_good_epoch():
    X, Y = regression_data()
    net = gpunn.Network([4, 16, 2], activation="relu", output="identity", backend="numpy")
    recorder = Recorder()
    history = net.fit(X, Y, epochs=3, batch_size=8, lr=1e-3, callbacks=[recorder],
                      progress=False)
    assert len(history) == 3 and all(np.isfinite(history["loss"]))
    with pytest.raises(DivergenceError, match="epoch 4"):
        net.fit(X, Y, epochs=5, batch_size=8, lr=1e7, initial_epoch=3, progress=False)
    assert_params_equal(net.get_params(), recorder.params[-1])


def test_overflowing_loss_is_caught():
    """Outputs that overflow float32 in the cost make the loss infinite: that diverges too."""
    X = np.full((8, 2), 1e18, np.float32)
    net = gpunn.Network([2, 2], output="identity", backend="numpy", dtype="float32")
    start = net.get_params()
    with pytest.raises(DivergenceError, match="epoch 1"):
        net.fit(X, np.zeros((8, 2)), epochs=2, batch_size=4, lr=1e-3, progress=False)
    assert_params_equal(net.get_params(), start)


def test_a_sane_learning_rate_does_not_diverge():
    X, Y = regression_data()
    net = gpunn.Network([4, 16, 2], activation="relu", output="identity", backend="numpy")
    history = net.fit(X, Y / 10, epochs=5, batch_size=8, lr=1e-2, progress=False)
    assert len(history) == 5
    assert history["loss"][-1] < history["loss"][0]
