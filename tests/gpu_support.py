"""What the tests of the CuPy backend share besides their fixtures (``device`` and
``simulated``, in conftest.py): small data, the network types they train, and the comparison
of two trainings."""

from __future__ import annotations

import numpy
import pytest


def cupy_ops(**options):
    from gpunn.backend.cupy_ops import CupyOps

    return CupyOps(**options)


def data(n=45, n_in=12, n_out=3, seed=0):
    """Features in [0, 1) and integer labels."""
    rng = numpy.random.default_rng(seed)
    X = rng.uniform(0, 1, size=(n, n_in))
    return X, rng.integers(0, n_out, size=n)


CONFIGS = [
    {"activation": "sigmoid", "output": "sigmoid", "loss": "mse"},
    {"activation": "relu", "output": "softmax", "loss": "cross_entropy"},
    {"activation": "tanh", "output": "identity", "loss": "mse"},
    {"activation": "relu", "output": "sigmoid", "loss": "cross_entropy"},
]


def assert_same_training(net0, net1, histories, rtol=1e-9):
    """The same weights, and the same per-epoch records (timings aside)."""
    for (W0, b0), (W1, b1) in zip(net0.get_params(), net1.get_params(), strict=True):
        numpy.testing.assert_allclose(W1, W0, rtol=rtol, atol=rtol * 1e-3)
        numpy.testing.assert_allclose(b1, b0, rtol=rtol, atol=rtol * 1e-3)
    for run0, run1 in zip(*histories, strict=True):
        assert len(run0.records) == len(run1.records)
        for r0, r1 in zip(run0.records, run1.records, strict=True):
            assert r0.keys() == r1.keys()
            for key in r0.keys() - {"seconds", "samples_per_second"}:
                assert r1[key] == pytest.approx(r0[key], rel=rtol), key
