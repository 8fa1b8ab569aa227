"""The reference kernels: every piece of the batched math, written once against ``self.xp``.

One sample per row: a batch of activations is an array of shape (B, n). Each kernel writes into
an ``out=`` buffer that the caller allocated once (for a given batch size), so that a training
step reuses the same memory. The methods come in named forward/backward pairs and carry the
article's equation they implement. :class:`~gpunn.backend.numpy_ops.NumpyOps` and
:class:`~gpunn.backend.cupy_ops.CupyOps` override only hot paths; everything else runs this code.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from types import ModuleType
from typing import Any, NamedTuple

import numpy

from ..errors import InputError

Array = Any  # an array of this backend's module (numpy.ndarray, cupy.ndarray)

HIDDEN_ACTIVATIONS = ("sigmoid", "relu", "tanh", "identity")
OUTPUT_ACTIVATIONS = ("sigmoid", "softmax", "identity")
LOSSES = ("mse", "cross_entropy")

_SPLITMIX_GAMMA = numpy.uint64(0x9E3779B97F4A7C15)
_SPLITMIX_M1 = numpy.uint64(0xBF58476D1CE4E5B9)
_SPLITMIX_M2 = numpy.uint64(0x94D049BB133111EB)


class EventClock(NamedTuple):
    """How to time device work with the device's own events: ``new_event()`` makes an event
    to ``record(stream)`` on ``stream`` (where the backend's work runs), and
    ``elapsed_ms(start, end)`` gives the milliseconds between two recorded events."""

    new_event: Callable[[], Any]
    elapsed_ms: Callable[[Any, Any], float]
    stream: Any


class Ops:
    """Reference kernels for one array module. Subclasses set ``name`` and ``xp``."""

    name = "reference"
    xp: ModuleType = numpy
    replays_steps = False  # True where run_step records a step once and replays it

    def __init__(self) -> None:
        self.host_transfers = 0  # counted by to_host(), so tests can prove a loop makes none

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"

    # ------------------------------------------------------------------ memory and transfers
    def asarray(self, array: Any, dtype: Any = None) -> Array:
        """The array on this backend's device (no copy when it is already there)."""
        return self.xp.asarray(array, dtype=dtype)

    def to_host(self, array: Array) -> numpy.ndarray:
        """A NumPy copy of a device array: the one place gpunn moves data to the host."""
        self.host_transfers += 1
        return numpy.array(array, copy=True)

    def address(self, array: Array) -> int:
        """Where the array's data starts in the device's memory (a recorded step's identity)."""
        return array.__array_interface__["data"][0]

    def is_device_array(self, array: Any) -> bool:
        return isinstance(array, self.xp.ndarray)

    def empty(self, shape: Any, dtype: Any) -> Array:
        return self.xp.empty(shape, dtype=dtype)

    def zeros(self, shape: Any, dtype: Any) -> Array:
        return self.xp.zeros(shape, dtype=dtype)

    def copy_into(self, out: Array, source: Array) -> Array:
        """out[...] = source, on the device."""
        out[...] = source
        return out

    def copy(self, array: Array) -> Array:
        """A new device array holding the same values."""
        return self.xp.array(array, copy=True)

    def arange(self, n: int) -> Array:
        """0, 1, ..., n−1 as int64 on the device: the order of an unshuffled epoch."""
        return self.xp.arange(n, dtype=self.xp.int64)

    def training_scope(self) -> contextlib.AbstractContextManager[Any]:
        """A context entered around a whole fit (BLAS threads, streams); nothing here."""
        return contextlib.nullcontext()

    def run_step(self, key: Any, step: Any) -> None:
        """Run ``step()``, a training step whose buffers are fixed for ``key``.

        Here it simply calls it; a backend that can record a step (CUDA graphs) replays the
        recording for later calls with the same key.
        """
        step()

    def forget_steps(self) -> None:
        """Drop recorded steps, whose buffers were replaced (nothing is recorded here)."""

    def memory_guard(
        self, what: str, rows: int | None, nbytes: int
    ) -> contextlib.AbstractContextManager[Any]:
        """Turn the device's out-of-memory error into DeviceMemoryError naming the batch size
        ``rows`` (None: no batch) and ``nbytes`` (on the CPU, MemoryError is left as it is)."""
        return contextlib.nullcontext()

    def synchronize(self) -> None:
        """Wait until queued device work has finished (nothing to wait for on the CPU)."""

    def device_name(self) -> str:
        return "CPU"

    def device_info(self) -> dict[str, Any]:
        """What the device is, for a benchmark's record (a GPU says much more)."""
        return {"name": self.device_name()}

    def event_clock(self) -> EventClock | None:
        """Device events to time work with; None here: a host clock read after
        :meth:`synchronize` is exact where the work runs on the host."""
        return None

    def tf32_scope(self, enabled: bool = True) -> contextlib.AbstractContextManager[Any]:
        """TensorFloat-32 float32 matrix products for the duration: a GPU setting, so here
        nothing changes."""
        return contextlib.nullcontext()

    def tf32_in_use(self) -> bool:
        """Whether float32 matrix products run on TensorFloat-32 now (never here)."""
        return False

    # ------------------------------------------------------------------ affine map
    def matmul(self, a: Array, b: Array, out: Array) -> Array:
        """out = a @ b: every matrix product of a step goes through here."""
        return self.xp.matmul(a, b, out=out)

    def affine_forward(self, A_prev: Array, W: Array, b: Array, out: Array) -> Array:
        """Z = A_prev Wᵀ + b: the batched z^(l) = W^(l) a^(l-1) + b^(l), one sample per row."""
        self.matmul(A_prev, W.T, out=out)
        out += b
        return out

    def affine_backward_weights(self, delta: Array, A_prev: Array, dW: Array, db: Array) -> None:
        """∂C/∂W^(l) = δ^(l)ᵀ A^(l-1) and ∂C/∂b^(l) = Σ_rows δ^(l), written into dW and db."""
        self.matmul(delta.T, A_prev, out=dW)
        self.xp.sum(delta, axis=0, out=db)

    def affine_backward_input(self, delta: Array, W: Array, out: Array) -> Array:
        """∂C/∂a^(l-1) = δ^(l) W^(l): the error carried back one layer, before σ'."""
        return self.matmul(delta, W, out=out)

    def layer_forward(
        self, A_prev: Array, W: Array, b: Array, activation: str, out: Array, Z: Array = None
    ) -> Array:
        """a^(l) = σ(A_prev Wᵀ + b) into ``out``: z is computed in place, or kept in ``Z``
        when given (the output layer, whose z the cost needs)."""
        Z = out if Z is None else Z
        self.affine_forward(A_prev, W, b, out=Z)
        return self.activation_forward(activation, Z, out=out)

    # ------------------------------------------------------------------ activations
    def activation_forward(self, name: str, Z: Array, out: Array) -> Array:
        """A = σ(Z), elementwise (out may be Z itself). softmax normalises each row."""
        xp = self.xp
        if name == "sigmoid":
            return self.sigmoid(Z, out)
        if name == "relu":
            return xp.maximum(Z, 0, out=out)
        if name == "tanh":
            return xp.tanh(Z, out=out)
        if name == "identity":
            if out is not Z:
                out[...] = Z
            return out
        if name == "softmax":
            return self.softmax(Z, out)
        raise InputError(f"unknown activation {name!r}")

    def sigmoid(self, Z: Array, out: Array) -> Array:
        """σ(z) = 1 / (1 + e^(−z))."""
        xp = self.xp
        xp.negative(Z, out=out)
        xp.exp(out, out=out)
        out += 1
        return xp.reciprocal(out, out=out)

    def softmax(self, Z: Array, out: Array) -> Array:
        """softmax(z)_k = e^(z_k − max z) / Σ_j e^(z_j − max z), row by row."""
        xp = self.xp
        xp.subtract(Z, Z.max(axis=1, keepdims=True), out=out)
        xp.exp(out, out=out)
        out /= out.sum(axis=1, keepdims=True)
        return out

    def activation_backward(self, name: str, A: Array, delta: Array, scratch: Array) -> Array:
        """δ ⊙= σ'(z), with σ' written through a = σ(z) so that z need not be kept.

        sigmoid: σ' = a(1 − a);  tanh: σ' = 1 − a²;  relu: σ' = [a > 0];  identity: σ' = 1.
        ``scratch`` is a buffer of A's shape that the kernel may overwrite.
        """
        xp = self.xp
        if name == "sigmoid":
            xp.subtract(1, A, out=scratch)
            scratch *= A
            delta *= scratch
        elif name == "tanh":
            xp.multiply(A, A, out=scratch)
            xp.subtract(1, scratch, out=scratch)
            delta *= scratch
        elif name == "relu":
            xp.greater(A, 0, out=scratch)
            delta *= scratch
        elif name != "identity":
            raise InputError(f"unknown activation {name!r}")
        return delta

    # ------------------------------------------------------------------ cost and output delta
    def output_delta(
        self, output: str, loss: str, Z: Array, A: Array, Y: Array, scale: float, out: Array
    ) -> Array:
        """δ^(L) = ∂C/∂z^(L) for the batch, where C averages over the n rows (scale = 1/n).

        mse:  ∂C/∂a = (2/n)(a − y), then ⊙ σ'(z) (softmax: its Jacobian, a ⊙ (g − Σ g a)).
        cross_entropy with softmax (or with sigmoid, per unit): (a − y)/n exactly.
        """
        xp = self.xp
        xp.subtract(A, Y, out=out)
        if loss == "cross_entropy":
            out *= scale
            return out
        out *= 2 * scale
        if output == "softmax":
            weighted = (out * A).sum(axis=1, keepdims=True)
            out -= weighted
            out *= A
            return out
        return self.activation_backward(output, A, out, scratch=Z)

    def cost_sum(self, output: str, loss: str, Z: Array, A: Array, Y: Array) -> Array:
        """Σ over the batch of each sample's cost, as a 0-d device array (no host sync).

        mse: Σ_i ||a_i − y_i||².  cross_entropy: −Σ_i Σ_k y_ik log a_ik, computed from the
        logits z (log-softmax, or log-sigmoid per unit) so that it stays finite.
        """
        xp = self.xp
        if loss == "mse":
            diff = A - Y
            return xp.vdot(diff, diff)
        if output == "softmax":
            shifted = Z - Z.max(axis=1, keepdims=True)
            log_a = shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))
            return -xp.vdot(Y, log_a)
        # binary cross-entropy per unit: −[y log σ(z) + (1−y) log(1−σ(z))] = softplus(z) − y z
        softplus = xp.logaddexp(0, Z)
        return softplus.sum() - xp.vdot(Y, Z)

    def cost_accumulate(
        self, output: str, loss: str, Z: Array, A: Array, Y: Array, acc: Array
    ) -> Array:
        """acc += :meth:`cost_sum` (a 0-d device accumulator; no host sync)."""
        acc += self.cost_sum(output, loss, Z, A, Y)
        return acc

    # ------------------------------------------------------------------ optimizer updates
    def sgd_update(self, params: Array, grads: Array, lr: float, weight_decay: float = 0.0) -> None:
        """θ ← θ − η (∇C + λθ): one operation over the flat parameter buffer."""
        if weight_decay:
            grads += weight_decay * params
        params -= lr * grads

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
        """v ← μv + g;  θ ← θ − η v  (Nesterov: θ ← θ − η (g + μv)),  g = ∇C + λθ."""
        if weight_decay:
            grads += weight_decay * params
        velocity *= momentum
        velocity += grads
        if nesterov:
            grads += momentum * velocity
            params -= lr * grads
        else:
            params -= lr * velocity

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
        """Adam: m ← β₁m + (1−β₁)g;  v ← β₂v + (1−β₂)g²;  θ ← θ − η m̂ / (√v̂ + ε),
        with m̂ = m/(1−β₁ᵗ), v̂ = v/(1−β₂ᵗ); weight decay is decoupled (AdamW): θ ← θ − ηλθ.

        ``step`` is t, or a 0-d integer device counter holding t − 1 that the update first
        advances: a recorded (replayed) update then still sees the right t every step.
        """
        xp = self.xp
        step = self.advance_counter(step)
        if weight_decay:
            params *= 1 - lr * weight_decay
        m *= beta1
        m += (1 - beta1) * grads
        v *= beta2
        v += (1 - beta2) * grads * grads
        step_size = lr / (1 - beta1**step)
        denom = xp.sqrt(v / (1 - beta2**step)) + eps
        params -= step_size * (m / denom)

    def advance_counter(self, step: Any) -> int:
        """t from a step argument: t itself, or a device counter holding t − 1, advanced here."""
        if self.is_device_array(step):
            step += 1
        return int(step)

    # ------------------------------------------------------------------ data on the device
    def permutation(self, n: int, seed: int, epoch: int) -> Array:
        """A permutation of range(n) for (seed, epoch), made on the device.

        Each index gets the key splitmix64(seed·2³² + epoch, index) and the indices are sorted by
        key: every backend and every process draws the same order from the same seed, so that a
        run resumed at epoch e, a run on another device and each rank of a data-parallel run
        all see exactly the batches a single uninterrupted run would.
        """
        xp = self.xp
        stream = ((int(seed) & 0xFFFFFFFF) << 32) | (int(epoch) & 0xFFFFFFFF)
        offset = numpy.uint64((stream * int(_SPLITMIX_M2)) & 0xFFFFFFFFFFFFFFFF)
        z = xp.arange(1, n + 1, dtype=xp.uint64) * _SPLITMIX_GAMMA + offset
        z ^= z >> numpy.uint64(30)
        z *= _SPLITMIX_M1
        z ^= z >> numpy.uint64(27)
        z *= _SPLITMIX_M2
        z ^= z >> numpy.uint64(31)
        return xp.argsort(z, kind="stable")

    def gather_rows(self, source: Array, index: Array, out: Array) -> Array:
        """out[i] = source[index[i]]: a shuffled mini-batch, gathered on the device."""
        return self.xp.take(source, index, axis=0, out=out)

    def gather_batch(
        self, source: Array, order: Array, cursor: Array, offset: int, out: Array
    ) -> Array:
        """out[r] = source[order[cursor + offset + r]]: the next batch of an epoch, where the
        0-d integer ``cursor`` says how far the epoch has come.

        The position lives on the device, so a recorded step (one replay for every batch of
        its size) still gathers its own batch. This reference reads it on the host; the CuPy
        backend reads it in its kernel.
        """
        start = int(cursor) + int(offset)
        return self.gather_rows(source, order[start : start + out.shape[0]], out)

    def advance_cursor(self, cursor: Array, rows: int, n: int) -> None:
        """cursor ← (cursor + rows) mod n, on the device."""
        cursor[...] = (cursor + rows) % n

    def one_hot(self, labels: Array, n_classes: int, dtype: Any) -> Array:
        """Integer labels (n,) as rows of the identity (n, n_classes), on the device."""
        xp = self.xp
        return (labels[:, None] == xp.arange(n_classes)[None, :]).astype(dtype)

    def all_finite(self, array: Array) -> Array:
        """A 0-d device boolean: no NaN or infinity in the array (read back by the caller).

        Checked through the sum, which any NaN or infinity makes non-finite, so that no
        array-sized mask is made. The sum itself overflows only when entries average beyond
        about 1e31 in float32: the network has diverged then too.
        """
        return self.xp.isfinite(self.xp.sum(array))

    # ------------------------------------------------------------------ totals for one read-back
    def pack_scalars(self, *values: Array) -> Array:
        """0-d device values (any dtype) as one float64 vector, for a single host transfer."""
        xp = self.xp
        return xp.stack([value.astype(xp.float64) for value in values])

    def count_correct(self, A: Array, Y: Array) -> Array:
        """The number of rows whose largest output a is the target's largest y (with a single
        output unit: a ≥ 0.5 matches y ≥ 0.5), on the device."""
        xp = self.xp
        if A.shape[1] == 1:
            return xp.count_nonzero((A >= 0.5) == (Y >= 0.5))
        return xp.count_nonzero(A.argmax(axis=1) == Y.argmax(axis=1))

    def max_abs(self, array: Array) -> Array:
        """max |a| over the array, a float64 0-d device value (two reductions, no temporary
        of the array's size)."""
        xp = self.xp
        return xp.maximum(array.max(), -array.min()).astype(xp.float64)

    def infinity_norm(self, W: Array) -> Array:
        """‖W‖_∞ = max_i Σ_j |w_ij|, the largest absolute row sum, a float64 0-d device value."""
        xp = self.xp
        return xp.abs(W).sum(axis=1, dtype=xp.float64).max()

    def any_differ(self, a: Array, b: Array) -> Array:
        """A 0-d device boolean: some element of ``a`` differs from ``b``'s."""
        return self.xp.any(a != b)
