"""Finite differences of a network's cost: the yardstick for every gradient test; and the
networks those tests cover."""

import numpy as np

from gpunn.backend import HIDDEN_ACTIVATIONS as HIDDEN

#: every (output, loss) pair a network accepts
HEADS = (
    ("sigmoid", "mse"),
    ("identity", "mse"),
    ("softmax", "mse"),
    ("softmax", "cross_entropy"),
    ("sigmoid", "cross_entropy"),
)
__all__ = ["HEADS", "HIDDEN", "numerical_gradients"]


def numerical_gradients(net, X, Y, eps=1e-6):
    """Central differences of net.loss with respect to every weight and bias."""
    params = net.get_params()
    grads = []
    for layer, (W, b) in enumerate(params):
        pair = []
        for which, array in ((0, W), (1, b)):
            numeric = np.zeros_like(array)
            for index in np.ndindex(array.shape):
                values = []
                for sign in (1, -1):
                    shifted = [(w.copy(), c.copy()) for w, c in params]
                    shifted[layer][which][index] += sign * eps
                    net.set_params(shifted)
                    values.append(net.loss(X, Y))
                numeric[index] = (values[0] - values[1]) / (2 * eps)
            pair.append(numeric)
        grads.append(tuple(pair))
    net.set_params(params)
    return grads
