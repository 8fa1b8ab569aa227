"""NumPy (CPU) kernels: the reference kernels with the CPU's hot paths done in place.

Every override computes what the reference method in :mod:`gpunn.backend.ops` computes, but
without temporaries: intermediate results go to the caller's buffers or to scratch arrays this
object keeps per shape, so that a warmed-up training step allocates no array at all.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy

from .ops import Array, Ops

# Subnormal floats (below 1.2e-38 in float32) slow x86 arithmetic, BLAS included.
# σ(z) = 1/(1 + e^(−z)) makes them twice: e^(−z) for z > 87, and σ(z) itself for z < −87,
# whose products with the next layer's weights then pass through the GEMMs of a network with
# saturated sigmoid units (the article's 784-100-10 sigmoid/MSE network on the MNIST subset
# trained 15% faster with the floor below). Clipping −z to [−60, 60] avoids both. It leaves
# float32 σ(z) unchanged above (1/(1 + e^−60) rounds to 1) and floors it at e^−60 ≈ 9e-27
# below, which no float32 sum with terms near 1 can tell from 0. float64 has room to 708.
_EXP_BOUND = {numpy.dtype(numpy.float32): 60.0, numpy.dtype(numpy.float64): 708.0}
# (−bound, bound, 1) as scalars of each dtype: ndarray.clip with typed bounds is one pass over
# the array, where maximum and minimum with Python floats are two slower ones
_SIGMOID_CONSTANTS = {
    dtype: (dtype.type(-bound), dtype.type(bound), dtype.type(1))
    for dtype, bound in _EXP_BOUND.items()
}

class NumpyOps(Ops):
    name = "numpy"
    xp = numpy

    def __init__(self) -> None:
        super().__init__()
        self._local = threading.local()  # scratch buffers, one set per thread

    def scratch(self, shape: tuple[int, ...], dtype: Any, tag: str = "") -> Array:
        """A buffer of this shape kept for reuse by kernels (its contents are garbage).

        The backend object is shared by every network of the process, so each thread gets its
        own buffers: two networks trained in two threads never write into each other's.
        """
        buffers = getattr(self._local, "buffers", None)
        if buffers is None:
            buffers = self._local.buffers = {}
        key = (tuple(shape), numpy.dtype(dtype), tag)
        buffer = buffers.get(key)
        if buffer is None:
            buffer = buffers[key] = numpy.empty(shape, dtype)
        return buffer

    # ------------------------------------------------------------------ affine map
    def affine_backward_weights(self, delta: Array, A_prev: Array, dW: Array, db: Array) -> None:
        self.matmul(delta.T, A_prev, out=dW)
        numpy.add.reduce(delta, axis=0, out=db)

    # ------------------------------------------------------------------ activations
    def activation_backward(self, name: str, A: Array, delta: Array, scratch: Array) -> Array:
        if name != "relu":
            return super().activation_backward(name, A, delta, scratch)
        mask = self.scratch(A.shape, numpy.bool_, "mask")  # σ' = [a > 0], one byte per entry
        numpy.greater(A, 0, out=mask)
        return numpy.multiply(delta, mask, out=delta)

    def sigmoid(self, Z: Array, out: Array) -> Array:
        """σ(z) = 1 / (1 + e^(−z)), with −z clipped so that neither e^(−z) nor σ is subnormal."""
        low, high, one = _SIGMOID_CONSTANTS[out.dtype]
        numpy.negative(Z, out=out)
        out.clip(low, high, out=out)
        numpy.exp(out, out=out)
        numpy.add(out, one, out=out)
        return numpy.reciprocal(out, out=out)

    def _shifted_exp(self, Z: Array, out: Array) -> tuple[Array, Array]:
        """out = e^(z − max z) row by row; returns the rows' max z and Σ e^(z − max z)."""
        top = self.scratch((Z.shape[0], 1), Z.dtype, "row")
        total = self.scratch((Z.shape[0], 1), Z.dtype, "row2")
        numpy.maximum.reduce(Z, axis=1, keepdims=True, out=top)
        numpy.subtract(Z, top, out=out)
        numpy.exp(out, out=out)
        numpy.add.reduce(out, axis=1, keepdims=True, out=total)
        return top, total

    def softmax(self, Z: Array, out: Array) -> Array:
        _, total = self._shifted_exp(Z, out)
        return numpy.divide(out, total, out=out)

    # ------------------------------------------------------------------ cost and output delta
    def output_delta(
        self, output: str, loss: str, Z: Array, A: Array, Y: Array, scale: float, out: Array
    ) -> Array:
        if output == "softmax" and loss == "mse":
            return super().output_delta(output, loss, Z, A, Y, scale, out)
        numpy.subtract(A, Y, out=out)
        numpy.multiply(out, scale if loss == "cross_entropy" else 2 * scale, out=out)
        if loss == "mse":
            self.activation_backward(output, A, out, scratch=Z)
        return out

    def cost_sum(self, output: str, loss: str, Z: Array, A: Array, Y: Array) -> Array:
        scratch = self.scratch(A.shape, A.dtype, "cost")
        if loss == "mse":
            numpy.subtract(A, Y, out=scratch)
            return numpy.vdot(scratch, scratch)
        if output == "softmax":  # −Σ y·log softmax(z), log softmax = z − log Σ e^z, stably
            top, log_sum = self._shifted_exp(Z, scratch)
            numpy.log(log_sum, out=log_sum)
            numpy.add(log_sum, top, out=log_sum)
            numpy.subtract(Z, log_sum, out=scratch)
            return -numpy.vdot(Y, scratch)
        numpy.logaddexp(0, Z, out=scratch)  # binary cross-entropy: softplus(z) − y z
        return numpy.add.reduce(scratch, axis=None) - numpy.vdot(Y, Z)

    # ------------------------------------------------------------------ optimizer updates
    def sgd_update(self, params: Array, grads: Array, lr: float, weight_decay: float = 0.0) -> None:
        if weight_decay:
            grads += self._scaled(params, weight_decay)
        if lr != 1.0:
            numpy.multiply(grads, lr, out=grads)
        numpy.subtract(params, grads, out=params)

    def momentum_update(
        self,
        params: Array,
        grads: Array,
        velocity: Array,
        lr: float,
        momentum: float,
        nesterov: bool = False,
        weight_decay: float = 0.0,
    ) -> None:
        if weight_decay:
            grads += self._scaled(params, weight_decay)
        numpy.multiply(velocity, momentum, out=velocity)
        numpy.add(velocity, grads, out=velocity)
        if nesterov:  # θ −= η (g + μ v)
            numpy.add(grads, self._scaled(velocity, momentum), out=grads)
            numpy.multiply(grads, lr, out=grads)
        else:
            numpy.multiply(velocity, lr, out=grads)
        numpy.subtract(params, grads, out=params)

    def adam_update(
        self,
        params: Array,
        grads: Array,
        m: Array,
        v: Array,
        lr: float,
        beta1: float,
        beta2: float,
        eps: float,
        step: Any,
        weight_decay: float = 0.0,
    ) -> None:
        step = self.advance_counter(step)
        if weight_decay:
            numpy.multiply(params, 1 - lr * weight_decay, out=params)
        numpy.multiply(m, beta1, out=m)
        m += self._scaled(grads, 1 - beta1)
        numpy.multiply(v, beta2, out=v)
        numpy.multiply(grads, grads, out=grads)  # grads is free from here: g² in place
        numpy.multiply(grads, 1 - beta2, out=grads)
        v += grads
        # θ −= η/(1−β₁ᵗ) · m / (√(v/(1−β₂ᵗ)) + ε), built in the grads buffer
        numpy.multiply(v, 1 / (1 - beta2**step), out=grads)
        numpy.sqrt(grads, out=grads)
        numpy.add(grads, eps, out=grads)
        numpy.divide(m, grads, out=grads)
        numpy.multiply(grads, lr / (1 - beta1**step), out=grads)
        numpy.subtract(params, grads, out=params)

    def _scaled(self, array: Array, factor: float) -> Array:
        """factor · array in a scratch buffer of array's shape."""
        return numpy.multiply(array, factor, out=self.scratch(array.shape, array.dtype, "scaled"))

    # ------------------------------------------------------------------ data on the device
    def gather_rows(self, source: Array, index: Array, out: Array) -> Array:
        # mode="clip" writes straight into out; the default "raise" buffers the whole result
        return numpy.take(source, index, axis=0, out=out, mode="clip")
