"""Recorded steps, checked on the CPU.

A CUDA graph replays the kernels of the step it recorded, on the buffers it recorded, with the
scalars it recorded: whatever Python computed afresh for a later step is ignored. ``ReplayOps``
gives NumPy the same semantics (it keeps the first closure per key and calls that one again),
so training through it equals ordinary training only if every step really is a fixed sequence
of operations on fixed buffers, the contract ``train.run_epoch`` keeps for ``CupyOps``.
"""

from __future__ import annotations

import numpy as np
import pytest

import gpunn
from gpunn.backend import NumpyOps


class ReplayOps(NumpyOps):
    """NumPy kernels, with each step recorded on its first call and replayed ever after."""

    name = "numpy"
    replays_steps = True

    def __init__(self) -> None:
        super().__init__()
        self.recorded: dict = {}
        self.replays = 0

    def run_step(self, key, step):
        if key in self.recorded:
            self.replays += 1
            self.recorded[key]()
        else:
            self.recorded[key] = step
            step()

    def forget_steps(self):
        self.recorded.clear()


def train(backend, optimizer="sgd", shuffle=True, schedule=None, n=53, batch=8, epochs=3,
          validation=False, sizes=(6, 9, 4), seed=3):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(n, sizes[0])), rng.integers(0, sizes[-1], n)
    net = gpunn.Network(list(sizes), activation="tanh", output="softmax", loss="cross_entropy",
                        backend=backend, dtype="float64", seed=seed)
    lr = 0.01 if optimizer == "adam" else 0.2
    history = net.fit(X, y, epochs=epochs, batch_size=batch, lr=lr, optimizer=optimizer,
                      shuffle=shuffle, schedule=schedule, progress=False,
                      validation_data=(X[:20], y[:20]) if validation else None)
    return net, history


def assert_same_training(recorded, eager):
    (net_r, hist_r), (net_e, hist_e) = recorded, eager
    for (W, b), (We, be) in zip(net_r.get_params(), net_e.get_params(), strict=True):
        np.testing.assert_allclose(W, We, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(b, be, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(hist_r["loss"], hist_e["loss"], rtol=1e-12)


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "nesterov", "adam"])
@pytest.mark.parametrize("shuffle", [True, False])
def test_replayed_steps_train_exactly_like_eager_steps(optimizer, shuffle):
    ops = ReplayOps()
    recorded = train(ops, optimizer, shuffle)
    assert ops.replays > 0  # the check below compares replayed training, not eager calls
    assert any(key[2] is not None for key in ops.recorded)  # with the update recorded too
    assert_same_training(recorded, train("numpy", optimizer, shuffle))


@pytest.mark.parametrize("schedule", ["step", "cosine"])
def test_a_schedule_changes_the_learning_rate_of_replayed_steps(schedule):
    assert_same_training(train(ReplayOps(), "sgd", schedule=schedule),
                         train("numpy", "sgd", schedule=schedule))


def test_evaluation_between_epochs_does_not_disturb_recorded_steps():
    ops = ReplayOps()
    recorded = train(ops, validation=True, n=70, batch=16)
    assert_same_training(recorded, train("numpy", validation=True, n=70, batch=16))


def test_two_networks_on_one_backend_replay_their_own_steps():
    ops = ReplayOps()
    first, second = train(ops, seed=3), train(ops, seed=4)  # same shapes, same step sizes
    assert_same_training(first, train("numpy", seed=3))
    assert_same_training(second, train("numpy", seed=4))


@pytest.mark.parametrize("shuffle", [True, False])
def test_a_second_fit_on_other_data_replays_with_that_data(shuffle):
    rng = np.random.default_rng(1)
    first, second = [(rng.normal(size=(40, 6)), rng.integers(0, 4, 40)) for _ in range(2)]

    def two_fits(backend):
        net = gpunn.Network([6, 9, 4], output="softmax", loss="cross_entropy",
                            backend=backend, dtype="float64", seed=3)
        for X, y in (first, second):
            net.fit(X, y, epochs=2, batch_size=8, lr=0.2, shuffle=shuffle, progress=False)
        return net.get_params()

    for (W, b), (We, be) in zip(two_fits(ReplayOps()), two_fits("numpy"), strict=True):
        np.testing.assert_allclose(W, We, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(b, be, rtol=1e-12, atol=1e-14)
