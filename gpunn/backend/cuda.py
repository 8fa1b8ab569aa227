"""The one module that imports CuPy.

A missing CuPy (or one that imports but finds no usable GPU) is stubbed here, so that the rest
of gpunn imports and runs on NumPy without it. ``cupy`` is the module or ``None`` (``cupyx``
likewise: the tests use its ``allow_synchronize`` to prove that a step loop never waits for
the GPU); :func:`unavailable_reason` says in words why the GPU cannot be used, and what to do.
The few CuPy settings gpunn reads or changes outside the public array API (the compute type
of float32 matrix products, for TF32) are read and changed here, and gpunn's own cuBLAS handle
is made here from the library CuPy loaded (:func:`own_cublas_gemm`; why it exists:
:mod:`gpunn.backend.cublas`).
"""

from __future__ import annotations

import ctypes
import functools
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy

from ..errors import describe
from .cublas import (
    CUBLAS_COMPUTE_32F,
    CUBLAS_COMPUTE_32F_FAST_TF32,
    CUBLAS_COMPUTE_32F_PEDANTIC,
    CUBLAS_COMPUTE_64F,
    CUBLAS_COMPUTE_64F_PEDANTIC,
    WORKSPACE_BYTES,
    Cublas,
    GemmPlan,
)

try:  # pragma: no cover - depends on the machine
    import cupy
    import cupyx
except ImportError as exc:  # pragma: no cover - depends on the machine
    cupy = None
    cupyx = None
    _IMPORT_ERROR: str | None = str(exc)
else:  # pragma: no cover - depends on the machine
    _IMPORT_ERROR = None

INSTALL_HINT = (
    'install CuPy for your CUDA version: pip install "gpunn[cuda12]" or "gpunn[cuda13]"'
)


def cupy_module() -> ModuleType | None:
    """CuPy if it imports, else None (whether or not a GPU is usable)."""
    return cupy


@functools.cache
def unavailable_reason() -> str | None:
    """None when CuPy can run kernels on a GPU here; otherwise why not, and what to do."""
    if cupy is None:
        return f"CuPy is not installed ({_IMPORT_ERROR}); {INSTALL_HINT}"
    try:  # pragma: no cover - needs a GPU
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDARuntimeError, or a missing libcuda
        return _describe_cuda_failure(exc)
    if count == 0:
        return "CuPy is installed but no NVIDIA GPU is visible (check CUDA_VISIBLE_DEVICES)"
    try:  # pragma: no cover - needs a GPU
        (cupy.arange(4, dtype=cupy.float32) * 2).sum().item()
    except Exception as exc:  # pragma: no cover - needs a GPU
        return _describe_cuda_failure(exc)
    return None


def _describe_cuda_failure(exc: Exception) -> str:
    text = describe(exc)
    lowered = text.lower()
    if "insufficient" in lowered and "driver" in lowered:
        return insufficient_driver_advice(text, *_cuda_versions())
    if "no cuda-capable device" in lowered or "no device" in lowered:
        return f"CuPy is installed but no NVIDIA GPU was found ({text})"
    if "libcuda" in lowered or "driver" in lowered:
        return f"CuPy is installed but the NVIDIA driver is missing or unusable ({text})"
    return f"CuPy is installed but cannot use a GPU ({text})"


def _cuda_versions() -> tuple[int, int]:
    """(driver, runtime) CUDA versions as CUDA encodes them (12090 is 12.9); 0 when unknown,
    and a driver version of 0 when no NVIDIA driver is installed."""
    versions = []
    for read in ("driverGetVersion", "runtimeGetVersion"):
        try:
            versions.append(int(getattr(cupy.cuda.runtime, read)()))
        except Exception:  # an unreadable version only makes the advice less specific
            versions.append(0)
    return versions[0], versions[1]


def cuda_release(version: int) -> str:
    """12040 -> '12.4' (CUDA encodes versions as 1000 major + 10 minor)."""
    return f"{version // 1000}.{version % 1000 // 10}"


def insufficient_driver_advice(text: str, driver: int, runtime: int) -> str:
    """What to do when CUDA says the driver is insufficient: install one when there is none,
    else update it or install the CuPy build for the CUDA the driver supports."""
    if driver == 0:
        return (
            f"no NVIDIA driver is installed ({text}); install the NVIDIA driver for your GPU, "
            "or run on the CPU with backend='numpy'"
        )
    built_for = f"CUDA {cuda_release(runtime)}" if runtime else "a newer CUDA"
    advice = f"update the NVIDIA driver to one for {built_for}"
    major = driver // 1000
    if runtime and major in (12, 13) and major < runtime // 1000:  # the extras gpunn offers
        advice += f', or install the CuPy build for CUDA {major}: pip install "gpunn[cuda{major}]"'
    return (
        f"the NVIDIA driver supports CUDA {cuda_release(driver)} but this CuPy was built for "
        f"{built_for} ({text}); {advice}"
    )


def array_module(array: object) -> ModuleType | None:
    """``numpy`` for a NumPy array, ``cupy`` for a CuPy array, None for anything else.

    (CuPy's ndarray has no ``__array_namespace__``, and must never be converted implicitly.)
    """
    if isinstance(array, numpy.ndarray):
        return numpy
    if cupy is not None and isinstance(array, cupy.ndarray):
        return cupy
    return None


def nccl_module() -> ModuleType | None:
    """CuPy's NCCL binding (``cupy.cuda.nccl``) when CuPy can load libnccl, else None."""
    if cupy is None:
        return None
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            from cupy.cuda import nccl
        except ImportError:
            return None
    return nccl if getattr(nccl, "available", False) else None


def float32_compute_type() -> int:
    """CuPy's compute type for float32 matrix products now (a recording fixes it)."""
    return cupy._core.get_compute_type(numpy.float32)


def set_float32_compute_type(compute_type: int) -> None:
    """Set CuPy's compute type for float32 matrix products, process-wide."""
    cupy._core.set_compute_type(numpy.float32, compute_type)


def tf32_compute_type(enabled: bool) -> int:
    """The compute type of float32 products on TensorFloat-32 (``enabled``) or CuPy's default."""
    linalg = _cupy_linalg()
    return linalg.COMPUTE_TYPE_TF32 if enabled else linalg.COMPUTE_TYPE_DEFAULT


def _cupy_linalg() -> Any:
    """CuPy's module of compute-type constants (``COMPUTE_TYPE_TF32``, ...)."""
    from cupy._core import _routines_linalg

    return _routines_linalg


def tf32_in_use() -> bool:
    """Whether CuPy's float32 matrix products run on TF32 now (whatever set it: the CuPy
    backend, ``CUPY_TF32``, the user); False without CuPy."""
    return cupy is not None and float32_compute_type() == tf32_compute_type(True)


def gpu_available() -> bool:
    """True when CuPy is installed and a GPU can run kernels."""
    return unavailable_reason() is None


Gemm = Callable[[GemmPlan, Any, Any, Any], None]


def own_cublas_gemm() -> Gemm:
    """``gemm(plan, a, b, out)``: out = a @ b by a :class:`~gpunn.backend.cublas.GemmPlan`,
    queued on the current stream through gpunn's own cuBLAS handle for the current device and
    thread (made on the first call for them, which must not be inside a capture). Its products
    compute as CuPy's would (:func:`gemm_compute_type`: ``tf32_scope`` and ``CUPY_TF32``
    apply). Raises OSError or :class:`~gpunn.backend.cublas.CublasError` when the handle cannot
    be made."""
    _cublas_handle(cupy.cuda.runtime.getDevice(), threading.get_ident())  # fails here if at all

    def gemm(plan: GemmPlan, a: Any, b: Any, out: Any) -> None:
        blas = _cublas_handle(cupy.cuda.runtime.getDevice(), threading.get_ident())
        blas.gemm(plan, a.data.ptr, b.data.ptr, out.data.ptr, a.dtype,
                  gemm_compute_type(a.dtype), cupy.cuda.get_current_stream().ptr)

    return gemm


def gemm_compute_type(dtype: Any) -> int:
    """The cublasComputeType_t that ``cupy.matmul`` would use for a product in ``dtype`` now:
    TF32 or pedantic where CuPy's compute type for that dtype says so, otherwise plain float32
    or float64 (CuPy computes float32 products in float32 under its other settings too)."""
    linalg = _cupy_linalg()
    setting = cupy._core.get_compute_type(dtype)
    pedantic = setting == linalg.COMPUTE_TYPE_PEDANTIC
    if numpy.dtype(dtype) == numpy.float64:
        return CUBLAS_COMPUTE_64F_PEDANTIC if pedantic else CUBLAS_COMPUTE_64F
    if setting == linalg.COMPUTE_TYPE_TF32:
        return CUBLAS_COMPUTE_32F_FAST_TF32
    return CUBLAS_COMPUTE_32F_PEDANTIC if pedantic else CUBLAS_COMPUTE_32F


@functools.cache
def _cublas_handle(device: int, thread: int) -> Cublas:  # pragma: no cover - needs a GPU
    """The handle of ``device`` for one thread (a handle must not serve two threads at once),
    and its workspace: both are kept for the life of the process (recorded steps hold their
    addresses), so each thread that trains on a GPU holds one handle and 32 MiB there."""
    library = _cublas_library()
    with cupy.cuda.Device(device):  # a handle belongs to the device current when it is made
        block = cupy.empty(WORKSPACE_BYTES, dtype=cupy.uint8)
        return Cublas(library, (block.data.ptr, block.nbytes), keep=block)


def _cublas_library() -> Any:  # pragma: no cover - needs a GPU
    """libcublas, the very library CuPy loaded (found in the process's memory map), else the
    one the loader finds for CuPy's CUDA version."""
    cupy.cuda.device.get_cublas_handle()  # CuPy loads cuBLAS when it first needs it
    major = cupy.cuda.runtime.runtimeGetVersion() // 1000
    soname = f"libcublas.so.{major}"
    mapped: set[str] = set()
    try:
        with open("/proc/self/maps") as maps:
            mapped = {line.split()[-1] for line in maps if "/libcublas.so" in line}
    except OSError:
        pass
    # another package may have mapped a libcublas of another CUDA too: CuPy's version first
    candidates = sorted(mapped, key=lambda path: (soname not in path, path))
    candidates += [soname, "libcublas.so", f"cublas64_{major}.dll"]  # the last on Windows
    problems = []
    for name in candidates:
        try:
            return ctypes.CDLL(name)
        except OSError as exc:
            problems.append(str(exc))
    raise OSError(f"cannot load libcublas ({'; '.join(problems)})")
