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


# ---------------------------------------------------------------- the last update of an epoch
def deep_linear_net(seed=1):
    return gpunn.Network([2, 3, 3, 2], activation="identity", output="identity", loss="mse",
                         backend="numpy", dtype="float32", seed=seed)


def linear_data(n=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 2)) * 3, rng.normal(size=(n, 2))


def test_finite_weights_whose_outputs_overflow_are_caught_after_the_last_update():
    """One full-batch step: its cost is summed before the update, so only the check of the
    weights it leaves (about 1e7 here, cubed by three linear layers) can see the overflow."""
    X, Y = linear_data()
    net = deep_linear_net()
    start = net.get_params()
    with pytest.raises(DivergenceError, match="epoch 1") as info:
        net.fit(X, Y, epochs=1, batch_size=16, lr=1e7, progress=False)
    message = str(info.value)
    assert "overflow float32" in message and "lower learning rate" in message
    assert_params_equal(net.get_params(), start)
    assert np.isfinite(net.evaluate(X, Y)["loss"])


def test_overflow_in_a_later_epoch_keeps_the_last_good_epoch():
    X, Y = linear_data()
    net = deep_linear_net()
    recorder = Recorder()
    with pytest.raises(DivergenceError, match="epoch 3"):
        net.fit(X, Y, epochs=3, batch_size=16, lr=1e-3, schedule=lambda e: 1e10 if e == 2 else 1,
                callbacks=[recorder], progress=False)
    assert len(recorder.params) == 2
    assert_params_equal(net.get_params(), recorder.params[-1])


def test_large_weights_with_a_finite_cost_do_not_count_as_divergence():
    """W = [1e20, −1e20] on inputs (1, 1) gives z = 0 exactly: the cheap bound, 2e20 · 1, cannot
    rule an overflow of the squared error out, so fit computes the cost, which is finite."""
    net = gpunn.Network([2, 1], output="identity", loss="mse", backend="numpy",
                        dtype="float32")
    net.set_params([(np.array([[1e20, -1e20]]), np.zeros(1))])
    X, Y = np.ones((8, 2)), np.full((8, 1), 0.5)
    before = net.backend.host_transfers
    history = net.fit(X, Y, epochs=2, batch_size=4, lr=0.1, progress=False)
    assert net.backend.host_transfers - before == 2 * 2  # each epoch: read-back + the cost
    assert len(history) == 2 and history["loss"][-1] < history["loss"][0]
    assert np.isfinite(net.evaluate(X, Y)["loss"])


def test_a_healthy_fit_computes_no_extra_cost():
    """The bound rules an overflow out at once: one read-back per epoch and nothing else."""
    X, Y = regression_data()
    net = gpunn.Network([4, 16, 2], activation="relu", output="identity", backend="numpy")
    before = net.backend.host_transfers
    net.fit(X, Y / 10, epochs=3, batch_size=8, lr=1e-2, progress=False)
    assert net.backend.host_transfers - before == 3


# ---------------------------------------------------------------- the optimizer's state
class StateRecorder(gpunn.Callback):
    """Keeps the optimizer's state (as host arrays) at the end of every finished epoch."""

    def __init__(self, optimizer):
        self.optimizer = optimizer
        self.states = []

    def on_epoch_end(self, net, record):
        self.states.append(self.optimizer.state_arrays(net.backend))


def assert_states_equal(actual, expected):
    assert sorted(actual) == sorted(expected)
    for key in expected:
        np.testing.assert_array_equal(actual[key], expected[key])


def blow_up_in_epoch_3(epoch):
    """A learning-rate factor that makes epoch 3 diverge, even for Adam (whose steps are ≈ η)."""
    return 1e30 if epoch == 2 else 1.0


@pytest.mark.parametrize("name", ["sgd", "momentum", "nesterov", "adam"])
def test_divergence_restores_the_optimizer_state_of_the_last_good_epoch(name):
    X, Y = regression_data()
    net = gpunn.Network([4, 16, 2], activation="relu", output="identity", backend="numpy")
    opt = gpunn.optim.make_optimizer(name, 1e-2)
    recorder = StateRecorder(opt)
    with pytest.raises(DivergenceError, match="epoch 3"):
        net.fit(X, Y, epochs=5, batch_size=8, optimizer=opt, schedule=blow_up_in_epoch_3,
                callbacks=[recorder], progress=False)
    assert len(recorder.states) == 2
    state = opt.state_arrays(net.backend)
    assert_states_equal(state, recorder.states[-1])
    assert int(state["steps"]) == 2 * 8
    assert all(np.isfinite(value).all() for value in state.values())


@pytest.mark.parametrize("name", ["momentum", "adam"])
def test_divergence_in_the_first_epoch_leaves_a_fresh_optimizer_fresh(name):
    X, Y = regression_data()
    net = gpunn.Network([4, 16, 2], activation="relu", output="identity", backend="numpy")
    opt = gpunn.optim.make_optimizer(name, 1e30)
    with pytest.raises(DivergenceError, match="epoch 1"):
        net.fit(X, Y, epochs=2, batch_size=8, optimizer=opt, progress=False)
    assert opt.steps == 0 and opt.state == {}
    assert opt.state_arrays(net.backend) == {}


@pytest.mark.parametrize("name", ["momentum", "nesterov", "adam"])
def test_after_divergence_a_lower_learning_rate_trains_on_as_if_nothing_happened(name):
    """The restored optimizer continues exactly like one that never saw the diverged epoch
    (Adam's step count on the device included)."""
    X, Y = regression_data()

    def network():
        return gpunn.Network([4, 16, 2], activation="relu", output="identity", backend="numpy")

    net, opt = network(), gpunn.optim.make_optimizer(name, 1e-3)
    with pytest.raises(DivergenceError):
        net.fit(X, Y, epochs=3, batch_size=8, optimizer=opt, schedule=blow_up_in_epoch_3,
                progress=False)
    history = net.fit(X, Y, epochs=2, batch_size=8, optimizer=opt, initial_epoch=2,
                      progress=False)
    assert all(np.isfinite(history["loss"]))
    assert all(np.isfinite(value).all() for value in opt.state_arrays(net.backend).values())

    ref, ref_opt = network(), gpunn.optim.make_optimizer(name, 1e-3)
    ref.fit(X, Y, epochs=2, batch_size=8, optimizer=ref_opt, progress=False)
    ref_history = ref.fit(X, Y, epochs=2, batch_size=8, optimizer=ref_opt, initial_epoch=2,
                          progress=False)
    assert history["loss"] == ref_history["loss"]
    assert_params_equal(net.get_params(), ref.get_params())
    assert_states_equal(opt.state_arrays(net.backend), ref_opt.state_arrays(ref.backend))


def test_the_cost_bound_of_astronomical_weights_is_infinite_not_an_error():
    """Bounds beyond the float range are infinite (then the cost itself is computed), never an
    OverflowError from Python's float power."""
    from gpunn import divergence

    net = gpunn.Network([2, 2, 1], activation="identity", output="identity", loss="mse",
                        backend="numpy", dtype="float64")
    huge = {"x": 1e200, "y": 0.0, "W": [1e200, 1e200], "b": [0.0, 0.0]}
    assert divergence.cost_bound(net, huge, 2) == np.inf


def test_the_magnitudes_read_back_are_the_numpy_ones():
    """read_back's numbers, computed by Ops methods on the device, against NumPy directly."""
    from gpunn import divergence

    rng = np.random.default_rng(3)
    net = gpunn.Network([3, 4, 2], backend="numpy", dtype="float64")
    net.set_params([(rng.normal(size=W.shape), rng.normal(size=b.shape))
                    for W, b in net.get_params()])
    X, Y = rng.normal(size=(5, 3)), rng.normal(size=(5, 2))
    ops = net.backend
    Xd, Yd = net.device_inputs(X), net.device_targets(Y, 5)
    cost = ops.zeros((), net.dtype) + 2.5
    loss_sum, finite, magnitudes = divergence.read_back(
        ops, cost, net, divergence.data_magnitudes(ops, Xd, Yd)
    )
    params = net.get_params()
    assert (loss_sum, finite) == (2.5, True)
    assert (magnitudes["x"], magnitudes["y"]) == (np.abs(X).max(), np.abs(Y).max())
    assert magnitudes["W"] == [np.abs(W).sum(axis=1).max() for W, _ in params]
    assert magnitudes["b"] == [np.abs(b).max() for _, b in params]
