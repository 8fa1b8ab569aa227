"""The fit loop's options and callbacks: early stopping, and options refused before training."""

from __future__ import annotations

import numpy as np
import pytest

import gpunn
from gpunn.errors import InputError, InputTypeError
from gpunn.optim import StepSchedule
from gpunn.train import METRICS, VALIDATION_METRICS, EarlyStopping

rng = np.random.default_rng(0)
X = rng.normal(size=(40, 4))
y = rng.integers(0, 3, 40)


def make_net(seed: int = 0) -> gpunn.Network:
    return gpunn.Network([4, 5, 3], activation="tanh", output="softmax",
                         loss="cross_entropy", backend="numpy", seed=seed)


def assert_params_equal(actual, expected):
    for (W, b), (We, be) in zip(actual, expected, strict=True):
        np.testing.assert_array_equal(W, We)
        np.testing.assert_array_equal(b, be)


def refused_before_training(error, match, **options):
    """fit with ``options`` raises ``error`` and leaves the weights as they were."""
    net = make_net()
    before = net.get_params()
    with pytest.raises(error, match=match):
        net.fit(X, y, epochs=2, progress=False, **options)
    assert_params_equal(net.get_params(), before)


# ---------------------------------------------------------------------- early stopping
def epoch_params(net, epoch):
    """Weights that tell the epochs apart."""
    return [(np.full_like(W, epoch), np.full_like(b, epoch)) for W, b in net.get_params()]


def feed(stopper, net, monitor, values):
    """Run ``stopper`` over epochs whose ``monitor`` takes ``values`` (the network holding
    epoch_params(net, e) in epoch e); returns the epoch it stopped after."""
    stopper.check_metrics(METRICS + VALIDATION_METRICS)
    stopper.on_train_begin(net)
    for epoch, value in enumerate(values, start=1):
        net.set_params(epoch_params(net, epoch))
        record = {"epoch": epoch, "loss": 1.0, "val_loss": 1.0, "val_accuracy": 0.5,
                  monitor: value}
        if stopper.on_epoch_end(net, record):
            break
    stopper.on_train_end(net, gpunn.History())
    return stopper.stopped_epoch


def test_early_stopping_on_accuracy_keeps_the_most_accurate_epoch():
    net = make_net()
    stopper = EarlyStopping(patience=2, monitor="val_accuracy")
    assert feed(stopper, net, "val_accuracy", [0.5, 0.9, 0.8, 0.7, 0.95]) == 4
    assert stopper.best == 0.9
    assert_params_equal(net.get_params(), epoch_params(net, 2))


@pytest.mark.parametrize("monitor", ["val_loss", "loss"])
def test_early_stopping_on_a_loss_keeps_the_lowest_epoch(monitor):
    net = make_net()
    stopper = EarlyStopping(patience=2, monitor=monitor, min_delta=0.05)
    # 0.48 improves on 0.5 by less than min_delta: not an improvement
    assert feed(stopper, net, monitor, [0.9, 0.5, 0.48, 0.47, 0.1]) == 4
    assert_params_equal(net.get_params(), epoch_params(net, 2))


def test_a_reused_early_stopping_starts_afresh_in_every_fit():
    stopper = EarlyStopping(patience=2, monitor="loss", min_delta=10.0)  # stops at epoch 3
    first = make_net(seed=1)
    assert len(first.fit(X, y, epochs=10, lr=0.1, callbacks=[stopper], progress=False)) == 3

    second = make_net(seed=2)
    after_epoch_1 = []
    record_epoch_1 = lambda net, record: record["epoch"] == 1 and after_epoch_1.append(  # noqa: E731
        net.get_params())
    history = second.fit(X, y, epochs=10, lr=0.1, callbacks=[record_epoch_1, stopper],
                         progress=False)
    assert len(history) == 3 and stopper.stopped_epoch == 3
    assert_params_equal(second.get_params(), after_epoch_1[0])  # its own best, not first's


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"monitor": "nope"}, InputError, "monitor is 'nope'; choose one of"),
        ({"monitor": 3}, InputError, "monitor is 3"),
        ({"min_delta": "x"}, InputTypeError, "min_delta must be a number"),
        ({"min_delta": float("nan")}, InputError, "min_delta must be a finite number"),
        ({"min_delta": -0.1}, InputError, "min_delta"),
        ({"restore_best": "no"}, InputTypeError, "restore_best must be True or False"),
        ({"patience": 0}, InputError, "patience"),
    ],
)
def test_early_stopping_refuses_bad_settings_when_created(options, error, match):
    with pytest.raises(error, match=match):
        EarlyStopping(**options)


@pytest.mark.parametrize("monitor", VALIDATION_METRICS)
def test_monitoring_a_validation_metric_needs_validation_data(monitor):
    refused_before_training(InputError, f"monitors '{monitor}'.*pass validation_data",
                            callbacks=[EarlyStopping(monitor=monitor)])


# ---------------------------------------------------------------------- options checked first
@pytest.mark.parametrize(
    ("callbacks", "match"),
    [
        (EarlyStopping(), r"callbacks must be a list.*callbacks=\[EarlyStopping"),
        (5, "callbacks must be a list"),
        ("stop", "callbacks must be a list"),
        ([5], "callbacks must hold"),
    ],
)
def test_callbacks_must_be_a_list(callbacks, match):
    refused_before_training(InputTypeError, match, callbacks=callbacks)


def test_callbacks_may_be_any_iterable():
    seen = []
    make_net().fit(X, y, epochs=2, progress=False,
                   callbacks=(f for f in [lambda net, record: seen.append(record["epoch"])]))
    assert seen == [1, 2]


def test_a_callback_overriding_only_the_one_argument_hooks_still_runs():
    calls = []

    class Recorder(gpunn.Callback):
        def on_train_begin(self, net):
            calls.append("begin")

        def on_epoch_end(self, net, record):
            calls.append(record["epoch"])

    make_net().fit(X, y, epochs=2, progress=False, callbacks=[Recorder()])
    assert calls == ["begin", 1, 2]


def test_a_schedule_factor_beyond_the_float_range_is_a_clear_error():
    refused_before_training(InputError, r"factor for epoch 400, gamma\^400 = 10\^400, overflows",
                            schedule=StepSchedule(1, 10.0), initial_epoch=400)


def test_a_learning_rate_beyond_the_float_range_is_a_clear_error():
    refused_before_training(InputError, "learning rate for epoch 300.*overflows", lr=1e10,
                            schedule=StepSchedule(1, 10.0), initial_epoch=300)


def test_comm_must_be_a_communicator():
    refused_before_training(InputTypeError, "comm must be a communicator.*got object",
                            comm=object())


def test_a_numpy_matrix_trains_like_the_array():
    plain, matrix = make_net(), make_net()
    expected = plain.fit(X, y, epochs=2, progress=False)["loss"]
    with pytest.warns(PendingDeprecationWarning):  # NumPy's, for making a matrix at all
        X_matrix = np.asmatrix(X)
    assert matrix.fit(X_matrix, y, epochs=2, progress=False)["loss"] == expected
    np.testing.assert_array_equal(matrix.predict(X_matrix), plain.predict(X))


def test_a_tensor_that_requires_grad_is_refused_with_what_to_do():
    torch = pytest.importorskip("torch")
    net = make_net()
    tensor = torch.tensor(X, requires_grad=True)
    with pytest.raises(InputTypeError, match=r"requires grad.*X\.detach\(\)"):
        net.predict(tensor)
    np.testing.assert_array_equal(net.predict(tensor.detach()), net.predict(X))
