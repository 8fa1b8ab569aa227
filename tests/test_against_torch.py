"""gpunn checked against PyTorch, the framework its users would otherwise pick: the gradients
of every activation, output and cost (autograd on the same weights and the same batch-averaged
cost), and whole trainings with every optimizer (``torch.optim`` from the same start, on the
same batches). Skipped without PyTorch; on NumPy in float64, to the last few bits."""

from __future__ import annotations

import numpy as np
import pytest
from gradcheck import HEADS, HIDDEN

import gpunn
from gpunn.optim import SGD, Adam, Momentum, Nesterov

torch = pytest.importorskip("torch")

SIZES = [6, 5, 4, 3]
_ACTIVATIONS = {"sigmoid": torch.sigmoid, "relu": torch.relu, "tanh": torch.tanh,
                "identity": lambda z: z}


def _data(output: str, loss: str, n: int = 11, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Inputs, and targets the cost takes: one-hot rows for softmax, values in (0, 1) for
    sigmoid, any values for identity."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, SIZES[0]))
    if output == "softmax":
        Y = np.eye(SIZES[-1])[rng.integers(0, SIZES[-1], n)]
    elif output == "sigmoid":
        Y = rng.uniform(0.05, 0.95, (n, SIZES[-1]))
    else:
        Y = rng.normal(size=(n, SIZES[-1]))
    return X, Y


def _torch_cost(params: list, X: np.ndarray, Y: np.ndarray, activation: str, output: str,
                loss: str) -> torch.Tensor:
    """The network's cost, averaged over the rows, written with PyTorch's own functions."""
    a = torch.from_numpy(X)
    y = torch.from_numpy(Y)
    for layer, (W, b) in enumerate(params):
        z = a @ W.T + b
        if layer < len(params) - 1:
            a = _ACTIVATIONS[activation](z)
    n = X.shape[0]
    if loss == "cross_entropy" and output == "softmax":
        return torch.nn.functional.cross_entropy(z, y.argmax(dim=1), reduction="sum") / n
    if loss == "cross_entropy":
        return torch.nn.functional.binary_cross_entropy_with_logits(z, y, reduction="sum") / n
    out = torch.softmax(z, dim=1) if output == "softmax" else _ACTIVATIONS[output](z)
    return ((out - y) ** 2).sum() / n


def _leaves(net: gpunn.Network) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(torch.tensor(W, requires_grad=True), torch.tensor(b, requires_grad=True))
            for W, b in net.get_params()]


@pytest.mark.parametrize(("output", "loss"), HEADS)
@pytest.mark.parametrize("activation", HIDDEN)
def test_gradients_equal_pytorchs_autograd(activation: str, output: str, loss: str) -> None:
    net = gpunn.Network(SIZES, activation=activation, output=output, loss=loss, init="glorot",
                        backend="numpy", dtype="float64", seed=4)
    rng = np.random.default_rng(1)
    net.set_params([(W, rng.normal(scale=0.3, size=b.shape)) for W, b in net.get_params()])
    X, Y = _data(output, loss)
    params = _leaves(net)
    cost = _torch_cost(params, X, Y, activation, output, loss)
    cost.backward()
    assert net.loss(X, Y) == pytest.approx(cost.item(), rel=1e-12)
    for (dW, db), (W, b) in zip(net.gradients(X, Y), params, strict=True):
        np.testing.assert_allclose(dW, W.grad.numpy(), rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(db, b.grad.numpy(), rtol=1e-10, atol=1e-13)


OPTIMIZERS = {
    "sgd": (lambda: SGD(lr=0.5), lambda p: torch.optim.SGD(p, lr=0.5)),
    "sgd, weight decay": (lambda: SGD(lr=0.5, weight_decay=0.01),
                          lambda p: torch.optim.SGD(p, lr=0.5, weight_decay=0.01)),
    "momentum": (lambda: Momentum(lr=0.2, momentum=0.9, weight_decay=0.01),
                 lambda p: torch.optim.SGD(p, lr=0.2, momentum=0.9, weight_decay=0.01)),
    "nesterov": (lambda: Nesterov(lr=0.2, momentum=0.8, weight_decay=0.01),
                 lambda p: torch.optim.SGD(p, lr=0.2, momentum=0.8, nesterov=True,
                                           weight_decay=0.01)),
    "adam": (lambda: Adam(lr=0.01, beta1=0.8, beta2=0.99, eps=1e-7),
             lambda p: torch.optim.Adam(p, lr=0.01, betas=(0.8, 0.99), eps=1e-7)),
    "adam, decoupled weight decay": (
        lambda: Adam(lr=0.01, weight_decay=0.1),
        lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1)),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_training_follows_torch_optim_step_by_step(name: str) -> None:
    """Mini-batches of 4 rows (the last one of 3), unshuffled, for 3 epochs: every update
    as torch.optim makes it, the last, smaller batch averaged over its own rows."""
    ours, theirs = OPTIMIZERS[name]
    net = gpunn.Network(SIZES, activation="tanh", output="softmax", loss="cross_entropy",
                        backend="numpy", dtype="float64", seed=2)
    X, Y = _data("softmax", "cross_entropy")
    initial = net.get_params()
    params = _leaves(net)
    opt = theirs([t for pair in params for t in pair])
    for _epoch in range(3):
        for start in range(0, X.shape[0], 4):
            opt.zero_grad()
            _torch_cost(params, X[start:start + 4], Y[start:start + 4], "tanh", "softmax",
                        "cross_entropy").backward()
            opt.step()
    net.fit(X, Y.argmax(axis=1), epochs=3, batch_size=4, optimizer=ours(), shuffle=False,
            progress=False)
    for (W, b), (tW, tb) in zip(net.get_params(), params, strict=True):
        np.testing.assert_allclose(W, tW.detach().numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(b, tb.detach().numpy(), rtol=1e-10, atol=1e-12)
    assert not np.allclose(net.get_params()[0][0], initial[0][0], atol=1e-3)  # it trained
