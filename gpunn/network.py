"""A feedforward network and backpropagation, batched: one sample per row.

Layer l = 1..L maps the activations a^(l-1) of the layer before to

    z^(l) = W^(l) a^(l-1) + b^(l),        a^(l) = σ(z^(l)),        a^(0) = x,

with W^(l) of shape (n_l, n_{l-1}) (w_{to,from}). For a batch X of shape (B, n_0) the same reads
Z = A_prev Wᵀ + b. The cost C averages over the batch; backpropagation computes

    δ^(L) = ∂C/∂z^(L),    ∂C/∂W^(l) = δ^(l)ᵀ A^(l-1),    ∂C/∂b^(l) = Σ_rows δ^(l),
    δ^(l-1) = (δ^(l) W^(l)) ⊙ σ'(z^(l-1)),

and mini-batch SGD moves every W and b against its gradient (see :mod:`gpunn.train`).

All weights and biases live in one flat buffer ``params`` (each W and b is a view into it) and
their gradients in another, ``grads``, so that an optimizer update is one operation.
"""

from __future__ import annotations

import itertools
import math
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy

from . import validation
from .backend import HIDDEN_ACTIVATIONS, LOSSES, OUTPUT_ACTIVATIONS, Array, Ops, get_backend
from .backend.cuda import array_module
from .errors import InputError, InputTypeError, NumericalError

if TYPE_CHECKING:
    from os import PathLike

    from .io import Checkpoint
    from .optim import Optimizer
    from .train import History

INITS = ("normal", "glorot", "he")
PREDICT_CHUNK = 4096  # rows per forward pass in predict/evaluate/loss: bounds device memory
MAX_WORKSPACES = 3  # batch sizes whose buffers a network keeps (training, evaluation, ...)
_OVERFLOW_REMEDY = "Scale the inputs (or the weights) down, or use dtype='float64'"
_serials = itertools.count()


def quiet_floating_point() -> numpy.errstate:
    """NumPy's overflow and invalid-value warnings off: where results may overflow, gpunn
    checks them and says so once, in its own words."""
    return numpy.errstate(over="ignore", invalid="ignore", divide="ignore")


@dataclass
class Workspace:
    """The buffers of one training step for batch size ``rows``, allocated once and reused.

    ``A[l]`` holds a^(l+1) (hidden layers compute z in place and overwrite it with σ(z));
    ``Z_out`` keeps z^(L) for the cost; ``delta[l]`` holds δ^(l+1); ``scratch[l]`` is room for
    σ'(z); ``X`` and ``Y`` receive a gathered (shuffled) batch.
    """

    rows: int
    A: list[Array]
    Z_out: Array
    delta: list[Array]
    scratch: list[Array]
    X: Array
    Y: Array
    _views: dict[int, Workspace] = field(default_factory=dict, repr=False)
    serial: int = field(default_factory=lambda: next(_serials))  # never reused: a step's key

    @staticmethod
    def nbytes(sizes: Sequence[int], rows: int, dtype: Any) -> int:
        """The bytes :meth:`allocate` takes: A, δ and scratch per layer, z^(L), X and Y."""
        widths = sizes[1:]
        elements = rows * (3 * sum(widths) + 2 * widths[-1] + sizes[0])
        return elements * numpy.dtype(dtype).itemsize

    @classmethod
    def allocate(cls, ops: Ops, sizes: Sequence[int], rows: int, dtype: Any) -> Workspace:
        widths = sizes[1:]
        return cls(
            rows=rows,
            A=[ops.empty((rows, n), dtype) for n in widths],
            Z_out=ops.empty((rows, widths[-1]), dtype),
            delta=[ops.empty((rows, n), dtype) for n in widths],
            scratch=[ops.empty((rows, n), dtype) for n in widths],
            X=ops.empty((rows, sizes[0]), dtype),
            Y=ops.empty((rows, widths[-1]), dtype),
        )

    def first_rows(self, m: int) -> Workspace:
        """The same buffers cut to their first m rows (contiguous views), for a smaller batch."""
        if m == self.rows:
            return self
        view = self._views.get(m)
        if view is None:
            view = Workspace(
                rows=m,
                A=[a[:m] for a in self.A],
                Z_out=self.Z_out[:m],
                delta=[d[:m] for d in self.delta],
                scratch=[s[:m] for s in self.scratch],
                X=self.X[:m],
                Y=self.Y[:m],
            )
            self._views[m] = view
        return view


class Network:
    """A feedforward network a^(l) = σ(W^(l) a^(l-1) + b^(l)) with its cost and gradients.

    Parameters
    ----------
    sizes: layer sizes, input first, e.g. ``[784, 30, 10]``.
    activation: σ of the hidden layers: sigmoid (the article's), relu, tanh or identity.
    output: σ of the output layer: sigmoid, softmax or identity.
    loss: ``"mse"``, C = (1/n) Σ ||a − y||² (the article's), or ``"cross_entropy"`` (with
        softmax: −(1/n) Σ y·log a; with sigmoid: the binary cross-entropy of each unit).
    init: ``"normal"``, the article's small random weights N(0, 1/n_in) and zero biases;
        ``"glorot"`` (uniform, for sigmoid/tanh) or ``"he"`` (normal, for relu).
    backend: ``"numpy"``, ``"cupy"`` or ``"auto"`` (see :func:`gpunn.get_backend`).
    dtype: ``"float32"`` or ``"float64"``.
    seed: the same seed gives the same weights on every backend.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        activation: str = "sigmoid",
        output: str = "sigmoid",
        loss: str = "mse",
        init: str = "normal",
        backend: str | Ops = "auto",
        dtype: str = "float32",
        seed: int = 0,
    ) -> None:
        self.sizes = validation.check_sizes(sizes)
        self.activation = validation.check_choice("activation", activation, HIDDEN_ACTIVATIONS)
        self.output = validation.check_choice("output", output, OUTPUT_ACTIVATIONS)
        self.loss_name = validation.check_choice("loss", loss, LOSSES)
        if self.loss_name == "cross_entropy" and self.output == "identity":
            raise InputError(
                "loss='cross_entropy' needs output='softmax' (classes) or 'sigmoid' "
                "(independent binary units); with output='identity' use loss='mse'"
            )
        if self.output == "softmax" and self.sizes[-1] == 1:
            raise InputError(
                "output='softmax' with a single output unit always outputs 1; use "
                "output='sigmoid' for one binary output, or give the output layer one unit "
                "per class"
            )
        self.init = validation.check_choice("init", init, INITS)
        self.dtype = validation.check_dtype(dtype)
        self.seed = validation.check_int("seed", seed, minimum=0)
        self.backend: Ops = get_backend(backend)

        shapes = [(n_out, n_in) for n_in, n_out in itertools.pairwise(self.sizes)]
        self.n_params = sum(n_out * n_in + n_out for n_out, n_in in shapes)
        nbytes = 2 * self.n_params * numpy.dtype(self.dtype).itemsize
        _check_fits_in_memory(self.sizes, self.n_params, self.dtype, nbytes)
        with self.backend.memory_guard("allocating the weights and gradients", None, nbytes):
            self.params = self.backend.zeros(self.n_params, self.dtype)
            self.grads = self.backend.zeros(self.n_params, self.dtype)
        self.weights, self.biases = _layer_views(self.params, shapes)
        self.weight_grads, self.bias_grads = _layer_views(self.grads, shapes)
        self._workspaces: dict[int, Workspace] = {}
        self.optimizer: Optimizer | None = None  # the last fit's, with its state, for checkpoints
        self.checkpoint: Checkpoint | None = None  # what gpunn.load read besides the weights
        self.set_params(initial_params(self.sizes, self.init, self.seed))

    # ------------------------------------------------------------------ parameters
    @property
    def n_layers(self) -> int:
        """L: the number of layers with weights (hidden layers and the output layer)."""
        return len(self.sizes) - 1

    def get_params(self) -> list[tuple[numpy.ndarray, numpy.ndarray]]:
        """Host NumPy copies [(W, b), ...], W of shape (n_out, n_in)."""
        host = self.backend.to_host(self.params)
        W, b = _layer_views(host, [w.shape for w in self.weights])
        return list(zip(W, b, strict=True))

    def set_params(self, params: Sequence[tuple[Any, Any]]) -> None:
        """Copy [(W, b), ...] (host or device arrays) into the network's parameters."""
        shapes = [(W.shape, b.shape) for W, b in zip(self.weights, self.biases, strict=True)]
        for l, (W, b) in enumerate(validation.check_params(params, shapes, self.dtype)):
            self.weights[l][...] = self.backend.asarray(W, dtype=self.dtype)
            self.biases[l][...] = self.backend.asarray(b, dtype=self.dtype)

    # ------------------------------------------------------------------ forward and backward
    def workspace(self, rows: int) -> Workspace:
        """Buffers for a batch of ``rows`` samples: allocated on first use, then reused.

        The smallest kept workspace of at least ``rows`` rows serves (a smaller batch uses
        views of its first rows), so a training batch size and an evaluation chunk each keep
        their own buffers and a recorded training step keeps pointing at live memory.
        """
        exact = self._workspaces.get(rows)
        if exact is not None:
            return exact
        fitting = [size for size in self._workspaces if size >= rows]
        if fitting:
            return self._workspaces[min(fitting)].first_rows(rows)
        if len(self._workspaces) >= MAX_WORKSPACES:
            self._workspaces.clear()
            self.backend.forget_steps()
        nbytes = Workspace.nbytes(self.sizes, rows, self.dtype)
        with self.backend.memory_guard("allocating the training buffers", rows, nbytes):
            space = Workspace.allocate(self.backend, self.sizes, rows, self.dtype)
        self._workspaces[rows] = space
        return space

    def feedforward(self, X: Array, ws: Workspace) -> Array:
        """a^(l) = σ(W^(l) a^(l-1) + b^(l)) for l = 1..L; returns a^(L) (in ``ws``)."""
        ops = self.backend
        A = X
        last = self.n_layers - 1
        for l, (W, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            if l < last:
                A = ops.layer_forward(A, W, b, self.activation, out=ws.A[l])
            else:
                A = ops.layer_forward(A, W, b, self.output, out=ws.A[l], Z=ws.Z_out)
        return A

    def add_cost(self, Y: Array, ws: Workspace, total: Array) -> Array:
        """total += Σ over the batch of each sample's cost (a device scalar); call before
        :meth:`backprop`, which may overwrite z^(L)."""
        return self.backend.cost_accumulate(
            self.output, self.loss_name, ws.Z_out, ws.A[-1], Y, total
        )

    def backprop(self, X: Array, Y: Array, ws: Workspace, scale: float) -> None:
        """Fill ``grads`` with ∂C/∂W and ∂C/∂b for the batch, after :meth:`feedforward`.

        ``scale`` is 1/n for a cost averaged over n samples. δ^(L) comes from the output
        layer's activation and cost; each layer then yields its gradients and δ^(l-1).
        """
        ops = self.backend
        L = self.n_layers
        delta = ops.output_delta(
            self.output, self.loss_name, ws.Z_out, ws.A[L - 1], Y, scale, out=ws.delta[L - 1]
        )
        for l in range(L - 1, -1, -1):
            A_prev = X if l == 0 else ws.A[l - 1]
            ops.affine_backward_weights(delta, A_prev, self.weight_grads[l], self.bias_grads[l])
            if l > 0:
                delta = ops.affine_backward_input(delta, self.weights[l], out=ws.delta[l - 1])
                ops.activation_backward(self.activation, A_prev, delta, scratch=ws.scratch[l - 1])

    # ------------------------------------------------------------------ data on the device
    def device_inputs(self, X: Any, name: str = "X") -> Array:
        """X checked and on this network's device, in its dtype (no copy if it already is)."""
        X = validation.check_features(X, self.sizes[0], name, dtype=self.dtype)
        return self._on_device(X, name, self.dtype)

    def device_targets(self, Y: Any, n_samples: int, name: str = "Y") -> Array:
        """Targets on the device as rows (n, n_out): integer labels are one-hot encoded."""
        Y, is_labels = validation.check_targets(
            Y, n_samples, self.sizes[-1], name, dtype=self.dtype, output=self.output,
            loss=self.loss_name,
        )
        Y = self._on_device(Y, name)
        if not is_labels:
            return self.backend.asarray(Y, dtype=self.dtype)
        if self.sizes[-1] == 1:
            return Y.reshape(-1, 1).astype(self.dtype)
        return self.backend.one_hot(Y, self.sizes[-1], self.dtype)

    def _on_device(self, value: Any, name: str, dtype: Any = None) -> Array:
        """``value`` on this network's device (no copy if it is there already, in ``dtype``);
        a GPU array for a network on the CPU is refused, not copied behind the user's back."""
        module = array_module(value)
        if module not in (None, numpy) and not self.backend.is_device_array(value):
            raise InputTypeError(
                f"{name} is a GPU (CuPy) array but this network runs on "
                f"{self.backend.name}: pass a NumPy copy of it (its .get()), or create the "
                "network with backend='cupy'"
            )
        return self.backend.asarray(value, dtype=dtype)

    def _chunks(self, X: Array) -> Iterator[tuple[slice, Workspace, Array]]:
        """(rows, workspace, a^(L)) for X in chunks of at most PREDICT_CHUNK rows."""
        n = X.shape[0]
        for start in range(0, n, PREDICT_CHUNK):
            rows = slice(start, min(start + PREDICT_CHUNK, n))
            ws = self.workspace(rows.stop - rows.start)
            yield rows, ws, self.feedforward(X[rows], ws)

    # ------------------------------------------------------------------ public API
    def predict(self, X: Any) -> numpy.ndarray:
        """The network's outputs a^(L) for each row of X, as a NumPy array (n, n_out).

        Outputs that overflow the network's dtype come back as they are (infinite or NaN),
        with a RuntimeWarning that says so.
        """
        Xd = self.device_inputs(X)
        out = self.backend.empty((Xd.shape[0], self.sizes[-1]), self.dtype)
        with quiet_floating_point():
            for rows, _, A in self._chunks(Xd):
                out[rows] = A
        host = self.backend.to_host(out)
        overflowed = int(numpy.count_nonzero(~numpy.isfinite(host).all(axis=1)))
        if overflowed:
            warnings.warn(
                f"gpunn: the network's outputs for {overflowed} of the {host.shape[0]} rows of "
                f"X are NaN or infinite: they overflow {self.dtype.name}. {_OVERFLOW_REMEDY}",
                RuntimeWarning,
                stacklevel=2,
            )
        return host

    def loss(self, X: Any, Y: Any) -> float:
        """The cost C on (X, Y), averaged over the samples."""
        return self.evaluate(X, Y)["loss"]

    def evaluate(self, X: Any, Y: Any) -> dict[str, float]:
        """``{"loss": C, "accuracy": fraction of rows whose largest output is the target's}``.

        Raises :class:`~gpunn.errors.NumericalError` when the cost overflows the network's
        dtype (it would be NaN or infinite).
        """
        Xd = self.device_inputs(X)
        Yd = self.device_targets(Y, Xd.shape[0])
        with quiet_floating_point():
            metrics = self.evaluate_device(Xd, Yd)
        if not math.isfinite(metrics["loss"]):
            raise NumericalError(
                f"the network's cost on these {Xd.shape[0]} samples is {metrics['loss']}: its "
                f"outputs or the cost overflow {self.dtype.name}. {_OVERFLOW_REMEDY}"
            )
        return metrics

    def evaluate_device(self, Xd: Array, Yd: Array) -> dict[str, float]:
        """:meth:`evaluate` for data already checked and on the device; one read-back."""
        cost, correct = self.backend.to_host(self.evaluation_totals(Xd, Yd)).tolist()
        n = Xd.shape[0]
        return {"loss": cost / n, "accuracy": correct / n}

    def evaluation_totals(self, Xd: Array, Yd: Array) -> Array:
        """[Σ cost, number of rows classified right] over (Xd, Yd), on the device.

        With one output unit, a row counts as right when a ≥ 0.5 matches y ≥ 0.5.
        """
        ops = self.backend
        cost = ops.zeros((), self.dtype)
        correct = ops.zeros((), "int64")
        for rows, ws, A in self._chunks(Xd):
            self.add_cost(Yd[rows], ws, cost)
            correct += ops.count_correct(A, Yd[rows])
        return ops.pack_scalars(cost, correct)

    def gradients(self, X: Any, Y: Any) -> list[tuple[numpy.ndarray, numpy.ndarray]]:
        """Host copies [(∂C/∂W, ∂C/∂b), ...] of :meth:`loss` on (X, Y): one batch of all rows.

        Raises :class:`~gpunn.errors.NumericalError` when a gradient overflows the network's
        dtype (it would be NaN or infinite).
        """
        Xd = self.device_inputs(X)
        Yd = self.device_targets(Y, Xd.shape[0])
        ws = self.workspace(Xd.shape[0])
        with quiet_floating_point():
            self.feedforward(Xd, ws)
            self.backprop(Xd, Yd, ws, scale=1.0 / Xd.shape[0])
        host = self.backend.to_host(self.grads)
        if not numpy.isfinite(host).all():
            raise NumericalError(
                f"the gradients of the network's cost on these {Xd.shape[0]} samples are NaN "
                f"or infinite: its outputs, cost or gradients overflow {self.dtype.name}. "
                f"{_OVERFLOW_REMEDY}"
            )
        dW, db = _layer_views(host, [w.shape for w in self.weights])
        return list(zip(dW, db, strict=True))

    def fit(self, X: Any, Y: Any, **options: Any) -> History:
        """Train by mini-batch SGD; see :func:`gpunn.train.fit` for the options."""
        from .train import fit

        return fit(self, X, Y, **options)

    def save(self, path: str | PathLike[str], **extra: Any) -> None:
        """Write the network to a ``.npz`` model file, atomically; see :mod:`gpunn.io`."""
        from .io import save_network

        save_network(self, path, **extra)

    def config(self) -> dict[str, Any]:
        """The constructor's arguments (without backend), as stored in model files."""
        return {
            "sizes": list(self.sizes),
            "activation": self.activation,
            "output": self.output,
            "loss": self.loss_name,
            "init": self.init,
            "dtype": self.dtype.name,
            "seed": self.seed,
        }

    def __repr__(self) -> str:
        arch = "-".join(map(str, self.sizes))
        return (
            f"Network({arch}, activation={self.activation!r}, output={self.output!r}, "
            f"loss={self.loss_name!r}, backend={self.backend.name!r}, dtype={self.dtype.name!r})"
        )


def _layer_views(flat: Array, shapes: Sequence[tuple[int, int]]) -> tuple[list[Array], list[Array]]:
    """Cut a flat buffer into per-layer views W (n_out, n_in) and b (n_out,), in layer order."""
    weights, biases = [], []
    offset = 0
    for n_out, n_in in shapes:
        weights.append(flat[offset : offset + n_out * n_in].reshape(n_out, n_in))
        offset += n_out * n_in
        biases.append(flat[offset : offset + n_out])
        offset += n_out
    return weights, biases


def _check_fits_in_memory(
    sizes: Sequence[int], n_params: int, dtype: numpy.dtype, nbytes: int
) -> None:
    """Refuse, before allocating anything, a network whose weights and gradients (``nbytes``)
    alone exceed this machine's memory: its initial weights are drawn on the host whatever
    the backend, in float64."""
    memory = _host_memory_bytes()
    if nbytes > memory:
        raise InputError(
            f"sizes {list(sizes)} make a network of {n_params:,} parameters, whose weights and "
            f"gradients take {_gib(nbytes)} in {dtype.name}, more than this machine's "
            f"{_gib(memory)} of memory; use smaller layers"
        )


def _host_memory_bytes() -> int:
    """The machine's physical memory; where the system does not say, the largest size an
    array may have."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return sys.maxsize


def _gib(nbytes: int) -> str:
    return f"{nbytes / 2**30:,.1f} GiB"


def initial_params(
    sizes: Sequence[int], init: str, seed: int
) -> list[tuple[numpy.ndarray, numpy.ndarray]]:
    """Initial (W, b) per layer, drawn on the host so that every backend starts the same.

    normal: W ~ N(0, 1/n_in), the article's small random weights; glorot: W ~ U(±√(6/(n_in+n_out)));
    he: W ~ N(0, 2/n_in). Biases start at zero.
    """
    rng = numpy.random.default_rng(seed)
    params = []
    for n_in, n_out in itertools.pairwise(sizes):
        if init == "glorot":
            limit = math.sqrt(6.0 / (n_in + n_out))
            W = rng.uniform(-limit, limit, size=(n_out, n_in))
        else:
            std = math.sqrt((2.0 if init == "he" else 1.0) / n_in)
            W = rng.normal(0.0, std, size=(n_out, n_in))
        params.append((W, numpy.zeros(n_out)))
    return params
