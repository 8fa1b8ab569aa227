"""The fused GPU kernels, each defined once as data: its CUDA code and a NumPy reference.

Every kernel here is the fusion of several lines of the reference math in
:mod:`gpunn.backend.ops` into one pass over memory (one kernel launch):

==========================  =====================================================================
kernel                      what it computes (one sample per row)
==========================  =====================================================================
``act_<σ>``                 a = σ(z)                                  (out may be z itself)
``bias_act_<σ>``            a = σ(z + b)                              (hidden layer, in place)
``bias_act_keep_<σ>``       z ← z + b;  a = σ(z)                      (output layer keeps z)
``bias_softmax``            z ← z + b;  a = softmax(z) row by row     (one block per row)
``act_backward_<σ>``        δ ← δ ⊙ σ'(z), σ' written through a = σ(z)
``mse_delta_<σ>``           δ^(L) = (2/n)(a − y) ⊙ σ'(z)              (sigmoid, identity outputs)
``xent_delta``              δ^(L) = (a − y)/n                         (softmax or sigmoid + CE)
``mse_cost``                acc += Σ (a − y)²                         (no host sync)
``bce_cost``                acc += Σ softplus(z) − y z                (sigmoid + CE, from logits)
``softmax_xent_cost``       acc += −Σ y log softmax(z)                (from logits, one block)
``sgd_update``              θ ← θ − η (g + λθ)                        (the flat parameter buffer)
``momentum_update``         g' = g + λθ;  v ← μv + g';  θ ← θ − η v
``nesterov_update``         g' = g + λθ;  v ← μv + g';  θ ← θ − η (g' + μv)
``adam_prepare``            t ← t + 1;  c₁ = η/(1 − β₁ᵗ);  c₂ = 1/(1 − β₂ᵗ)   (one thread)
``adam_update``             θ ← θ(1 − ηλ);  m ← β₁m + (1−β₁)g;  v ← β₂v + (1−β₂)g²;
                            θ ← θ − c₁ m / (√(c₂ v) + ε)
``gather_rows``             out[r] = source[index[r]]                 (a shuffled batch)
``gather_batch``            out[r] = source[order[cursor + k + r]]    (cursor read on the device)
``advance_cursor``          cursor ← (cursor + rows) mod n            (one thread)
==========================  =====================================================================

Scalars (η, μ, λ, 2/n...) are typed kernel arguments ``T``: pass them either as NumPy scalars of
the parameter dtype (``dtype.type(x)``) or as 0-d device arrays of that dtype. Either way a
float32 network computes in float32. A NumPy scalar is frozen into a recorded CUDA graph; a 0-d
device array is read when the kernel runs, which is what a graph needs for a value that changes
between its replays: Adam's step count ``t`` lives on the device and :data:`adam_prepare`
increments it. (The learning rate changes between epochs, not replays: it is part of a
recorded step's key, so each value gets its own recording.)

Each :class:`Elementwise` / :class:`Reduction` spec carries ``reference``, a NumPy function with
the kernel's calling convention — inputs then outputs, outputs written in place — so that the
same call runs on host arrays. ``tests/test_kernels.py`` checks every reference against the
reference ``Ops`` methods, and runs every kernel's CUDA text compiled for the CPU
(``tests/host_kernels.py``: the row kernels' block threads as real threads) against its
reference; ``tests/test_gpu.py`` checks every CUDA kernel against its reference on a GPU.
The row-wise kernels (softmax, softmax cross-entropy) are a templated CUDA module,
:data:`ROW_KERNELS_SOURCE`, with references :func:`bias_softmax_reference` and
:func:`softmax_xent_cost_reference`.

Only :mod:`gpunn.backend.cuda` imports CuPy; the kernel objects are built (not compiled: CuPy
compiles on the first call) by :meth:`Elementwise.build` and friends, lazily.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy

from ..errors import BackendUnavailableError
from .cuda import cupy
from .ops import Ops

# ---------------------------------------------------------------------------- activations
# σ(t) as a CUDA expression of a T-typed variable ``t``, and σ'(z) written through a = σ(z).
ACTIVATION_CUDA = {
    "sigmoid": "(T)1 / ((T)1 + exp(-t))",
    "relu": "((t > (T)0) || (t != t)) ? t : (T)0",  # NaN propagates, as in numpy.maximum
    "tanh": "tanh(t)",
    "identity": "t",
}
DERIVATIVE_CUDA = {
    "sigmoid": "a * ((T)1 - a)",
    "relu": "(T)(a > (T)0)",
    "tanh": "(T)1 - a * a",
    "identity": "(T)1",
}
ELEMENTWISE_ACTIVATIONS = tuple(ACTIVATION_CUDA)


_HOST = Ops()  # the reference kernels on NumPy: what every fused kernel must compute


def activation_reference(name: str, z: numpy.ndarray, out: numpy.ndarray) -> numpy.ndarray:
    """out = σ(z) on host arrays (out may be z), by the reference kernels."""
    with numpy.errstate(over="ignore"):  # e^−z overflows to inf for very negative z: σ = 0
        return _HOST.activation_forward(name, z, out)


def derivative_reference(name: str, a: numpy.ndarray) -> numpy.ndarray:
    """σ'(z) from a = σ(z), as a new host array, by the reference kernels."""
    return _HOST.activation_backward(name, a, numpy.ones_like(a), numpy.empty_like(a))


# ---------------------------------------------------------------------------- kernel specs
@dataclass(frozen=True)
class Elementwise:
    """An elementwise kernel: ``cupy.ElementwiseKernel(in_params, out_params, body, name)``."""

    name: str
    in_params: str
    out_params: str
    body: str
    reference: Callable[..., Any] = field(compare=False)
    doc: str = ""

    @property
    def n_in(self) -> int:
        return len(_split_params(self.in_params))

    def build(self) -> Any:
        """The ``cupy.ElementwiseKernel`` (compiled by CuPy on its first call, then cached)."""
        return _build_elementwise(self)


@dataclass(frozen=True)
class Reduction:
    """A full reduction to a 0-d output: ``cupy.ReductionKernel`` with the given expressions.

    Every reduction here adds into a device accumulator: the accumulator is passed twice, as
    the last input (``raw T acc_in``) and as the output, and ``post_map`` adds the old value.
    CuPy reduces to one output element inside one thread block, so the read-then-write of the
    accumulator happens in a single thread.
    """

    name: str
    in_params: str
    out_params: str
    map_expr: str
    reduce_expr: str
    post_map_expr: str
    identity: str
    reference: Callable[..., Any] = field(compare=False)
    doc: str = ""

    @property
    def n_in(self) -> int:
        return len(_split_params(self.in_params))

    def build(self) -> Any:
        return _build_reduction(self)


@functools.cache
def _build_elementwise(spec: Elementwise) -> Any:
    _require_cupy()
    return cupy.ElementwiseKernel(spec.in_params, spec.out_params, spec.body, "gpunn_" + spec.name)


@functools.cache
def _build_reduction(spec: Reduction) -> Any:
    _require_cupy()
    return cupy.ReductionKernel(
        spec.in_params,
        spec.out_params,
        spec.map_expr,
        spec.reduce_expr,
        spec.post_map_expr,
        spec.identity,
        "gpunn_" + spec.name,
    )


def _require_cupy() -> None:
    if cupy is None:
        raise BackendUnavailableError("CuPy is not installed: the GPU kernels cannot be built")


def _split_params(params: str) -> list[tuple[bool, str, str]]:
    """'raw T a, T b' -> [(True, 'T', 'a'), (False, 'T', 'b')]."""
    out = []
    for part in params.split(","):
        words = part.split()
        if not words:
            continue
        raw = words[0] == "raw"
        if raw:
            words = words[1:]
        out.append((raw, words[0], words[1]))
    return out


# ---------------------------------------------------------------------------- forward
def _act_ref(name: str) -> Callable[..., Any]:
    def reference(z: numpy.ndarray, a: numpy.ndarray) -> None:
        activation_reference(name, z, a)

    return reference


def _bias_act_ref(name: str) -> Callable[..., Any]:
    def reference(z: numpy.ndarray, b: numpy.ndarray, a: numpy.ndarray) -> None:
        numpy.add(z, b, out=a)
        activation_reference(name, a, a)

    return reference


def _bias_act_keep_ref(name: str) -> Callable[..., Any]:
    def reference(b: numpy.ndarray, z: numpy.ndarray, a: numpy.ndarray) -> None:
        z += b
        activation_reference(name, z, a)

    return reference


def _act_backward_ref(name: str) -> Callable[..., Any]:
    def reference(a: numpy.ndarray, d: numpy.ndarray) -> None:
        d *= derivative_reference(name, a)

    return reference


def _mse_delta_ref(name: str) -> Callable[..., Any]:
    def reference(a: numpy.ndarray, y: numpy.ndarray, s2: Any, d: numpy.ndarray) -> None:
        numpy.subtract(a, y, out=d)
        d *= s2
        d *= derivative_reference(name, a)

    return reference


def _xent_delta_ref(a: numpy.ndarray, y: numpy.ndarray, s: Any, d: numpy.ndarray) -> None:
    numpy.subtract(a, y, out=d)
    d *= s


ACT = {
    name: Elementwise(
        f"act_{name}", "T z", "T a", f"T t = z; a = {expr};", _act_ref(name), "a = σ(z)"
    )
    for name, expr in ACTIVATION_CUDA.items()
}
BIAS_ACT = {
    name: Elementwise(
        f"bias_act_{name}",
        "T z, T b",
        "T a",
        f"T t = z + b; a = {expr};",
        _bias_act_ref(name),
        "a = σ(z + b), b broadcast over the rows; a may be z itself",
    )
    for name, expr in ACTIVATION_CUDA.items()
}
BIAS_ACT_KEEP = {
    name: Elementwise(
        f"bias_act_keep_{name}",
        "T b",
        "T z, T a",
        f"T t = z + b; z = t; a = {expr};",
        _bias_act_keep_ref(name),
        "z ← z + b; a = σ(z) (the output layer, whose z the cost needs)",
    )
    for name, expr in ACTIVATION_CUDA.items()
}

# ---------------------------------------------------------------------------- backward
ACT_BACKWARD = {
    name: Elementwise(
        f"act_backward_{name}",
        "T a",
        "T d",
        f"d *= {expr};",
        _act_backward_ref(name),
        "δ ← δ ⊙ σ'(z), σ' from a = σ(z)",
    )
    for name, expr in DERIVATIVE_CUDA.items()
    if name != "identity"
}
MSE_DELTA = {
    name: Elementwise(
        f"mse_delta_{name}",
        "T a, T y, T s2",
        "T d",
        f"d = (a - y) * s2; d *= {DERIVATIVE_CUDA[name]};",
        _mse_delta_ref(name),
        "δ^(L) = (2/n)(a − y) ⊙ σ'(z), s2 = 2/n",
    )
    for name in ("sigmoid", "identity")
}
XENT_DELTA = Elementwise(
    "xent_delta",
    "T a, T y, T s",
    "T d",
    "d = (a - y) * s;",
    _xent_delta_ref,
    "δ^(L) = (a − y)/n for softmax + cross-entropy (and sigmoid + binary CE), s = 1/n",
)


# ---------------------------------------------------------------------------- costs
def _mse_cost_ref(a: numpy.ndarray, y: numpy.ndarray, acc_in: Any, acc: numpy.ndarray) -> None:
    diff = a - y
    acc[...] = acc_in + numpy.vdot(diff, diff)


def _bce_cost_ref(z: numpy.ndarray, y: numpy.ndarray, acc_in: Any, acc: numpy.ndarray) -> None:
    acc[...] = acc_in + (numpy.logaddexp(0, z).sum() - numpy.vdot(y, z))


MSE_COST = Reduction(
    "mse_cost",
    "T x, T y, raw T acc_in",
    "T acc",
    "(x - y) * (x - y)",
    "a + b",
    "acc = a + acc_in[0]",
    "0",
    _mse_cost_ref,
    "acc += Σ_i ||a_i − y_i||²",
)
BCE_COST = Reduction(
    "bce_cost",
    "T z, T y, raw T acc_in",
    "T acc",
    # softplus(z) − y z, with softplus(z) = max(z, 0) + log(1 + e^−|z|): finite for every z
    "(z > (T)0 ? z : (T)0) + log1p(exp(-fabs(z))) - y * z",
    "a + b",
    "acc = a + acc_in[0]",
    "0",
    _bce_cost_ref,
    "acc += Σ −[y log σ(z) + (1 − y) log(1 − σ(z))], from the logits z",
)

# ---------------------------------------------------------------------------- row kernels
ROW_KERNELS_SOURCE = r"""
// gpunn row kernels: softmax forward and the softmax cross-entropy cost, one pass each.
// blockDim.x must be a power of two; dynamic shared memory: blockDim.x * sizeof(T).

template<typename T, bool IS_MAX>
__device__ T gpunn_block_reduce(T x, T* red) {
    red[threadIdx.x] = x;
    __syncthreads();
    for (unsigned int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) {
            T mine = red[threadIdx.x];
            T other = red[threadIdx.x + s];
            red[threadIdx.x] = IS_MAX ? (other > mine ? other : mine) : mine + other;
        }
        __syncthreads();
    }
    T result = red[0];
    __syncthreads();  // everyone has read red[0] before the buffer is used again
    return result;
}

// z <- z + b;  a = softmax(z) row by row.  One block per row (grid-stride over rows).
template<typename T>
__global__ void gpunn_bias_softmax(T* z, const T* b, T* a, long long rows, long long cols,
                                   T lowest) {
    extern __shared__ unsigned char gpunn_smem[];
    T* red = reinterpret_cast<T*>(gpunn_smem);
    for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
        T* zr = z + r * cols;
        T* ar = a + r * cols;
        T m = lowest;
        for (long long c = threadIdx.x; c < cols; c += blockDim.x) {
            T t = zr[c] + b[c];
            zr[c] = t;
            m = t > m ? t : m;
        }
        m = gpunn_block_reduce<T, true>(m, red);
        T s = 0;
        for (long long c = threadIdx.x; c < cols; c += blockDim.x) {
            T e = exp(zr[c] - m);
            ar[c] = e;
            s += e;
        }
        s = gpunn_block_reduce<T, false>(s, red);
        for (long long c = threadIdx.x; c < cols; c += blockDim.x) {
            ar[c] = ar[c] / s;
        }
    }
}

// acc += sum_i sum_k y_ik (logsumexp(z_i) - z_ik) = -sum y log softmax(z).  ONE block: each
// thread takes rows t, t + blockDim.x, ...; a fixed-order tree adds the threads' sums, so the
// result is deterministic (no atomics).
template<typename T>
__global__ void gpunn_softmax_xent_cost(const T* z, const T* y, T* acc, long long rows,
                                        long long cols, T lowest) {
    extern __shared__ unsigned char gpunn_smem[];
    T* red = reinterpret_cast<T*>(gpunn_smem);
    T total = 0;
    for (long long r = threadIdx.x; r < rows; r += blockDim.x) {
        const T* zr = z + r * cols;
        const T* yr = y + r * cols;
        T m = lowest;
        for (long long c = 0; c < cols; ++c) m = zr[c] > m ? zr[c] : m;
        T s = 0;
        for (long long c = 0; c < cols; ++c) s += exp(zr[c] - m);
        T lse = m + log(s);
        for (long long c = 0; c < cols; ++c) total += yr[c] * (lse - zr[c]);
    }
    total = gpunn_block_reduce<T, false>(total, red);
    if (threadIdx.x == 0) acc[0] += total;
}
"""
ROW_KERNEL_NAMES = ("gpunn_bias_softmax", "gpunn_softmax_xent_cost")
ROW_KERNEL_TYPES = {numpy.dtype(numpy.float32): "float", numpy.dtype(numpy.float64): "double"}


def row_kernel_expression(name: str, dtype: Any) -> str:
    """The template instance name, e.g. ``gpunn_bias_softmax<float>``."""
    return f"{name}<{ROW_KERNEL_TYPES[numpy.dtype(dtype)]}>"


@functools.cache
def row_module() -> Any:
    """The ``cupy.RawModule`` of the row kernels, both dtypes (compiled on first use)."""
    _require_cupy()
    expressions = tuple(
        row_kernel_expression(name, dtype)
        for name in ROW_KERNEL_NAMES
        for dtype in ROW_KERNEL_TYPES
    )
    return cupy.RawModule(
        code=ROW_KERNELS_SOURCE, options=("--std=c++14",), name_expressions=expressions
    )


def row_threads(cols: int, limit: int = 256) -> int:
    """Threads per block for a row of ``cols``: a power of two in [32, limit]."""
    threads = 32
    while threads < cols and threads < limit:
        threads *= 2
    return threads


def bias_softmax_reference(
    z: numpy.ndarray, b: numpy.ndarray, a: numpy.ndarray, rows: int, cols: int, lowest: Any
) -> None:
    """z ← z + b;  a = softmax(z) row by row (the host twin of ``gpunn_bias_softmax``)."""
    z += b
    numpy.subtract(z, z.max(axis=1, keepdims=True), out=a)
    numpy.exp(a, out=a)
    a /= a.sum(axis=1, keepdims=True)


def softmax_xent_cost_reference(
    z: numpy.ndarray, y: numpy.ndarray, acc: numpy.ndarray, rows: int, cols: int, lowest: Any
) -> None:
    """acc += −Σ y log softmax(z) (the host twin of ``gpunn_softmax_xent_cost``)."""
    m = z.max(axis=1, keepdims=True)
    lse = m + numpy.log(numpy.exp(z - m).sum(axis=1, keepdims=True))
    acc[...] = acc + numpy.vdot(y, lse - z)


# ---------------------------------------------------------------------------- optimizers
def _sgd_ref(g: numpy.ndarray, lr: Any, wd: Any, p: numpy.ndarray) -> None:
    p -= lr * (g + wd * p)


def _momentum_ref(nesterov: bool) -> Callable[..., Any]:
    def reference(
        g: numpy.ndarray, lr: Any, mu: Any, wd: Any, p: numpy.ndarray, v: numpy.ndarray
    ) -> None:
        gg = g + wd * p
        v *= mu
        v += gg
        p -= lr * (gg + mu * v if nesterov else v)

    return reference


def _adam_prepare_ref(
    lr: Any, b1: Any, b2: Any, t: numpy.ndarray, c1: numpy.ndarray, c2: numpy.ndarray
) -> None:
    t += 1
    step = float(t)
    c1[...] = float(lr) / (1.0 - float(b1) ** step)
    c2[...] = 1.0 / (1.0 - float(b2) ** step)


def _adam_ref(
    g: numpy.ndarray,
    lr: Any,
    wd: Any,
    b1: Any,
    ob1: Any,
    b2: Any,
    ob2: Any,
    eps: Any,
    c1: Any,
    c2: Any,
    p: numpy.ndarray,
    m: numpy.ndarray,
    v: numpy.ndarray,
) -> None:
    one = p.dtype.type(1)
    p *= one - lr * wd
    m *= b1
    m += ob1 * g
    v *= b2
    v += ob2 * g * g
    p -= c1 * (m / (numpy.sqrt(v * c2) + eps))


SGD_UPDATE = Elementwise(
    "sgd_update",
    "T g, T lr, T wd",
    "T p",
    "p -= lr * (g + wd * p);",
    _sgd_ref,
    "θ ← θ − η (g + λθ)",
)
MOMENTUM_UPDATE = Elementwise(
    "momentum_update",
    "T g, T lr, T mu, T wd",
    "T p, T v",
    "T gg = g + wd * p; v = mu * v + gg; p -= lr * v;",
    _momentum_ref(False),
    "g' = g + λθ;  v ← μv + g';  θ ← θ − ηv",
)
NESTEROV_UPDATE = Elementwise(
    "nesterov_update",
    "T g, T lr, T mu, T wd",
    "T p, T v",
    "T gg = g + wd * p; v = mu * v + gg; p -= lr * (gg + mu * v);",
    _momentum_ref(True),
    "g' = g + λθ;  v ← μv + g';  θ ← θ − η(g' + μv)",
)
ADAM_PREPARE = Elementwise(
    "adam_prepare",
    "T lr, float64 b1, float64 b2",
    "int64 t, T c1, T c2",
    "t += 1; double s = (double)t; "
    "c1 = (T)((double)lr / (1.0 - pow(b1, s))); c2 = (T)(1.0 / (1.0 - pow(b2, s)));",
    _adam_prepare_ref,
    "t ← t + 1;  c₁ = η/(1 − β₁ᵗ);  c₂ = 1/(1 − β₂ᵗ), on the device (run with size 1)",
)
ADAM_UPDATE = Elementwise(
    "adam_update",
    "T g, T lr, T wd, T b1, T ob1, T b2, T ob2, T eps, T c1, T c2",
    "T p, T m, T v",
    "p = p * ((T)1 - lr * wd); m = b1 * m + ob1 * g; v = b2 * v + ob2 * g * g; "
    "p -= c1 * (m / (sqrt(v * c2) + eps));",
    _adam_ref,
    "AdamW: θ ← θ(1 − ηλ);  m ← β₁m + (1−β₁)g;  v ← β₂v + (1−β₂)g²;  θ ← θ − c₁m/(√(c₂v) + ε)",
)


# ---------------------------------------------------------------------------- data
def _gather_rows_ref(
    src: numpy.ndarray, index: numpy.ndarray, cols: Any, out: numpy.ndarray
) -> None:
    cols = int(cols)
    numpy.take(src.reshape(-1, cols), index.reshape(-1), axis=0, out=out.reshape(-1, cols))


def _gather_batch_ref(
    src: numpy.ndarray, order: numpy.ndarray, cursor: numpy.ndarray, offset: Any, cols: Any,
    out: numpy.ndarray,
) -> None:
    rows = out.size // int(cols)
    start = int(cursor) + int(offset)
    index = order.reshape(-1)[start : start + rows]
    numpy.take(src.reshape(-1, int(cols)), index, axis=0, out=out.reshape(rows, int(cols)))


def _advance_cursor_ref(rows: Any, n: Any, cursor: numpy.ndarray) -> None:
    cursor[...] = (int(cursor) + int(rows)) % int(n)


GATHER_ROWS = Elementwise(
    "gather_rows",
    "raw T src, I index, int64 cols",
    "T out",
    "out = src[(ptrdiff_t)index * cols + i % cols];",
    _gather_rows_ref,
    "out[r] = src[index[r]]; pass index as a column (rows, 1) so that it broadcasts",
)
GATHER_BATCH = Elementwise(
    "gather_batch",
    "raw T src, raw I order, raw int64 cursor, int64 offset, int64 cols",
    "T out",
    "out = src[(ptrdiff_t)order[cursor[0] + offset + i / cols] * cols + i % cols];",
    _gather_batch_ref,
    "out[r] = src[order[cursor + k + r]]: the next batch (k: a rank's offset in it), its "
    "position read on the device",
)
ADVANCE_CURSOR = Elementwise(
    "advance_cursor",
    "int64 rows, int64 n",
    "int64 cursor",
    "cursor = (cursor + rows) % n;",
    _advance_cursor_ref,
    "cursor ← (cursor + rows) mod n (one thread: after a recorded step's gather, or for a "
    "rank with no rows in a batch)",
)

ELEMENTWISE: dict[str, Elementwise] = {
    spec.name: spec
    for spec in (
        *ACT.values(),
        *BIAS_ACT.values(),
        *BIAS_ACT_KEEP.values(),
        *ACT_BACKWARD.values(),
        *MSE_DELTA.values(),
        XENT_DELTA,
        SGD_UPDATE,
        MOMENTUM_UPDATE,
        NESTEROV_UPDATE,
        ADAM_PREPARE,
        ADAM_UPDATE,
        GATHER_ROWS,
        GATHER_BATCH,
        ADVANCE_CURSOR,
    )
}
REDUCTIONS: dict[str, Reduction] = {spec.name: spec for spec in (MSE_COST, BCE_COST)}
