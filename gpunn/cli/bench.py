"""``gpunn bench``: the command-line face of :mod:`gpunn.bench`."""

from __future__ import annotations

import argparse

from .parsing import UsageError, add_tf32_flag

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
    try:
        import gpunn.bench
    except ImportError as exc:
        p.set_defaults(bench_unavailable=f"gpunn bench is not available here: {exc}")
        return
    gpunn.bench.add_arguments(p)
    add_tf32_flag(p)
    p.add_argument("--quiet", action="store_true", help="no progress messages")


def run_bench(args: argparse.Namespace) -> int:
    """``gpunn bench``: measure and print the table; the exit status."""
    unavailable = getattr(args, "bench_unavailable", None)
    if unavailable:
        raise UsageError(unavailable)
    import gpunn.bench

    return int(gpunn.bench.main(args) or 0)
