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
    """``gpunn info``: the benchmark's machine report; the exit status."""
    from ..bench.sysinfo import format_machine_info, machine_info

    say(format_machine_info(machine_info()))
    return 0
