"""``gpunn info``: versions, backends, GPU and BLAS of this machine."""

from __future__ import annotations

import argparse

from .output import say

EPILOG = """\
examples:
  gpunn info
  GPUNN_BACKEND=numpy gpunn info
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``gpunn info`` takes no arguments of its own."""
    p.set_defaults(run=run_info)


def run_info(args: argparse.Namespace) -> int:
    """``gpunn info``: the benchmark's machine report, or the essentials without it."""
    try:
        from ..bench.sysinfo import format_machine_info, machine_info
    except ImportError:
        say(_minimal_info())
        return 0
    say(format_machine_info(machine_info()))
    return 0


def _minimal_info() -> str:
    import platform

    import numpy

    import gpunn

    from ..backend import unavailable_reason

    reason = unavailable_reason()
    lines = [
        f"gpunn      {gpunn.__version__}",
        f"python     {platform.python_version()}",
        f"numpy      {numpy.__version__}",
        f"backends   {', '.join(gpunn.available_backends())}",
        f"gpu        {'usable' if reason is None else 'none usable: ' + reason}",
    ]
    return "\n".join(lines)
