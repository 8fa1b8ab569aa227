"""Divergence: whether the weights an epoch ends with still give a finite cost.

:func:`gpunn.train.fit` checks once per epoch, from one host read of a few numbers
(:func:`read_back`): the epoch's summed cost and whether every weight is finite, and the
magnitudes of the weights and of the data. From those, :func:`cost_bound` bounds every number
the forward pass and the summed cost can reach; only when that bound does not rule out an
overflow of the dtype does :func:`cost_overflows` compute the cost itself (one forward pass).
So a run whose last update of an epoch leaves huge but finite weights stops with
DivergenceError instead of handing back a network whose cost is infinite, and a healthy run
pays nothing but the read.
"""

from __future__ import annotations

import math
from typing import Any

import numpy

from .network import Network


def data_magnitudes(ops: Any, Xd: Any, Yd: Any) -> Any:
    """[max |x|, max |y|] over the training data, as a float64 device array (made once a fit)."""
    xp = ops.xp

    def max_abs(a: Any) -> Any:  # two reductions, no array-sized temporary
        return xp.maximum(a.max(), -a.min()).astype(xp.float64)

    return xp.stack([max_abs(Xd), max_abs(Yd)])


def read_back(
    ops: Any, cost: Any, net: Network, data_max: Any
) -> tuple[float, bool, dict[str, Any]]:
    """The epoch's summed cost, whether every weight is finite, and the magnitudes that
    :func:`cost_bound` needs: ‖W^(l)‖_∞ = max_i Σ_j |w_ij| and max |b^(l)| per layer,
    max |x| and max |y| (``data_max``). One host transfer of 4 + 2L numbers."""
    xp = ops.xp
    f64 = xp.float64
    row_sums = [xp.abs(W).sum(axis=1, dtype=f64).max() for W in net.weights]
    bias_max = [xp.abs(b).max().astype(f64) for b in net.biases]
    finite = ops.all_finite(net.params).astype(f64)
    values = ops.to_host(xp.stack([cost.astype(f64), finite, *data_max, *row_sums, *bias_max]))
    loss_sum, finite, x_max, y_max, *rest = values.tolist()
    L = net.n_layers
    magnitudes = {"x": x_max, "y": y_max, "W": rest[:L], "b": rest[L:]}
    return loss_sum, bool(finite), magnitudes


def cost_bound(net: Network, magnitudes: dict[str, Any], n: int) -> float:
    """An upper bound on the magnitude of every number that the forward pass and the summed
    cost of the n training rows compute, from the magnitudes :func:`read_back` returns.

    Layer by layer, |z^(l)| ≤ ‖W^(l)‖_∞ · max|a^(l-1)| + max|b^(l)| (every partial sum of the
    product too), and max|a^(l)| is 1 after sigmoid, tanh or softmax, max|z^(l)| after relu
    or identity, starting from max|a^(0)| = max|x|. Per sample, with n_L outputs:

        mse:                    ‖a − y‖²              ≤ n_L (max|a| + max|y|)²
        softmax + cross-entropy −Σ_k y_k log a_k      ≤ n_L max|y| (2 max|z| + log n_L)
        sigmoid + cross-entropy Σ_k softplus(z_k) − y_k z_k ≤ n_L ((1 + max|y|) max|z| + log 2)

    and the cost summed over the rows is at most n times that. For the squared error, the
    bound stays below finfo.max exactly when max|a| + max|y| < √(finfo.max / (n n_L)).
    """
    a_max, z_max = magnitudes["x"], 0.0
    worst = 0.0
    last = net.n_layers - 1
    for layer, (W_norm, b_max) in enumerate(zip(magnitudes["W"], magnitudes["b"], strict=True)):
        z_max = _times(W_norm, a_max) + b_max
        worst = max(worst, z_max)
        activation = net.activation if layer < last else net.output
        a_max = 1.0 if activation in ("sigmoid", "tanh", "softmax") else z_max
    if net.output == "softmax":
        worst = max(worst, 2 * z_max)  # z − max_k z_k
    n_out, y_max = net.sizes[-1], magnitudes["y"]
    if net.loss_name == "mse":
        reach = a_max + y_max
        per_sample = n_out * (reach * reach)  # a float product overflows to inf, ** raises
    elif net.output == "softmax":
        per_sample = n_out * _times(y_max, 2 * z_max + math.log(n_out))
    else:
        per_sample = n_out * ((1 + y_max) * z_max + math.log(2))
    bound = max(worst, n * per_sample)
    return math.inf if math.isnan(bound) else bound


def _times(a: float, b: float) -> float:
    """a·b for bounds, with 0·∞ = 0: a zero bound means the quantity is exactly zero."""
    return 0.0 if a == 0 or b == 0 else a * b


def cost_overflows(
    net: Network, Xd: Any, Yd: Any, magnitudes: dict[str, Any], comm: Any
) -> bool:
    """Whether the network's weights, finite as they are, give an infinite cost on (Xd, Yd).

    Cheap and sure in the usual case: no overflow is possible while :func:`cost_bound`
    stays below half of finfo.max (the other half covers the rounding of the sums). Only
    where the bound cannot rule one out (weights that are blowing up, or a deep network of
    wide relu or identity layers) is the cost computed: a forward pass over the training data.
    """
    limit = float(numpy.finfo(net.dtype).max) / 2
    if cost_bound(net, magnitudes, Xd.shape[0]) < limit:
        return False
    if comm is not None:
        from .distributed import evaluate_distributed

        loss = evaluate_distributed(net, Xd, Yd, comm)["loss"]
    else:
        loss = net.evaluate_device(Xd, Yd)["loss"]
    return not math.isfinite(loss)
