"""Matrix products on the GPU through a cuBLAS handle of gpunn's own, so that a training step
with its products can be recorded as a CUDA graph.

CuPy refuses every cuBLAS call while a stream captures: ``cupy.matmul`` reaches cuBLAS through
CuPy's ``cublas.setStream``, which raises ``NotImplementedError('calling cuBLAS API during
stream capture is currently unsupported')`` (CuPy 13 and 14). cuBLAS itself can be captured
(PyTorch records its products this way), so the CuPy backend calls it directly: one handle per
device and thread with a workspace of its own, given to the handle outside any capture so
that cuBLAS allocates nothing while captured, and ``cublasGemmEx`` called through ctypes with
the arrays' device pointers. This module holds what does not need CuPy: the layout
arithmetic (:func:`gemm_plan`, tested on the CPU against a host model of cuBLAS's GEMM in
``tests/host_blas.py``) and the ctypes binding (:class:`Cublas`); :mod:`gpunn.backend.cuda`
finds the library CuPy loaded and makes the handle.

cuBLAS is column-major and gpunn's arrays are row-major (C order). A row-major matrix M of
shape (r, c) whose rows are contiguous (element strides (s, 1), s ≥ c) is, read column-major,
Mᵀ with leading dimension s; one whose columns are contiguous (strides (1, s), s ≥ r) is M
itself. So out = a @ b, (m, n) = (m, k) @ (k, n), is the column-major product
outᵀ = bᵀ aᵀ: cuBLAS's C = op(A) op(B) with A the memory of b, B the memory of a and C the
memory of out, each op being N or T by the operand's layout. Transposed views (``W.T``,
``delta.T``), the first rows of a buffer and column slices of a wider one all fit without a
copy; anything else is left to ``cupy.matmul``.
"""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass
from typing import Any

import numpy

CUBLAS_OP_N, CUBLAS_OP_T = 0, 1
CUDA_DATA_TYPES = {numpy.dtype(numpy.float32): 0, numpy.dtype(numpy.float64): 1}  # CUDA_R_32F/64F
CUBLAS_COMPUTE_32F = 68
CUBLAS_COMPUTE_32F_PEDANTIC = 69
CUBLAS_COMPUTE_32F_FAST_TF32 = 77
CUBLAS_COMPUTE_64F = 70
CUBLAS_COMPUTE_64F_PEDANTIC = 71
CUBLAS_GEMM_DEFAULT = -1
CUBLAS_STATUS_ALLOC_FAILED = 3
#: bytes of workspace a handle gets: what NVIDIA recommends for Hopper GPUs (4 MiB before)
WORKSPACE_BYTES = 32 * 2**20
_INT_MAX = 2**31 - 1


class CublasError(RuntimeError):
    """A cuBLAS call failed; ``status`` is its cublasStatus_t (3: out of memory)."""

    def __init__(self, call: str, status: int) -> None:
        super().__init__(f"{call} failed with cuBLAS status {status}")
        self.status = status


@dataclass(frozen=True)
class GemmPlan:
    """The arguments of one ``cublasGemmEx`` computing out = a @ b (see the module docstring):
    C (m × n, column-major, leading dimension ldc) = op_A(A) op_B(B) with A the memory of b,
    B the memory of a and C the memory of out."""

    op_a: int
    op_b: int
    m: int
    n: int
    k: int
    lda: int
    ldb: int
    ldc: int


def _column_major(shape: tuple[int, int], strides: tuple[int, int]) -> tuple[int, int] | None:
    """(op, leading dimension) under which cuBLAS reads the transpose of a row-major matrix of
    ``shape`` (r, c) and element ``strides``; None when neither its rows nor its columns are
    contiguous, or they overlap. cuBLAS wants a leading dimension of at least the rows of
    what it stores: c for op N, r for op T."""
    r, c = shape
    s0, s1 = strides
    if s1 == 1 or c == 1:  # rows contiguous: column-major, the memory is Mᵀ (c × r), op N
        ld = s0 if r > 1 else c
        if ld >= max(1, c):
            return CUBLAS_OP_N, ld
    if s0 == 1 or r == 1:  # columns contiguous: the memory is M (r × c), and Mᵀ is op T of it
        ld = s1 if c > 1 else r
        if ld >= max(1, r):
            return CUBLAS_OP_T, ld
    return None


def gemm_plan(a: Any, b: Any, out: Any) -> GemmPlan | None:
    """The cuBLAS call that writes a @ b into ``out`` in place, or None when one call cannot:
    not three 2-D arrays of one dtype cuBLAS takes here (float32, float64), shapes that do not
    chain, an empty product, sizes beyond int32, or a layout that fits no op (see
    :func:`_column_major`); ``out`` must have contiguous rows. Plans are kept by layout: a
    training step asks for the same few again and again."""
    return _plan(a.shape, a.strides, b.shape, b.strides, out.shape, out.strides, a.dtype,
                 b.dtype, out.dtype)


@functools.lru_cache(maxsize=1024)
def _plan(a_shape: tuple, a_strides: tuple, b_shape: tuple, b_strides: tuple,
          out_shape: tuple, out_strides: tuple, *dtypes: numpy.dtype) -> GemmPlan | None:
    """:func:`gemm_plan` from the arrays' shapes, byte strides and dtypes."""
    if not (len(a_shape) == len(b_shape) == len(out_shape) == 2):
        return None
    if len(set(dtypes)) != 1 or dtypes[0] not in CUDA_DATA_TYPES:
        return None
    (m, k), (k2, n) = a_shape, b_shape
    if k2 != k or out_shape != (m, n) or 0 in (m, n, k):
        return None
    itemsize = dtypes[0].itemsize
    if any(s < 0 or s % itemsize for s in (*a_strides, *b_strides, *out_strides)):
        return None
    ldc, out_col = (s // itemsize for s in out_strides)
    if not (out_col == 1 or n == 1):
        return None
    ldc = ldc if m > 1 else n
    first = _column_major((k, n), tuple(s // itemsize for s in b_strides))  # bᵀ, n × k
    second = _column_major((m, k), tuple(s // itemsize for s in a_strides))  # aᵀ, k × m
    if first is None or second is None or ldc < n:
        return None
    plan = GemmPlan(first[0], second[0], n, m, k, first[1], second[1], ldc)
    if max(plan.m, plan.n, plan.k, plan.lda, plan.ldb, plan.ldc) > _INT_MAX:
        return None
    return plan


class Cublas:
    """One cuBLAS handle on the current device, called through ctypes.

    ``library`` is libcublas (a ``ctypes.CDLL``); ``workspace`` is ``(pointer, bytes)`` of
    device memory the handle uses on every stream, owned by ``keep`` (kept alive with the
    handle: recorded steps hold its address). One workspace
    serves all streams because gpunn orders its streams (the backend's stream waits for the
    caller's before its work and the caller's for it after): two products of one handle never
    run at the same time. :meth:`gemm` binds the handle to a stream only when the stream
    changes, so a captured step, whose warm-up ran on the same stream, usually makes no
    binding call while captured (one would be harmless: it changes only the handle).
    """

    def __init__(self, library: Any, workspace: tuple[int, int], keep: Any = None) -> None:
        self.library = library
        self.workspace = workspace
        self.keep = keep
        _declare(library)
        handle = ctypes.c_void_p()
        _check("cublasCreate_v2", library.cublasCreate_v2(ctypes.byref(handle)))
        self.handle = handle
        self.stream: int | None = None
        self._scalars = {
            numpy.dtype(numpy.float32): (ctypes.c_float(1.0), ctypes.c_float(0.0)),
            numpy.dtype(numpy.float64): (ctypes.c_double(1.0), ctypes.c_double(0.0)),
        }

    def bind(self, stream_ptr: int) -> None:
        """Run the handle's work on the stream at ``stream_ptr``, with the workspace
        (cublasSetStream resets the workspace, so it is set after)."""
        if stream_ptr == self.stream:
            return
        _check("cublasSetStream_v2",
               self.library.cublasSetStream_v2(self.handle, ctypes.c_void_p(stream_ptr)))
        pointer, nbytes = self.workspace
        _check("cublasSetWorkspace_v2",
               self.library.cublasSetWorkspace_v2(self.handle, ctypes.c_void_p(pointer),
                                                  ctypes.c_size_t(nbytes)))
        self.stream = stream_ptr

    def gemm(self, plan: GemmPlan, a_ptr: int, b_ptr: int, out_ptr: int, dtype: Any,
             compute: int, stream_ptr: int) -> None:
        """out = a @ b by ``plan`` (from :func:`gemm_plan`), queued on the stream at
        ``stream_ptr``; ``compute`` is a cublasComputeType_t."""
        self.bind(stream_ptr)
        dtype = numpy.dtype(dtype)
        data_type = CUDA_DATA_TYPES[dtype]
        one, zero = self._scalars[dtype]
        status = self.library.cublasGemmEx(
            self.handle, plan.op_a, plan.op_b, plan.m, plan.n, plan.k, ctypes.byref(one),
            ctypes.c_void_p(b_ptr), data_type, plan.lda, ctypes.c_void_p(a_ptr), data_type,
            plan.ldb, ctypes.byref(zero), ctypes.c_void_p(out_ptr), data_type, plan.ldc,
            compute, CUBLAS_GEMM_DEFAULT,
        )
        _check("cublasGemmEx", status)


def _declare(library: Any) -> None:
    """The C signatures of the cuBLAS functions gpunn calls (enums are C ints)."""
    p, i = ctypes.c_void_p, ctypes.c_int
    signatures = {
        "cublasCreate_v2": [ctypes.POINTER(ctypes.c_void_p)],
        "cublasSetStream_v2": [p, p],
        "cublasSetWorkspace_v2": [p, p, ctypes.c_size_t],
        "cublasGemmEx": [p, i, i, i, i, i, p, p, i, i, p, i, i, p, p, i, i, i, i],
    }
    for name, argtypes in signatures.items():
        function = getattr(library, name)
        function.argtypes = argtypes
        function.restype = ctypes.c_int


def _check(call: str, status: int) -> None:
    if status != 0:
        raise CublasError(call, status)
