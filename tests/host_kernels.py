"""The CUDA code of gpunn's fused kernels, compiled for the CPU and run there.

The kernels in :mod:`gpunn.backend.kernels` are CUDA C: an elementwise body over an index
``i``, a reduction's map/reduce/post-map expressions, and two row kernels written with blocks,
threads, shared memory and ``__syncthreads``. This module turns the very same text into a C++
shared library (``g++``) and calls it through ctypes, so that a machine without a GPU checks
what the code computes, not only that ``nvcc`` accepts it:

* elementwise kernels: a loop over the broadcast index space, each non-``raw`` argument bound
  at its broadcast position (as CuPy binds it), ``raw`` arguments as plain pointers;
* reductions: the same binding, folded with ``reduce_expr`` from ``identity``, then
  ``post_map_expr`` once;
* row kernels: each block's threads as real threads, ``__syncthreads`` a barrier, the dynamic
  shared memory one buffer per block (blocks run one after another).

The device math differs from the C++ library's only in rounding (CUDA's ``expf`` and the like
are within a few ulp), which the float tolerances of the tests absorb.

It also holds what the other kernel tests share: :func:`standalone_source`, the same text as
one CUDA translation unit for ``nvcc``; :func:`sample_arguments`, inputs for every kernel in
its calling convention; and :data:`ROW_REFERENCES`, the row kernels' NumPy references.
"""

from __future__ import annotations

import ctypes
import functools
import math
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy

from gpunn.backend import kernels as K

CXX = shutil.which("g++") or shutil.which("c++")

_PRELUDE = r"""
#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstddef>
#include <thread>
#include <vector>
using std::exp; using std::log; using std::log1p; using std::tanh; using std::sqrt;
using std::fabs; using std::pow;
#define __global__
#define __device__
#define __shared__
struct gpunn_dim { unsigned int x; };
thread_local gpunn_dim threadIdx, blockIdx;
gpunn_dim blockDim, gridDim;
std::barrier<>* gpunn_block_barrier;
#define __syncthreads() gpunn_block_barrier->arrive_and_wait()
alignas(16) unsigned char gpunn_smem[1 << 16];
"""

#: kernel parameter types as C++ types (for g++ here and for nvcc alike)
_CXX_TYPES = {
    "T": "T",
    "I": "long long",
    "int64": "long long",
    "int32": "int",
    "float64": "double",
    "float32": "float",
    "bool": "bool",
}


def _parameters(params: list[tuple[bool, str, str]], n_in: int) -> tuple[str, str, str]:
    """The C parameter list, and the bindings of the inputs and of the outputs at index ``i``:
    a non-``raw`` argument comes as a pointer and, per i, the index of its broadcast element;
    a ``raw`` one as a plain pointer."""
    args, inputs, outputs = [], [], []
    for k, (raw, type_, var) in enumerate(params):
        ctype = _CXX_TYPES.get(type_, type_)
        if raw:
            args.append(f"{ctype}* {var}")
            continue
        args.append(f"{ctype}* {var}_ptr, const long long* {var}_at")
        if k < n_in:
            inputs.append(f"const {ctype} {var} = {var}_ptr[{var}_at[i]];")
        else:
            outputs.append(f"{ctype}& {var} = {var}_ptr[{var}_at[i]];")
    return ", ".join(args), " ".join(inputs), " ".join(outputs)


def _elementwise(spec: K.Elementwise) -> str:
    """``extern "C" void gpunn_<name>(...)``: the body in a loop over i."""
    params = K._split_params(spec.in_params) + K._split_params(spec.out_params)
    args, inputs, outputs = _parameters(params, spec.n_in)
    return (
        f'extern "C" void gpunn_{spec.name}({args}, long long n) {{\n'
        f"  for (long long i = 0; i < n; ++i) {{ {inputs} {outputs} {spec.body} }}\n}}\n"
    )


def _reduction(spec: K.Reduction) -> str:
    """A reduction: acc = identity; acc = reduce(acc, map(i)) over i; then post_map(acc) into
    the output's one element."""
    params = K._split_params(spec.in_params) + K._split_params(spec.out_params)
    args, inputs, outputs = _parameters(params, spec.n_in)
    return (
        f'extern "C" void gpunn_{spec.name}({args}, long long n) {{\n'
        f"  T acc = (T)({spec.identity});\n"
        f"  for (long long i = 0; i < n; ++i) {{ {inputs} T a = acc; "
        f"T b = ({spec.map_expr}); a = ({spec.reduce_expr}); acc = a; }}\n"
        f"  {{ long long i = 0; T a = acc; {outputs} {spec.post_map_expr}; }}\n}}\n"
    )


def _z_type(name: str) -> str:
    """A row kernel's first argument: written (the bias is added into z) or only read."""
    return "T*" if name == "gpunn_bias_softmax" else "const T*"


def _row_launcher(name: str) -> str:
    """``extern "C" void name_launch(grid, threads, ...)``: blocks in turn, threads as threads."""
    return (
        f'extern "C" void {name}_launch(unsigned int grid, unsigned int threads, '
        f"{_z_type(name)} z, "
        "const T* other, T* out, long long rows, long long cols, T lowest) {\n"
        "  gridDim.x = grid; blockDim.x = threads;\n"
        "  for (unsigned int block = 0; block < grid; ++block) {\n"
        "    std::barrier<> barrier(threads); gpunn_block_barrier = &barrier;\n"
        "    std::vector<std::thread> team;\n"
        "    for (unsigned int t = 0; t < threads; ++t) team.emplace_back([=] {\n"
        "      threadIdx.x = t; blockIdx.x = block;\n"
        f"      {name}<T>(z, other, out, rows, cols, lowest); }});\n"
        "    for (auto& thread : team) thread.join();\n  }\n}\n"
    )


def source(dtype: Any) -> str:
    """The C++ translation unit for T = float or double."""
    parts = [_PRELUDE, f"typedef {K.ROW_KERNEL_TYPES[numpy.dtype(dtype)]} T;",
             K.ROW_KERNELS_SOURCE]
    parts.extend(_elementwise(spec) for spec in K.ELEMENTWISE.values())
    parts.extend(_reduction(spec) for spec in K.REDUCTIONS.values())
    parts.extend(_row_launcher(name) for name in K.ROW_KERNEL_NAMES)
    return "\n".join(parts)


_FOLDERS: list[tempfile.TemporaryDirectory] = []  # removed when the interpreter exits


def _folder() -> Path:
    _FOLDERS.append(tempfile.TemporaryDirectory(prefix="gpunn-host-kernels-"))
    return Path(_FOLDERS[-1].name)


def _compile(code: str, folder: Path) -> subprocess.CompletedProcess:
    (folder / "kernels.cpp").write_text(code)
    command = [CXX or "g++", "-std=c++20", "-O1", "-shared", "-fPIC", "-pthread",
               "-o", str(folder / "kernels.so"), str(folder / "kernels.cpp")]
    return subprocess.run(command, capture_output=True, text=True)


@functools.cache
def unavailable_reason() -> str | None:
    """None when a C++20 compiler with threads and barriers is here; else why not."""
    if CXX is None:
        return "no C++ compiler (g++) to build the CUDA code for the CPU"
    probe = _PRELUDE + 'extern "C" void probe() { std::barrier<> b(1); b.arrive_and_wait(); }'
    done = _compile(probe, _folder())
    if done.returncode != 0:
        return f"{CXX} cannot build C++20 with <barrier> and threads: {done.stderr[-300:]}"
    return None


@functools.cache
def library(dtype: str) -> ctypes.CDLL:
    """The kernels for ``dtype``, compiled once per test session."""
    folder = _folder()
    done = _compile(source(dtype), folder)
    if done.returncode != 0:
        raise RuntimeError(f"the kernels did not compile for the CPU:\n{done.stderr}")
    return ctypes.CDLL(str(folder / "kernels.so"))


def _pointer(array: numpy.ndarray) -> ctypes.c_void_p:
    return ctypes.c_void_p(array.ctypes.data)


def _typed(value: Any, type_: str, dtype: str, name: str, kernel: str) -> numpy.ndarray:
    """``value`` as the C type the compiled parameter has: an array must have it already
    (as CuPy requires), a scalar is converted to it."""
    ctype = _CXX_TYPES.get(type_, type_)
    want = numpy.dtype({"T": dtype, "long long": "int64", "double": "float64",
                        "float": "float32", "int": "int32", "bool": "bool"}[ctype])
    if isinstance(value, numpy.ndarray):
        if value.dtype != want:
            raise TypeError(f"{kernel}: {name!r} is {value.dtype}, the compiled kernel reads "
                            f"{want}")
        return value
    return numpy.asarray(value, dtype=want)


def run(spec: K.Elementwise | K.Reduction, args: list, dtype: str) -> None:
    """Call the compiled kernel as CuPy would: ``args`` are host arrays and NumPy scalars in
    the kernel's calling convention; outputs (contiguous arrays) are written in place."""
    params = K._split_params(spec.in_params) + K._split_params(spec.out_params)
    arrays = [_typed(a, type_, dtype, var, spec.name) for (_, type_, var), a in
              zip(params, args, strict=True)]
    if not all(a.flags.c_contiguous for a in arrays):
        raise ValueError("the kernel's arrays must be contiguous")
    reduction = isinstance(spec, K.Reduction)
    mapped = params[: spec.n_in] if reduction else params  # what the index i runs over
    shape = numpy.broadcast_shapes(*(a.shape for (raw, _, _), a in zip(mapped, arrays,
                                                                       strict=False) if not raw))
    n = math.prod(shape)
    flat, keep = [], []
    for k, ((raw, _, _), array) in enumerate(zip(params, arrays, strict=True)):
        flat.append(_pointer(array))
        if raw:
            continue
        if reduction and k >= spec.n_in:  # a reduction's output: one element
            at = numpy.zeros(1, numpy.int64)
        else:
            at = numpy.broadcast_to(numpy.arange(array.size).reshape(array.shape), shape)
            at = numpy.ascontiguousarray(at, dtype=numpy.int64).ravel()
        keep.append(at)
        flat.append(_pointer(at))
    getattr(library(dtype), f"gpunn_{spec.name}")(*flat, ctypes.c_longlong(n))


def run_row(name: str, args: list, dtype: str, grid: int, threads: int) -> None:
    """Launch a row kernel on ``grid`` blocks of ``threads`` threads (z, other, out, rows,
    cols, lowest as in :func:`sample_arguments`)."""
    z, other, out, rows, cols, lowest = args
    ctype = ctypes.c_float if numpy.dtype(dtype) == numpy.float32 else ctypes.c_double
    launch = getattr(library(dtype), f"{name}_launch")
    launch(ctypes.c_uint(grid), ctypes.c_uint(threads), _pointer(z), _pointer(other),
           _pointer(out), ctypes.c_longlong(rows), ctypes.c_longlong(cols), ctype(lowest))


# ---------------------------------------------------------------- the same text for nvcc
def standalone_source(dtype: Any) -> str:
    """Every kernel's CUDA code as one self-contained translation unit, for ``nvcc``.

    CuPy wraps an elementwise body in a loop over ``i`` with inputs bound to values and
    outputs to references; this does the same with plain pointers, so that a CUDA compiler
    without a GPU (``nvcc --ptx``) can type-check each body for ``dtype`` (T = float or
    double), as the CPU test suite does when nvcc is installed.
    """
    ctype = K.ROW_KERNEL_TYPES[numpy.dtype(dtype)]
    parts = [f"typedef {ctype} T;", "#include <cstddef>", K.ROW_KERNELS_SOURCE]
    for spec in K.ELEMENTWISE.values():
        parts.append(standalone_elementwise(spec.name, spec.in_params, spec.out_params, spec.body))
    for spec in K.REDUCTIONS.values():
        body = f"T a = ({spec.map_expr}); T b = a; a = ({spec.reduce_expr}); {spec.post_map_expr};"
        parts.append(standalone_elementwise(spec.name, spec.in_params, spec.out_params, body))
    for name in K.ROW_KERNEL_NAMES:
        parts.append(f"template __global__ void {name}<T>({_z_type(name)}, const T*, T*, "
                     "long long, long long, T);")
    return "\n".join(parts) + "\n"


def standalone_elementwise(name: str, in_params: str, out_params: str, body: str) -> str:
    """One elementwise kernel as a CUDA ``__global__`` function: a grid-stride loop over i."""
    args, binds = [], []
    for is_out, params in ((False, in_params), (True, out_params)):
        for raw, type_, var in K._split_params(params):
            ctype = _CXX_TYPES.get(type_, type_)
            if raw:
                args.append(f"{ctype}* {var}")
            else:
                args.append(f"{ctype}* {var}_ptr")
                ref = "&" if is_out else ""
                const = "" if is_out else "const "
                binds.append(f"{const}{ctype}{ref} {var} = {var}_ptr[i];")
    return (
        f"__global__ void gpunn_{name}({', '.join(args)}, ptrdiff_t n) {{\n"
        "  for (ptrdiff_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n;"
        " i += blockDim.x * gridDim.x) {\n"
        f"    {' '.join(binds)}\n    {body}\n  }}\n}}"
    )


# ---------------------------------------------------------------- inputs of every kernel
def sample_arguments(name: str, dtype: Any, rows: int = 7, cols: int = 5, seed: int = 0) -> list:
    """Host arguments for kernel ``name`` in its calling convention (inputs, then outputs):
    random arrays of ``dtype`` and NumPy scalars, for comparing a kernel with its reference."""
    rng = numpy.random.default_rng(seed)
    dt = numpy.dtype(dtype)

    def arr(*shape: int, low: float = -3.0, high: float = 3.0) -> numpy.ndarray:
        return rng.uniform(low, high, size=shape).astype(dt)

    def scalar(x: float) -> Any:
        return dt.type(x)

    def probs() -> numpy.ndarray:
        p = rng.uniform(0.05, 1.0, size=(rows, cols))
        return (p / p.sum(axis=1, keepdims=True)).astype(dt)

    n = rows * cols
    if name.startswith("act_backward_"):
        act = name[len("act_backward_") :]
        a = numpy.empty((rows, cols), dt)
        K.activation_reference(act, arr(rows, cols), a)
        return [a, arr(rows, cols)]
    if name.startswith("act_"):
        return [arr(rows, cols), numpy.empty((rows, cols), dt)]
    if name.startswith("bias_act_keep_"):
        return [arr(cols), arr(rows, cols), numpy.empty((rows, cols), dt)]
    if name.startswith("bias_act_"):
        return [arr(rows, cols), arr(cols), numpy.empty((rows, cols), dt)]
    if name.startswith("mse_delta_") or name == "xent_delta":
        a = numpy.empty((rows, cols), dt)
        K.activation_reference("sigmoid", arr(rows, cols), a)
        return [a, probs(), scalar(2.0 / rows), numpy.empty((rows, cols), dt)]
    if name in ("mse_cost", "bce_cost"):
        acc = numpy.asarray(1.25, dtype=dt)
        return [arr(rows, cols), probs(), acc, acc]
    if name == "sgd_update":
        return [arr(n), scalar(0.3), scalar(0.01), arr(n)]
    if name in ("momentum_update", "nesterov_update"):
        return [arr(n), scalar(0.3), scalar(0.9), scalar(0.01), arr(n), arr(n)]
    if name == "adam_prepare":
        c = [numpy.zeros((), dt), numpy.zeros((), dt)]
        return [
            scalar(0.01),
            numpy.float64(0.9),
            numpy.float64(0.999),
            numpy.asarray(4, dtype=numpy.int64),
            *c,
        ]
    if name == "adam_update":
        return [
            arr(n),
            scalar(0.01),
            scalar(0.1),
            scalar(0.9),
            scalar(0.1),
            scalar(0.999),
            scalar(0.001),
            scalar(1e-8),
            scalar(0.05),
            scalar(3.0),
            arr(n),
            arr(n),
            arr(n, low=0.0, high=2.0),
        ]
    if name == "gather_rows":
        index = rng.integers(0, 3 * rows, size=(rows, 1))
        return [arr(3 * rows, cols), index, numpy.int64(cols), numpy.empty((rows, cols), dt)]
    if name == "gather_batch":
        order = rng.permutation(3 * rows)
        cursor = numpy.asarray(rows, dtype=numpy.int64)
        return [
            arr(3 * rows, cols),
            order,
            cursor,
            numpy.int64(rows // 2),
            numpy.int64(cols),
            numpy.empty((rows, cols), dt),
        ]
    if name == "advance_cursor":
        return [numpy.int64(rows), numpy.int64(3 * rows), numpy.asarray(2 * rows + 1, numpy.int64)]
    if name == "gpunn_bias_softmax":
        return [
            arr(rows, cols),
            arr(cols),
            numpy.empty((rows, cols), dt),
            rows,
            cols,
            dt.type(-numpy.inf),
        ]
    if name == "gpunn_softmax_xent_cost":
        return [
            arr(rows, cols),
            probs(),
            numpy.asarray(0.5, dtype=dt),
            rows,
            cols,
            dt.type(-numpy.inf),
        ]
    raise KeyError(f"no sample arguments for kernel {name!r}")


#: the NumPy reference of each row kernel, in the kernel's calling convention
ROW_REFERENCES = {
    "gpunn_bias_softmax": K.bias_softmax_reference,
    "gpunn_softmax_xent_cost": K.softmax_xent_cost_reference,
}
