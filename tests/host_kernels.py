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

_CXX_TYPES = K._CXX_TYPES  # parameter types as C++ types: the same as for nvcc


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


def _row_launcher(name: str) -> str:
    """``extern "C" void name_launch(grid, threads, ...)``: blocks in turn, threads as threads."""
    first = "T*" if name == "gpunn_bias_softmax" else "const T*"
    return (
        f'extern "C" void {name}_launch(unsigned int grid, unsigned int threads, {first} z, '
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
    cols, lowest as in :func:`gpunn.backend.kernels.sample_arguments`)."""
    z, other, out, rows, cols, lowest = args
    ctype = ctypes.c_float if numpy.dtype(dtype) == numpy.float32 else ctypes.c_double
    launch = getattr(library(dtype), f"{name}_launch")
    launch(ctypes.c_uint(grid), ctypes.c_uint(threads), _pointer(z), _pointer(other),
           _pointer(out), ctypes.c_longlong(rows), ctypes.c_longlong(cols), ctype(lowest))
