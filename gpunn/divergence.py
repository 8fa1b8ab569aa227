"""Divergence: whether the weights an epoch ends with still give a finite cost.

:func:`gpunn.train.fit` checks once per epoch (:func:`check_epoch`), from one host read of
a few numbers (:func:`read_back`): the epoch's summed cost and whether every weight is finite,
and the magnitudes of the weights and of the data. From those, :func:`cost_bound` bounds every
number the forward pass and the summed cost can reach; only when that bound does not rule out
an overflow of the dtype does :func:`cost_overflows` compute the cost itself (one forward pass).
So a run whose last update of an epoch leaves huge but finite weights stops with
DivergenceError instead of handing back a network whose cost is infinite, and a healthy run
pays nothing but the read.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy

from .backend import Array, Ops
from .network import Network

if TYPE_CHECKING:
    from .distributed import Communicator


def data_magnitudes(ops: Ops, Xd: Array, Yd: Array) -> Array:
    """[max |x|, max |y|] over the training data, as a float64 device array (made once a fit)."""
    return ops.pack_scalars(ops.max_abs(Xd), ops.max_abs(Yd))


def check_epoch(
    net: Network, cost: Array, Xd: Array, Yd: Array, data_max: Array,
    comm: Communicator | None,
) -> tuple[float, str | None]:
    """The epoch's summed cost (``cost``, read back with what the check needs), and what went
    wrong when the epoch diverged: None when it did not."""
    loss_sum, params_finite, magnitudes = read_back(net.backend, cost, net, data_max)
    if not (math.isfinite(loss_sum) and params_finite):
        return loss_sum, "the loss or the weights became NaN or infinite"
    if cost_overflows(net, Xd, Yd, magnitudes, comm):
        return loss_sum, (
            "the weights grew so large that the network's outputs overflow "
            f"{net.dtype.name}: its cost on the training data is infinite"
        )
    return loss_sum, None


def read_back(
    ops: Ops, cost: Array, net: Network, data_max: Array
) -> tuple[float, bool, dict[str, Any]]:
    """The epoch's summed cost, whether every weight is finite, and the magnitudes that
    :func:`cost_bound` needs: ‖W^(l)‖_∞ = max_i Σ_j |w_ij| and max |b^(l)| per layer,
    max |x| and max |y| (``data_max``). One host transfer of 4 + 2L numbers."""
    row_sums = [ops.infinity_norm(W) for W in net.weights]
    bias_max = [ops.max_abs(b) for b in net.biases]
    finite = ops.all_finite(net.params)
    values = ops.to_host(ops.pack_scalars(cost, finite, *data_max, *row_sums, *bias_max))
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
    net: Network, Xd: Array, Yd: Array, magnitudes: dict[str, Any], comm: Communicator | None
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
