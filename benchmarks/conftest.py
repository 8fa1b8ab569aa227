"""Shared fixtures of the pytest-benchmark suite (``pytest benchmarks/ --benchmark-only``).

With ``--benchmark-disable`` (CI) every case runs a couple of steps once, as a smoke test.
"""

from __future__ import annotations

import pytest

from gpunn.backend import unavailable_reason
from gpunn.bench import contenders as C
from gpunn.bench.configs import CONFIGS, BenchConfig
from gpunn.bench.runner import synthetic_data

#: seconds one timed round aims at when benchmarking for real
ROUND_S = 0.2
ROUNDS = 5
#: bytes of synthetic X per model when only smoke-testing (--benchmark-disable)
SMOKE_BYTES = 8 * 2**20


def backend_param(name: str) -> object:
    """A ``backend`` parameter, marked ``gpu`` and skipped with the reason where needed."""
    if name == "cupy":
        reason = unavailable_reason()
        marks = [pytest.mark.gpu]
        if reason:
            marks.append(pytest.mark.skip(reason=f"no usable GPU: {reason}"))
        return pytest.param(name, marks=marks, id=name)
    return pytest.param(name, id=name)


@pytest.fixture(scope="session")
def data_cache() -> dict:
    """Synthetic data shared by all cases of a session, one set per model and device."""
    return {}


def shared_data(cache: dict, cfg: BenchConfig, backend: str, disabled: bool
                ) -> C.SyntheticData:
    """The bench's data for ``cfg`` on ``backend``'s device: as much as ``gpunn bench`` uses
    when benchmarking, a little (two of the largest batches) when only smoke-testing."""
    device = C.device_of(backend)
    largest = max(c.batch for c in CONFIGS.values() if backend == "cupy" or not c.gpu_only)
    if disabled:
        return synthetic_data(cache, cfg, device, 0, 2 * largest, SMOKE_BYTES)
    return synthetic_data(cache, cfg, device, 0, largest)
