"""gpunn's own cuBLAS calls, checked on the CPU: the layout arithmetic of
:func:`gpunn.backend.cublas.gemm_plan` against NumPy through a host model of cuBLAS's GEMM
(``tests/host_blas.py``), and the ctypes binding against a recording stand-in for libcublas.
On a GPU, ``tests/test_gpu.py`` compares the real products with CuPy's."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path
from typing import Any

import host_blas
import numpy as np
import pytest

from gpunn.backend import cublas
from gpunn.backend.cublas import CUBLAS_OP_N, CUBLAS_OP_T, Cublas, CublasError, gemm_plan


def _rng() -> np.random.Generator:
    return np.random.default_rng(7)


def _layouts(rows: int, cols: int, dtype: Any) -> dict[str, np.ndarray]:
    """One (rows, cols) matrix of the same values in every layout gpunn's steps produce."""
    values = _rng().standard_normal((rows, cols)).astype(dtype)
    wide = np.zeros((rows + 3, cols + 5), dtype)
    wide[2 : 2 + rows, 1 : 1 + cols] = values
    return {
        "C order": values.copy(),
        "Fortran order": np.asfortranarray(values),
        "transposed view": np.ascontiguousarray(values.T).T,
        "first rows of a buffer": np.concatenate([values, values[:2]])[:rows],
        "column slice": wide[2 : 2 + rows, 1 : 1 + cols],
    }


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("m", "k", "n"), [(5, 7, 3), (1, 4, 6), (6, 1, 2), (3, 5, 1), (1, 1, 1)])
def test_plans_compute_the_product_in_every_layout(dtype: Any, m: int, k: int, n: int) -> None:
    for a_name, a in _layouts(m, k, dtype).items():
        for b_name, b in _layouts(k, n, dtype).items():
            for out_name, out in (("C order", np.empty((m, n), dtype)),
                                  ("first rows", np.empty((m + 2, n), dtype)[:m])):
                plan = gemm_plan(a, b, out)
                assert plan is not None, (a_name, b_name, out_name)
                out[...] = np.nan
                host_blas.gemm(plan, a, b, out)
                expected = a.astype(np.float64) @ b.astype(np.float64)
                np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6,
                                           err_msg=f"{a_name} @ {b_name} -> {out_name}")


def test_the_products_of_a_training_step_take_no_copy() -> None:
    """Z = A_prev Wᵀ, dW = δᵀ A_prev and δ_prev = δ W on the buffers a step uses: views of
    the flat parameter buffer and the first rows of a workspace."""
    rng = _rng()
    params = rng.standard_normal(8 * 5 + 8).astype(np.float32)
    W = params[: 8 * 5].reshape(8, 5)
    A_prev = rng.standard_normal((12, 5)).astype(np.float32)[:9]
    delta = rng.standard_normal((12, 8)).astype(np.float32)[:9]
    grads = np.empty_like(params)
    dW = grads[: 8 * 5].reshape(8, 5)
    for a, b, out in ((A_prev, W.T, np.empty((9, 8), np.float32)),
                      (delta.T, A_prev, dW),
                      (delta, W, np.empty((9, 5), np.float32))):
        plan = gemm_plan(a, b, out)
        assert plan is not None
        host_blas.gemm(plan, a, b, out)
        np.testing.assert_allclose(out, a @ b, rtol=1e-5, atol=1e-5)
    plan = gemm_plan(A_prev, W.T, np.empty((9, 8), np.float32))
    assert (plan.op_a, plan.op_b) == (CUBLAS_OP_T, CUBLAS_OP_N)  # Wᵀ is read as stored


@pytest.mark.parametrize(
    ("a", "b", "out"),
    [
        (np.ones((4, 6))[:, ::2], np.ones((3, 2)), np.empty((4, 2))),  # strided both ways
        (np.ones((4, 3)), np.ones((3, 2))[::-1], np.empty((4, 2))),  # negative stride
        (np.ones((4, 3)), np.ones((3, 2)), np.empty((2, 4)).T),  # out not row-contiguous
        (np.ones((4, 3), np.float32), np.ones((3, 2)), np.empty((4, 2))),  # mixed dtypes
        (np.ones((4, 3), np.int64), np.ones((3, 2), np.int64), np.empty((4, 2), np.int64)),
        (np.ones((4, 3), np.float16), np.ones((3, 2), np.float16), np.empty((4, 2), np.float16)),
        (np.ones((0, 3)), np.ones((3, 2)), np.empty((0, 2))),  # empty
        (np.ones((4, 0)), np.ones((0, 2)), np.empty((4, 2))),  # nothing to sum: C = 0
        (np.ones((4, 3)), np.ones((2, 2)), np.empty((4, 2))),  # shapes do not chain
        (np.ones(3), np.ones((3, 2)), np.empty(2)),  # a vector
    ],
)
def test_layouts_one_call_cannot_take_are_left_to_cupy(
    a: np.ndarray, b: np.ndarray, out: np.ndarray
) -> None:
    assert gemm_plan(a, b, out) is None


def test_a_plan_that_would_read_past_an_operand_is_caught_by_the_host_model() -> None:
    """The host model is strict: a wrong leading dimension does not go unnoticed."""
    a, b, out = np.ones((4, 3)), np.ones((3, 2)), np.empty((4, 2))
    plan = gemm_plan(a, b, out)
    wrong = cublas.GemmPlan(plan.op_a, plan.op_b, plan.m, plan.n, plan.k, plan.lda,
                            plan.ldb + 1, plan.ldc)
    with pytest.raises(host_blas.PlanOutOfBounds, match="reaches past"):
        host_blas.gemm(wrong, a, b, out)


class _Library:
    """A stand-in for libcublas: records each call and returns ``status`` from the GEMM."""

    def __init__(self, gemm_status: int = 0) -> None:
        self.calls: list[tuple[str, tuple]] = []
        self.gemm_status = gemm_status
        for name in ("cublasCreate_v2", "cublasSetStream_v2", "cublasSetWorkspace_v2",
                     "cublasGemmEx"):
            setattr(self, name, self._function(name))

    def _function(self, name: str) -> Any:
        def call(*args: Any) -> int:
            self.calls.append((name, args))
            return self.gemm_status if name == "cublasGemmEx" else 0

        return call


def _value(argument: Any) -> Any:
    return argument.value if hasattr(argument, "value") else argument


def test_the_binding_binds_a_new_stream_with_the_workspace_and_passes_b_first() -> None:
    library = _Library()
    blas = Cublas(library, (1000, 32))
    a, b, out = np.ones((4, 3), np.float32), np.ones((3, 2), np.float32), np.empty((4, 2),
                                                                                   np.float32)
    plan = gemm_plan(a, b, out)
    for stream in (11, 11, 22, 22, 11):
        blas.gemm(plan, 101, 202, 303, np.float32, cublas.CUBLAS_COMPUTE_32F, stream)
    names = [name for name, _ in library.calls]
    assert names[0] == "cublasCreate_v2"
    assert names[1:] == ["cublasSetStream_v2", "cublasSetWorkspace_v2", "cublasGemmEx",
                         "cublasGemmEx",
                         "cublasSetStream_v2", "cublasSetWorkspace_v2", "cublasGemmEx",
                         "cublasGemmEx",
                         "cublasSetStream_v2", "cublasSetWorkspace_v2", "cublasGemmEx"]
    set_stream = [args for name, args in library.calls if name == "cublasSetStream_v2"]
    assert [_value(args[1]) for args in set_stream] == [11, 22, 11]
    set_workspace = [args for name, args in library.calls if name == "cublasSetWorkspace_v2"]
    assert [(_value(args[1]), _value(args[2])) for args in set_workspace] == [(1000, 32)] * 3
    gemm = next(args for name, args in library.calls if name == "cublasGemmEx")
    (_, op_a, op_b, m, n, k, alpha, A, a_type, lda, B, b_type, ldb, beta, C, c_type, ldc,
     compute, algo) = gemm
    assert (op_a, op_b, m, n, k, lda, ldb, ldc) == (plan.op_a, plan.op_b, plan.m, plan.n,
                                                      plan.k, plan.lda, plan.ldb, plan.ldc)
    assert (_value(A), _value(B), _value(C)) == (202, 101, 303)  # A is b, B is a
    assert a_type == b_type == c_type == 0  # CUDA_R_32F
    assert compute == cublas.CUBLAS_COMPUTE_32F and algo == cublas.CUBLAS_GEMM_DEFAULT
    assert ctypes.cast(alpha, ctypes.POINTER(ctypes.c_float)).contents.value == 1.0
    assert ctypes.cast(beta, ctypes.POINTER(ctypes.c_float)).contents.value == 0.0


def test_a_failed_call_raises_with_its_status_and_out_of_memory_is_recognised() -> None:
    library = _Library(gemm_status=cublas.CUBLAS_STATUS_ALLOC_FAILED)
    blas = Cublas(library, (0, 0))
    a = np.ones((2, 2))
    with pytest.raises(CublasError, match="cublasGemmEx failed with cuBLAS status 3") as info:
        blas.gemm(gemm_plan(a, a, np.empty((2, 2))), 1, 2, 3, np.float64,
                  cublas.CUBLAS_COMPUTE_64F, 0)
    assert info.value.status == cublas.CUBLAS_STATUS_ALLOC_FAILED


# A stand-in for libcublas in C, with cuBLAS's own prototypes: what arrives at the C side is
# what a real libcublas would receive, argument by argument (ctypes conversions included).
_STUB = r"""
#include <stddef.h>
#include <stdint.h>
typedef struct { int op_a, op_b, m, n, k, lda, ldb, ldc, a_type, b_type, c_type, compute, algo;
                 float alpha, beta; uintptr_t A, B, C, handle, stream, workspace;
                 size_t workspace_bytes; int calls; } record_t;
static record_t record;
record_t *gpunn_stub_record(void) { return &record; }
int cublasCreate_v2(void **handle) { *handle = (void *)0x1234; return 0; }
int cublasSetStream_v2(void *handle, void *stream) {
    record.handle = (uintptr_t)handle; record.stream = (uintptr_t)stream; return 0; }
int cublasSetWorkspace_v2(void *handle, void *workspace, size_t bytes) {
    record.workspace = (uintptr_t)workspace; record.workspace_bytes = bytes; return 0; }
int cublasGemmEx(void *handle, int op_a, int op_b, int m, int n, int k, const void *alpha,
                 const void *A, int a_type, int lda, const void *B, int b_type, int ldb,
                 const void *beta, void *C, int c_type, int ldc, int compute, int algo) {
    record.op_a = op_a; record.op_b = op_b; record.m = m; record.n = n; record.k = k;
    record.lda = lda; record.ldb = ldb; record.ldc = ldc; record.a_type = a_type;
    record.b_type = b_type; record.c_type = c_type; record.compute = compute; record.algo = algo;
    record.alpha = *(const float *)alpha; record.beta = *(const float *)beta;
    record.A = (uintptr_t)A; record.B = (uintptr_t)B; record.C = (uintptr_t)C;
    record.calls += 1; return 0; }
"""


class _Record(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int) for name in (
        "op_a", "op_b", "m", "n", "k", "lda", "ldb", "ldc", "a_type", "b_type", "c_type",
        "compute", "algo")] + [("alpha", ctypes.c_float), ("beta", ctypes.c_float)] + [
        (name, ctypes.c_size_t) for name in ("A", "B", "C", "handle", "stream", "workspace",
                                              "workspace_bytes")] + [("calls", ctypes.c_int)]


def test_the_binding_passes_cublas_its_arguments_through_c(tmp_path: Path) -> None:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler (cc) to build the stand-in for libcublas")
    (tmp_path / "stub.c").write_text(_STUB)
    subprocess.run([compiler, "-shared", "-fPIC", "-o", str(tmp_path / "stub.so"),
                    str(tmp_path / "stub.c")], check=True, capture_output=True)
    library = ctypes.CDLL(str(tmp_path / "stub.so"))
    library.gpunn_stub_record.restype = ctypes.POINTER(_Record)
    big = 2**40 + 8  # device pointers past 32 bits must arrive whole
    blas = Cublas(library, (big + 4096, 32 * 2**20))
    a, b, out = np.ones((9, 5), np.float32), np.ones((5, 8), np.float32).T.copy().T, np.empty(
        (9, 8), np.float32)
    plan = gemm_plan(a, b, out)
    blas.gemm(plan, big + 1, big + 2, big + 3, np.float32, cublas.CUBLAS_COMPUTE_32F_FAST_TF32,
              big + 5)
    got = library.gpunn_stub_record().contents
    assert (got.op_a, got.op_b, got.m, got.n, got.k, got.lda, got.ldb, got.ldc) == (
        plan.op_a, plan.op_b, plan.m, plan.n, plan.k, plan.lda, plan.ldb, plan.ldc)
    assert (got.A, got.B, got.C) == (big + 2, big + 1, big + 3)  # A is b, B is a
    assert (got.a_type, got.b_type, got.c_type) == (0, 0, 0)
    assert (got.compute, got.algo) == (cublas.CUBLAS_COMPUTE_32F_FAST_TF32, -1)
    assert (got.alpha, got.beta) == (1.0, 0.0)
    assert (got.handle, got.stream) == (0x1234, big + 5)
    assert (got.workspace, got.workspace_bytes) == (big + 4096, 32 * 2**20)
    assert got.calls == 1
