"""Benchmarks: training throughput per backend, configuration and batch size, against peers.

``run_bench(...)`` measures; :mod:`gpunn.bench.report` prints, saves and plots; the CLI's
``gpunn bench`` is :func:`add_arguments` + :func:`main`.
"""

from __future__ import annotations

import argparse
import sys

from .configs import CONFIGS, BenchConfig, flops_per_sample, get_configs
from .report import format_markdown, format_table, plot, read_json, write_json, write_markdown
from .runner import parse_int_list, run_bench
from .sysinfo import format_machine_info, machine_info

__all__ = [
    "CONFIGS",
    "BenchConfig",
    "add_arguments",
    "flops_per_sample",
    "format_machine_info",
    "format_markdown",
    "format_table",
    "get_configs",
    "machine_info",
    "main",
    "plot",
    "read_json",
    "run_bench",
    "write_json",
    "write_markdown",
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``gpunn bench``."""
    names = ", ".join(CONFIGS)
    parser.add_argument("--configs", default=None, metavar="NAMES",
                        help=f"comma-separated configurations or families (default all: {names})")
    parser.add_argument("--backends", default=None, metavar="NAMES",
                        help="comma-separated backends: numpy, cupy (default: all available)")
    parser.add_argument("--batch-sizes", default=None, metavar="LIST",
                        help="comma-separated batch sizes, or A-B for powers of two from A to B "
                             "(default: 1-8192 on the GPU, 16,64,256,1024 on the CPU, plus each "
                             "configuration's own batch)")
    parser.add_argument("--quick", action="store_true",
                        help="short sweep and repeats (a few minutes on a 2-core CPU)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed repeats per measurement (default 5, 3 with --quick)")
    parser.add_argument("--no-peers", dest="peers", action="store_false",
                        help="skip PyTorch and the per-sample loop")
    parser.add_argument("--json", dest="json_path", default=None, metavar="PATH",
                        help="write the results and machine information as JSON")
    parser.add_argument("--plot", dest="plot_path", default=None, metavar="PATH",
                        help="write a log-log plot of samples/s against batch size (PNG)")
    parser.add_argument("--markdown", dest="markdown_path", default=None, metavar="PATH",
                        help="write the configurations' rows as Markdown tables (one per "
                             "backend, as in the README)")
    parser.add_argument("--seed", type=int, default=0, help="seed of data and weights")
    parser.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                        help="skip the measurements left after this many seconds")


def main(args: argparse.Namespace) -> int:
    """Run ``gpunn bench`` with parsed ``args``; prints the table, returns the exit status."""
    try:
        configs = get_configs(getattr(args, "configs", None))
        sizes = parse_int_list(getattr(args, "batch_sizes", None))
        repeats = getattr(args, "repeats", None)
        if repeats is not None and repeats < 1:
            raise ValueError(f"--repeats must be at least 1, got {repeats}")
    except ValueError as exc:
        print(f"gpunn bench: error: {exc}", file=sys.stderr)
        return 2
    quiet = getattr(args, "quiet", False)
    json_path = getattr(args, "json_path", None)

    def checkpoint(partial_results: dict) -> None:  # a killed run still leaves its results
        if json_path:
            write_json(partial_results, json_path)

    try:
        results = run_bench(configs=configs, backends=getattr(args, "backends", None),
                            batch_sizes=sizes, peers=getattr(args, "peers", True),
                            quick=getattr(args, "quick", False), repeats=repeats,
                            seed=getattr(args, "seed", 0),
                            time_budget=getattr(args, "time_budget", None),
                            checkpoint=checkpoint,
                            log=None if quiet else (lambda m: print(m, file=sys.stderr,
                                                                    flush=True)))
    except ValueError as exc:
        print(f"gpunn bench: error: {exc}", file=sys.stderr)
        return 2
    print(format_machine_info(results["machine"]))
    print()
    print(format_table(results))
    status = 0
    if json_path:
        print(f"results written to {write_json(results, json_path)}")
    if getattr(args, "markdown_path", None):
        print(f"Markdown written to {write_markdown(results, args.markdown_path)}")
    if getattr(args, "plot_path", None):
        try:
            print(f"plot written to {plot(results, args.plot_path)}")
        except (RuntimeError, ValueError) as exc:
            print(f"gpunn bench: cannot plot: {exc}", file=sys.stderr)
            status = 1
    return status


def _standalone(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gpunn.bench",
                                     description="gpunn training-throughput benchmark")
    add_arguments(parser)
    return main(parser.parse_args(argv))
