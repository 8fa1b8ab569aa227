"""Shared fixtures of the pytest-benchmark suite (``pytest benchmarks/ --benchmark-only``).

With ``--benchmark-disable`` (CI) every case runs a couple of steps once, as a smoke test.
"""

from __future__ import annotations

import pytest

from gpunn.bench import contenders as C
from gpunn.bench.sysinfo import available_backends

#: seconds one timed round aims at when benchmarking for real
ROUND_S = 0.2
ROUNDS = 5


def gpu_reason() -> str | None:
    """Why the cupy backend cannot run here, or None when it can."""
    if "cupy" in available_backends():
        return None
    try:
        from gpunn.backend import unavailable_reason

        return unavailable_reason() or "cupy backend not available"
    except Exception as exc:  # pragma: no cover
        return f"cupy backend not available ({exc})"


def backend_param(name: str) -> object:
    """A ``backend`` parameter, marked ``gpu`` and skipped with the reason where needed."""
    if name == "cupy":
        reason = gpu_reason()
        marks = [pytest.mark.gpu]
        if reason:
            marks.append(pytest.mark.skip(reason=f"no usable GPU: {reason}"))
        return pytest.param(name, marks=marks, id=name)
    return pytest.param(name, id=name)


@pytest.fixture(scope="session")
def data_cache() -> dict:
    """Synthetic data shared by all cases of a session, one set per model input width."""
    return {}


def shared_data(cache: dict, n_in: int, n_out: int, batch: int, disabled: bool,
                device: str) -> C.SyntheticData:
    n = max(batch * (2 if disabled else 1), (8 if disabled else 48) * 2**20 // (4 * n_in))
    if device == "gpu" and not disabled:
        n *= 4
    key = (n_in, n_out, n, device)
    if key not in cache:
        cache[key] = C.SyntheticData(n_in, n_out, n, seed=0)
    return cache[key]
