"""What machine a benchmark ran on: CPU, BLAS, GPU, and the versions of everything measured.

:func:`machine_info` never raises: whatever cannot be found is reported as such.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata as _md
import os
import platform
import sys
from typing import Any

from ..backend import available_backends, cupy_module, get_backend, unavailable_reason
from ..errors import describe


def _version(dist: str) -> str | None:
    try:
        return _md.version(dist)
    except Exception:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _cpu_flags() -> list[str]:
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "neon", "sve")
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith(("flags", "features")):
                    have = set(line.split(":", 1)[1].split())
                    return [w for w in wanted if w in have]
    except OSError:
        pass
    return []


def _mem_total_gib() -> float | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 2)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _blas_info() -> list[dict[str, Any]]:
    try:
        from threadpoolctl import threadpool_info

        out = []
        for pool in threadpool_info():
            if pool.get("user_api") != "blas":
                continue
            out.append({k: pool.get(k) for k in ("internal_api", "version", "num_threads",
                                                   "threading_layer", "architecture",
                                                   "filepath")})
        return out
    except Exception as exc:  # threadpoolctl missing or confused
        return [{"error": describe(exc)}]


def blas_threads() -> int | None:
    """Threads of the BLAS NumPy uses (the first BLAS threadpoolctl reports), or None."""
    for pool in _blas_info():
        if isinstance(pool.get("num_threads"), int):
            return pool["num_threads"]
    return None


def _gpu_info() -> dict[str, Any]:
    """The CuPy installed, and the GPU it runs on, or why it cannot run on one."""
    cupy = cupy_module()
    info: dict[str, Any] = {
        "cupy_installed": _version("cupy-cuda12x") or _version("cupy-cuda13x")
        or _version("cupy-cuda11x") or _version("cupy"),
        "cupy": None if cupy is None else cupy.__version__,
    }
    reason = unavailable_reason()
    if reason is not None:
        return {**info, "available": False, "reason": reason}
    try:
        info.update(get_backend("cupy").device_info(), available=True)
    except Exception as exc:  # a GPU that works but will not describe itself
        info.update(available=False, reason=describe(exc))
    return info


def _nvidia_driver() -> str | None:
    try:
        with open("/proc/driver/nvidia/version", encoding="utf-8") as f:
            first = f.readline()
        for tok in first.split():
            if tok[:1].isdigit() and "." in tok:
                return tok
    except OSError:
        pass
    return None


def machine_info() -> dict[str, Any]:
    """CPU, memory, Python and library versions, BLAS and threads, GPU; never raises."""
    info: dict[str, Any] = {}
    try:
        info["timestamp"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        info["hostname"] = platform.node()
        info["platform"] = platform.platform()
        try:
            affinity = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            affinity = None
        info["cpu"] = {"model": _cpu_model(), "logical_cores": os.cpu_count(),
                       "usable_cores": affinity, "machine": platform.machine(),
                       "flags": _cpu_flags(), "memory_gib": _mem_total_gib()}
        info["python"] = platform.python_version()
        info["python_implementation"] = platform.python_implementation()
        try:
            import gpunn

            gv = getattr(gpunn, "__version__", None) or _version("gpunn")
        except Exception:
            gv = _version("gpunn")
        try:
            import numpy

            nv = numpy.__version__
        except Exception:
            nv = None
        info["versions"] = {
            "gpunn": gv, "numpy": nv, "threadpoolctl": _version("threadpoolctl"),
            "torch": _version("torch"), "matplotlib": _version("matplotlib"),
            "pytest-benchmark": _version("pytest-benchmark"),
        }
        info["blas"] = _blas_info()
        info["blas_threads"] = blas_threads()
        env = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                           "MKL_NUM_THREADS", "GPUNN_BACKEND",
                                           "CUDA_VISIBLE_DEVICES", "CUPY_TF32")
               if k in os.environ}
        info["env"] = env
        gpu = _gpu_info()
        drv = _nvidia_driver()
        if drv:
            gpu["driver"] = drv
        info["gpu"] = gpu
        info["versions"]["cupy"] = gpu.get("cupy") or gpu.get("cupy_installed")
        try:
            info["backends"] = available_backends()
        except Exception as exc:
            info["backends"] = None
            info["backends_error"] = describe(exc)
    except Exception as exc:  # pragma: no cover - last resort, machine_info must not raise
        info["error"] = describe(exc)
    return info


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, list):
        return ", ".join(_fmt(x) for x in v) or "-"
    return str(v)


def format_machine_info(info: dict[str, Any]) -> str:
    """Human-readable lines of :func:`machine_info`'s dict (what ``gpunn info`` prints)."""
    lines: list[str] = []

    def add(key: str, value: Any) -> None:
        lines.append(f"{key:<22} {_fmt(value)}")

    cpu = info.get("cpu", {})
    add("cpu", cpu.get("model"))
    add("cores", f"{cpu.get('usable_cores')} usable / {cpu.get('logical_cores')} logical")
    add("cpu features", cpu.get("flags"))
    add("memory (GiB)", cpu.get("memory_gib"))
    add("platform", info.get("platform"))
    add("python", f"{info.get('python')} ({info.get('python_implementation')})")
    for name, v in (info.get("versions") or {}).items():
        add(name, v if v is not None else "not installed")
    for pool in info.get("blas") or []:
        if "error" in pool:
            add("blas", pool["error"])
        else:
            add("blas", f"{pool.get('internal_api')} {pool.get('version')} "
                        f"({pool.get('architecture')}, {pool.get('threading_layer')}, "
                        f"{pool.get('num_threads')} threads)")
    if not info.get("blas"):
        add("blas", "not found")
    for k, v in (info.get("env") or {}).items():
        add(k, v)
    add("backends", info.get("backends") if info.get("backends") is not None
        else f"unknown ({info.get('backends_error', '')})")
    gpu = info.get("gpu") or {}
    if gpu.get("available"):
        add("gpu", f"{gpu.get('name')} (device {gpu.get('device_id')}, "
                   f"compute {gpu.get('compute_capability')})")
        add("gpu memory (GiB)", f"{gpu.get('memory_total_gib')} total, "
                                f"{gpu.get('memory_free_gib', '-')} free")
        add("nvidia driver", gpu.get("driver"))
        add("cuda driver/runtime", f"{gpu.get('driver_cuda_version')} / "
                                   f"{gpu.get('runtime_cuda_version')}")
    else:
        add("gpu", f"none usable: {gpu.get('reason', 'unknown')}")
    if "error" in info:
        add("error", info["error"])
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    sys.stdout.write(format_machine_info(machine_info()) + "\n")
