"""The baseline: mini-batch SGD as the seed article (and Nielsen's network.py) writes it.

For every sample of a mini-batch: forward pass with column vectors, backpropagation, add the
sample's gradient to a running sum; then one update with the gradient averaged over the batch.
Written here in plain NumPy, on purpose without batching, to show where everyone starts from.
The cost and its derivatives are those of ``docs/design.md`` ("The cost and the output delta":
MSE is ||a - y||^2 per sample).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import InputError

Params = list[tuple[np.ndarray, np.ndarray]]


def _act(name: str, z: np.ndarray) -> np.ndarray:
    """a = sigma(z) for one layer."""
    if name == "sigmoid":
        return 1.0 / (1.0 + np.exp(-z))
    if name == "relu":
        return np.maximum(z, 0)
    if name == "tanh":
        return np.tanh(z)
    if name == "identity":
        return z
    if name == "softmax":
        e = np.exp(z - z.max())
        return e / e.sum()
    raise InputError(f"unknown activation {name!r}")


def _act_prime(name: str, z: np.ndarray, a: np.ndarray) -> np.ndarray:
    """sigma'(z), from z and a = sigma(z)."""
    if name == "sigmoid":
        return a * (1 - a)
    if name == "relu":
        return (z > 0).astype(z.dtype)
    if name == "tanh":
        return 1 - a * a
    if name == "identity":
        return np.ones_like(z)
    raise InputError(f"no elementwise derivative for activation {name!r}")


def backprop_sample(params: Params, x: np.ndarray, y: np.ndarray, activation: str,
                    output: str, loss: str) -> Params:
    """Gradient of one sample's cost C_x with respect to every (W, b), column vectors.

    z^(l) = W^(l) a^(l-1) + b^(l);  delta^(L) = dC/da (.) sigma'(z^(L)) (softmax + CE:
    a^(L) - y);  delta^(l-1) = (W^(l)^T delta^(l)) (.) sigma'(z^(l-1));
    dC/dW^(l) = delta^(l) a^(l-1)^T;  dC/db^(l) = delta^(l).
    """
    a = x.reshape(-1, 1)
    activations = [a]
    zs = []
    n_layers = len(params)
    for i, (W, b) in enumerate(params):
        z = W @ a + b.reshape(-1, 1)
        a = _act(output if i == n_layers - 1 else activation, z)
        zs.append(z)
        activations.append(a)
    y = y.reshape(-1, 1)
    if loss == "cross_entropy":
        if output != "softmax":
            raise InputError("cross_entropy needs the softmax output")
        delta = a - y
    elif loss == "mse":
        if output == "softmax":
            raise InputError("this baseline supports mse with an elementwise output only")
        delta = 2 * (a - y) * _act_prime(output, zs[-1], a)
    else:
        raise InputError(f"unknown loss {loss!r}")
    grads: Params = [None] * n_layers  # type: ignore[list-item]
    for layer in range(n_layers - 1, -1, -1):
        grads[layer] = (delta @ activations[layer].T, delta[:, 0].copy())
        if layer > 0:
            W = params[layer][0]
            delta = (W.T @ delta) * _act_prime(activation, zs[layer - 1], activations[layer])
    return grads


def one_hot(labels: np.ndarray, n_classes: int, dtype: type = np.float32) -> np.ndarray:
    """Integer labels (n,) -> one-hot rows (n, n_classes)."""
    out = np.zeros((len(labels), n_classes), dtype=dtype)
    out[np.arange(len(labels)), labels] = 1
    return out


def minibatch_gradient(params: Params, X: np.ndarray, Y: np.ndarray, activation: str,
                       output: str, loss: str) -> Params:
    """Gradient of the batch cost: the per-sample gradients summed one sample at a time,
    divided by the batch size."""
    nabla = [(np.zeros_like(W), np.zeros_like(b)) for W, b in params]
    for x, y in zip(X, Y, strict=True):
        g = backprop_sample(params, x, y, activation, output, loss)
        for (nw, nb), (dw, db) in zip(nabla, g, strict=True):
            nw += dw
            nb += db
    n = len(X)
    return [(nw / n, nb / n) for nw, nb in nabla]


def sgd_steps(params: Params, X: np.ndarray, Y: np.ndarray, batch: int, lr: float,
              activation: str, output: str, loss: str) -> None:
    """Mini-batch SGD over X in order, updating ``params`` in place: W <- W - lr * dC/dW."""
    for start in range(0, len(X) - batch + 1, batch):
        grads = minibatch_gradient(params, X[start:start + batch], Y[start:start + batch],
                                   activation, output, loss)
        for (W, b), (dW, db) in zip(params, grads, strict=True):
            W -= lr * dW.astype(W.dtype, copy=False)
            b -= lr * db.astype(b.dtype, copy=False)


def copy_params(params: Sequence[tuple[np.ndarray, np.ndarray]], dtype: type = np.float32
                ) -> Params:
    """Writable host copies of (W, b) pairs in ``dtype``."""
    return [(np.array(W, dtype=dtype), np.array(b, dtype=dtype)) for W, b in params]
