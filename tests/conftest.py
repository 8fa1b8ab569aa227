"""Test set-up shared by every test module: GPU tests skip, with the reason, without a GPU;
the ``device`` fixture runs a test on the simulated GPU and on a real one."""

from __future__ import annotations

import types

import pytest
import simulated_cupy

from gpunn.backend import cuda as cuda_module


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked ``gpu`` where CuPy cannot run on a GPU, saying why (``-rs``)."""
    from gpunn.backend import unavailable_reason

    reason = unavailable_reason()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=f"needs a GPU: {reason}")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=["simulated", pytest.param("cuda", marks=pytest.mark.gpu)])
def device(request):
    """The device module set: ``cupy``, ``cupyx`` and, when simulated, its ``state``."""
    if request.param == "cuda":
        yield types.SimpleNamespace(
            cupy=cuda_module.cupy, cupyx=cuda_module.cupyx, state=None, simulated=False
        )
        return
    with simulated_cupy.install() as state:
        yield types.SimpleNamespace(
            cupy=simulated_cupy, cupyx=simulated_cupy.cupyx, state=state, simulated=True
        )


@pytest.fixture
def simulated():
    """The simulated GPU alone: for checks that need its bookkeeping."""
    with simulated_cupy.install() as state:
        yield state
