"""The network and backpropagation: gradients against finite differences, training, the API."""

from __future__ import annotations

import inspect
import itertools
import warnings

import numpy as np
import pytest
from gradcheck import HEADS, HIDDEN, numerical_gradients

import gpunn
from gpunn.backend import get_backend
from gpunn.errors import DivergenceError, NumericalError


def relative_error(analytic, numeric):
    a = np.concatenate([np.ravel(x) for pair in analytic for x in pair])
    n = np.concatenate([np.ravel(x) for pair in numeric for x in pair])
    return np.linalg.norm(a - n) / max(np.linalg.norm(a) + np.linalg.norm(n), 1e-300)


def targets_for(output, loss, n, n_out, rng):
    if loss == "cross_entropy" and output == "softmax":
        return rng.integers(0, n_out, n)
    if output == "softmax":
        return np.eye(n_out)[rng.integers(0, n_out, n)]
    if output == "sigmoid":
        return rng.uniform(0, 1, (n, n_out))
    return rng.normal(size=(n, n_out))


@pytest.mark.parametrize("hidden_layers", [1, 2, 3])
@pytest.mark.parametrize(("output", "loss"), HEADS)
@pytest.mark.parametrize("activation", HIDDEN)
def test_gradients_match_finite_differences(activation, output, loss, hidden_layers):
    rng = np.random.default_rng(hidden_layers)
    sizes = [3, *[4] * hidden_layers, 3]
    net = gpunn.Network(
        sizes, activation=activation, output=output, loss=loss, init="glorot",
        backend="numpy", dtype="float64", seed=hidden_layers,
    )
    # non-zero biases, so that every term of ∂C/∂b is exercised
    net.set_params([(W, rng.normal(0, 0.5, b.shape)) for W, b in net.get_params()])
    X = rng.normal(size=(5, 3))
    Y = targets_for(output, loss, 5, 3, rng)
    error = relative_error(net.gradients(X, Y), numerical_gradients(net, X, Y))
    assert error < 1e-6, f"relative error {error:.3g}"


def test_gradients_are_the_batch_average_of_per_sample_gradients():
    """∂C/∂W of a batch is the mean of each sample's ∂C_x/∂W, as the article states."""
    rng = np.random.default_rng(0)
    net = gpunn.Network([4, 5, 2], backend="numpy", dtype="float64")
    X, Y = rng.normal(size=(6, 4)), rng.uniform(size=(6, 2))
    batch = net.gradients(X, Y)
    singles = [net.gradients(X[i : i + 1], Y[i : i + 1]) for i in range(6)]
    for l, (dW, db) in enumerate(batch):
        np.testing.assert_allclose(dW, np.mean([s[l][0] for s in singles], axis=0), atol=1e-14)
        np.testing.assert_allclose(db, np.mean([s[l][1] for s in singles], axis=0), atol=1e-14)


def test_feedforward_matches_the_article_equations():
    rng = np.random.default_rng(1)
    net = gpunn.Network([3, 4, 2], backend="numpy", dtype="float64")
    X = rng.normal(size=(5, 3))
    sigma = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    (W1, b1), (W2, b2) = net.get_params()
    expected = np.stack([sigma(W2 @ sigma(W1 @ x + b1) + b2) for x in X])
    np.testing.assert_allclose(net.predict(X), expected, rtol=1e-12)
    Y = rng.uniform(size=(5, 2))
    assert net.loss(X, Y) == pytest.approx(np.mean(np.sum((expected - Y) ** 2, axis=1)))


def test_softmax_outputs_are_probabilities_and_cross_entropy_is_their_log_loss():
    rng = np.random.default_rng(2)
    net = gpunn.Network([3, 6, 4], activation="tanh", output="softmax", loss="cross_entropy",
                        backend="numpy", dtype="float64")
    X, y = rng.normal(size=(8, 3)), rng.integers(0, 4, 8)
    P = net.predict(X)
    np.testing.assert_allclose(P.sum(axis=1), 1.0)
    assert net.loss(X, y) == pytest.approx(-np.mean(np.log(P[np.arange(8), y])))


def test_initialisation_follows_the_named_scheme():
    sizes = [400, 300, 10]
    normal = gpunn.Network(sizes, init="normal", backend="numpy", seed=3).get_params()
    he = gpunn.Network(sizes, init="he", backend="numpy", seed=3).get_params()
    glorot = gpunn.Network(sizes, init="glorot", backend="numpy", seed=3).get_params()
    assert normal[0][0].std() == pytest.approx(1 / np.sqrt(400), rel=0.02)
    assert he[0][0].std() == pytest.approx(np.sqrt(2 / 400), rel=0.02)
    assert np.abs(glorot[0][0]).max() <= np.sqrt(6 / 700)
    assert all(not b.any() for _, b in normal + he + glorot)
    assert normal[0][0].shape == (300, 400) and normal[1][0].shape == (10, 300)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_dtype_is_kept_through_training(dtype):
    rng = np.random.default_rng(0)
    net = gpunn.Network([5, 4, 3], activation="relu", output="softmax", loss="cross_entropy",
                        backend="numpy", dtype=dtype)
    net.fit(rng.normal(size=(20, 5)), rng.integers(0, 3, 20), epochs=2, batch_size=7,
            lr=0.1, progress=False)
    assert net.params.dtype == np.dtype(dtype)
    assert all(W.dtype == np.dtype(dtype) for W, _ in net.get_params())
    assert net.predict(rng.normal(size=(3, 5))).dtype == np.dtype(dtype)


def manual_sgd(net, X, Y, epochs, batch_size, lr, order_of_epoch):
    """Mini-batch SGD written out with net.gradients, as in the article."""
    for epoch in range(epochs):
        order = order_of_epoch(epoch)
        for start in range(0, len(X), batch_size):
            rows = order[start : start + batch_size]
            grads = net.gradients(X[rows], Y[rows])
            net.set_params([(W - lr * dW, b - lr * db)
                            for (W, b), (dW, db) in zip(net.get_params(), grads, strict=True)])
    return net.get_params()


@pytest.mark.parametrize("shuffle", [False, True])
def test_fit_is_minibatch_sgd_with_the_last_batch_averaged_over_its_own_size(shuffle):
    rng = np.random.default_rng(4)
    X, y = rng.normal(size=(23, 4)), rng.integers(0, 3, 23)
    kwargs = dict(activation="tanh", output="softmax", loss="cross_entropy",
                  backend="numpy", dtype="float64", seed=5)
    fitted = gpunn.Network([4, 6, 3], **kwargs)
    fitted.fit(X, y, epochs=3, batch_size=5, lr=0.3, shuffle=shuffle, seed=9, progress=False)
    ops = get_backend("numpy")
    order = (lambda e: ops.permutation(23, 9, e)) if shuffle else (lambda e: np.arange(23))
    expected = manual_sgd(gpunn.Network([4, 6, 3], **kwargs), X, y, 3, 5, 0.3, order)
    for (W, b), (We, be) in zip(fitted.get_params(), expected, strict=True):
        np.testing.assert_allclose(W, We, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(b, be, rtol=1e-10, atol=1e-12)


def test_permutation_is_a_seeded_shuffle_that_changes_every_epoch():
    ops = get_backend("numpy")
    first, again = ops.permutation(1000, 7, 0), ops.permutation(1000, 7, 0)
    second = ops.permutation(1000, 7, 1)
    assert sorted(first.tolist()) == list(range(1000))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, second)
    assert not np.array_equal(first, ops.permutation(1000, 8, 0))


def test_same_seed_same_run_and_other_seed_other_run():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 6)), rng.integers(0, 2, 40)

    def run(seed):
        net = gpunn.Network([6, 8, 2], output="softmax", loss="cross_entropy",
                            backend="numpy", seed=seed)
        history = net.fit(X, y, epochs=3, batch_size=8, lr=0.5, progress=False)
        return net.get_params(), history["loss"]

    (p1, l1), (p2, l2), (p3, _) = run(1), run(1), run(2)
    assert l1 == l2
    for (W1, _), (W2, _), (W3, _) in zip(p1, p2, p3, strict=True):
        np.testing.assert_array_equal(W1, W2)
        assert not np.array_equal(W1, W3)


def split_digits(seed=0):
    datasets = pytest.importorskip("sklearn.datasets")
    digits = datasets.load_digits()
    X, y = digits.data / 16.0, digits.target
    order = np.random.default_rng(seed).permutation(len(X))
    train, test = order[:1400], order[1400:]
    return X[train], y[train], X[test], y[test]


def test_training_learns_digits_to_96_percent():
    X, y, X_test, y_test = split_digits()
    net = gpunn.Network([64, 64, 10], activation="relu", output="softmax",
                        loss="cross_entropy", init="he", backend="numpy", seed=0)
    history = net.fit(X, y, epochs=30, batch_size=32, lr=0.1, progress=False,
                      validation_data=(X_test, y_test))
    assert history["loss"][-1] < history["loss"][0] / 5
    assert net.evaluate(X_test, y_test)["accuracy"] >= 0.96
    assert history["val_accuracy"][-1] == net.evaluate(X_test, y_test)["accuracy"]


def test_the_articles_network_sigmoid_and_mse_learns_digits():
    X, y, X_test, y_test = split_digits(1)
    net = gpunn.Network([64, 30, 10], backend="numpy", seed=0)  # the article's defaults
    history = net.fit(X, y, epochs=30, batch_size=10, lr=3.0, progress=False)
    assert history["loss"][-1] < history["loss"][0]
    assert net.evaluate(X_test, y_test)["accuracy"] >= 0.93


def test_fit_makes_one_host_transfer_per_epoch_and_none_in_the_step_loop():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(64, 5)), rng.integers(0, 3, 64)
    net = gpunn.Network([5, 7, 3], activation="relu", output="softmax", loss="cross_entropy",
                        backend="numpy")
    before = net.backend.host_transfers
    net.fit(X, y, epochs=4, batch_size=4, lr=0.1, progress=False)  # 16 steps per epoch
    assert net.backend.host_transfers - before == 4


def test_device_arrays_are_trained_on_without_a_copy():
    rng = np.random.default_rng(0)
    net = gpunn.Network([5, 3], backend="numpy")
    X = net.backend.asarray(rng.normal(size=(10, 5)), dtype="float32")
    assert net.device_inputs(X) is X


def test_save_and_load_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(30, 4)), rng.integers(0, 3, 30)
    net = gpunn.Network([4, 6, 3], activation="tanh", output="softmax", loss="cross_entropy",
                        backend="numpy", dtype="float64", seed=3)
    net.fit(X, y, epochs=2, batch_size=8, optimizer="adam", lr=0.01, progress=False)
    path = tmp_path / "model.npz"
    net.save(path, epoch=2)
    loaded = gpunn.load(path, backend="numpy")
    assert loaded.config() == net.config()
    np.testing.assert_array_equal(loaded.predict(X), net.predict(X))
    assert loaded.checkpoint.epoch == 2
    assert set(loaded.checkpoint.optimizer_state) >= {"m", "v"}


@pytest.mark.parametrize(
    ("activation", "output", "loss"),
    [(a, o, l) for a, (o, l) in itertools.product(HIDDEN, HEADS)],
)
def test_every_combination_trains_without_error(activation, output, loss):
    rng = np.random.default_rng(0)
    X = rng.uniform(size=(30, 4))
    Y = targets_for(output, loss, 30, 3, rng)
    net = gpunn.Network([4, 5, 3], activation=activation, output=output, loss=loss,
                        backend="numpy")
    before = net.loss(X, Y)
    net.fit(X, Y, epochs=20, batch_size=10, lr=0.05, progress=False)
    assert net.loss(X, Y) < before


@pytest.mark.parametrize("sizes", [[2**40, 2**40], [10**6, 10**6]])
def test_a_network_too_large_for_memory_is_refused_before_allocating(sizes):
    with pytest.raises(gpunn.InputError, match=rf"sizes \[{sizes[0]}, {sizes[1]}\].*GiB"):
        gpunn.Network(sizes, backend="numpy")


def test_non_finite_weights_are_reported_as_weights():
    net = gpunn.Network([2, 3, 1], backend="numpy")
    (W1, b1), (W2, b2) = net.get_params()
    W1[1, 0] = np.nan
    with pytest.raises(gpunn.InputError, match=r"layer 1 W .*first at index \(1, 0\)") as info:
        net.set_params([(W1, b1), (W2, b2)])
    assert "weights and biases must be finite" in str(info.value)
    assert "sample" not in str(info.value)


def overflowing_network():
    """An identity network whose outputs overflow float32 on inputs within its range."""
    net = gpunn.Network([2, 1], activation="identity", output="identity", backend="numpy")
    net.set_params([(np.full((1, 2), 2.0), np.zeros(1))])
    return net, np.full((3, 2), 3e38, dtype=np.float32), np.zeros(3)


@pytest.mark.parametrize("method", ["evaluate", "loss", "gradients"])
def test_outputs_that_overflow_the_dtype_are_an_error_not_nan(method):
    net, X, Y = overflowing_network()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no NumPy RuntimeWarning on the way
        with pytest.raises(NumericalError, match=r"overflow float32.*dtype='float64'"):
            getattr(net, method)(X, Y)
    assert issubclass(DivergenceError, NumericalError)  # fit's divergence is the same kind


def test_predict_warns_once_in_its_own_words_when_outputs_overflow():
    net, X, _ = overflowing_network()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outputs = net.predict(X)
    assert np.isinf(outputs).all()
    assert [str(w.message)[:6] for w in caught] == ["gpunn:"]
    assert "3 of the 3 rows" in str(caught[0].message)


def test_the_layers_above_the_backend_do_their_math_through_ops():
    """Only the backend uses the array module: the model, the training loop, the divergence
    check and data parallelism call named Ops methods."""
    from gpunn import distributed, divergence, network, train

    for module in (network, train, divergence, distributed):
        assert ".xp" not in inspect.getsource(module), module.__name__
    # the order of an epoch's batches belongs to the training loop, not to the model
    assert not hasattr(network, "EpochOrder") and not hasattr(gpunn.Network, "epoch_order")
