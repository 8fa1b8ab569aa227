"""NumPy (CPU) kernels: the reference kernels, with the CPU's hot paths tuned."""

from __future__ import annotations

import numpy

from .ops import Array, Ops

# exp(x) for x < −87 is a subnormal float32, and subnormal arithmetic is slow on x86 CPUs.
# Clipping z to ±87 before the exponential leaves float32 σ(z) unchanged at the top
# (1/(1 + e^−87) rounds to 1) and changes it by less than 2e-38 at the bottom.
_SIGMOID_CLIP = {numpy.dtype(numpy.float32): 87.0, numpy.dtype(numpy.float64): 708.0}


class NumpyOps(Ops):
    name = "numpy"
    xp = numpy

    def sigmoid(self, Z: Array, out: Array) -> Array:
        """σ(z) = 1 / (1 + e^(−z)), with −z clipped so that e^(−z) is never subnormal."""
        bound = _SIGMOID_CLIP.get(out.dtype)
        numpy.negative(Z, out=out)
        if bound is not None:
            numpy.clip(out, -bound, bound, out=out)
        numpy.exp(out, out=out)
        out += 1
        return numpy.reciprocal(out, out=out)
