"""``gpunn bench``: the command-line face of :mod:`gpunn.bench`."""

from __future__ import annotations

import argparse

from .parsing import add_tf32_flag

EPILOG = """\
examples:
  gpunn bench --quick
  gpunn bench --configs seed,mlp-b128 --backends numpy --json results.json --plot results.png
"""


def add_arguments(p: argparse.ArgumentParser, command: str | None) -> None:
    """The flags of ``gpunn bench``, added only when ``command`` is bench, so that the other
    commands do not import :mod:`gpunn.bench`."""
    p.set_defaults(run=run_bench)
    if command != "bench":
        return
    import gpunn.bench

    gpunn.bench.add_arguments(p)
    add_tf32_flag(p)


def run_bench(args: argparse.Namespace) -> int:
    """``gpunn bench``: measure and print the table; the exit status."""
    import gpunn.bench

    return gpunn.bench.main(args)
