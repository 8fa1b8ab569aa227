"""cuBLAS's GEMM on host memory, as its documentation defines it: what a
:class:`gpunn.backend.cublas.GemmPlan` makes ``cublasGemmEx`` compute.

cuBLAS reads each operand from its first element, column-major: a stored matrix of r rows and
c columns with leading dimension ld has element (i, j) at offset i + j·ld, and ld ≥ max(1, r).
:func:`gemm` computes C = op(A) op(B) that way over the operands' own memory and refuses a
plan that would read or write an element outside the array it was given, so a test that
compares its result with NumPy's ``a @ b`` checks the plan's ops, sizes and leading
dimensions exactly as a GPU would use them.
"""

from __future__ import annotations

from typing import Any

import numpy
from numpy.lib.stride_tricks import as_strided

from gpunn.backend.cublas import CUBLAS_OP_N, GemmPlan


class PlanOutOfBounds(AssertionError):
    """A plan makes cuBLAS touch memory outside an operand, or breaks cuBLAS's rules."""


def _memory(array: numpy.ndarray) -> numpy.ndarray:
    """The elements from the array's first to its last in memory, as a 1-D view."""
    if any(s < 0 for s in array.strides):
        raise PlanOutOfBounds("cuBLAS cannot read negative strides")
    last = sum((d - 1) * s for d, s in zip(array.shape, array.strides, strict=True))
    return as_strided(array, shape=(last // array.itemsize + 1,), strides=(array.itemsize,))


def _stored(memory: numpy.ndarray, rows: int, cols: int, ld: int, what: str) -> numpy.ndarray:
    """The column-major matrix of rows × cols with leading dimension ld at ``memory``."""
    if ld < max(1, rows):
        raise PlanOutOfBounds(f"{what}: leading dimension {ld} < max(1, {rows} rows)")
    if (rows - 1) + (cols - 1) * ld >= memory.size:
        raise PlanOutOfBounds(f"{what}: a {rows}x{cols} matrix with ld {ld} reaches past the "
                              f"{memory.size} elements of its operand")
    step = memory.itemsize
    return as_strided(memory, shape=(rows, cols), strides=(step, ld * step))


def _operand(memory: numpy.ndarray, op: int, rows: int, cols: int, ld: int, what: str
             ) -> numpy.ndarray:
    """op(X), rows × cols, where X is stored at ``memory`` (transposed for op T)."""
    if op == CUBLAS_OP_N:
        return _stored(memory, rows, cols, ld, what)
    return _stored(memory, cols, rows, ld, what).T


def gemm(plan: GemmPlan, a: Any, b: Any, out: Any) -> None:
    """out = a @ b as ``cublasGemmEx`` computes it by ``plan`` (A is b's memory, B is a's,
    C is out's), in float64 and rounded once to out's dtype."""
    op_a = _operand(_memory(b), plan.op_a, plan.m, plan.k, plan.lda, "A (b)")
    op_b = _operand(_memory(a), plan.op_b, plan.k, plan.n, plan.ldb, "B (a)")
    c = _stored(_memory(out), plan.m, plan.n, plan.ldc, "C (out)")
    c[...] = op_a.astype(numpy.float64) @ op_b.astype(numpy.float64)
