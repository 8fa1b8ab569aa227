"""Benchmarks: training throughput per backend, configuration and batch size, against peers.

``run_bench(...)`` measures; :mod:`gpunn.bench.report` prints, saves and plots; the CLI's
``gpunn bench`` is :func:`add_arguments` + :func:`main`.
"""

from __future__ import annotations

import argparse
import sys

from ..backend import BACKEND_NAMES
from ..cli.parsing import non_negative_int, positive_float, positive_int
from .configs import CONFIGS, BenchConfig, flops_per_sample, get_configs
from .report import format_markdown, format_table, plot, read_json, write_json, write_markdown
from .runner import PEERS, parse_int_list, run_bench, select_peers
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
    """The flags of ``gpunn bench``; bad values are refused while parsing, naming the flag."""
    names = ", ".join(CONFIGS)
    parser.add_argument("--configs", type=_configs, default=None, metavar="NAMES",
                        help=f"comma-separated configurations or families (default all: {names})")
    parser.add_argument("--backends", type=_backends, default=None, metavar="NAMES",
                        help=f"comma-separated backends: {', '.join(BACKEND_NAMES)} "
                             "(default: all available)")
    parser.add_argument("--batch-sizes", type=_batch_sizes, default=None, metavar="LIST",
                        help="comma-separated batch sizes, or A-B for powers of two from A to B "
                             "(default: 1-8192 on the GPU, 16,64,256,1024 on the CPU, plus each "
                             "configuration's own batch)")
    parser.add_argument("--quick", action="store_true",
                        help="fewer repeats, and on the CPU each configuration's own batch "
                             "only (a short sweep on the GPU); under a minute on a 2-core CPU")
    parser.add_argument("--repeats", type=positive_int, default=None, metavar="N",
                        help="timed repeats per measurement (default 5, 3 with --quick)")
    peers = parser.add_mutually_exclusive_group()
    peers.add_argument("--peers", type=_peers, default=True, metavar="NAMES",
                       help=f"comma-separated peers to time besides gpunn: {', '.join(PEERS)} "
                            "(default: those that run here; --quick leaves out torch-compile "
                            "unless named)")
    peers.add_argument("--no-peers", dest="peers", action="store_false",
                       help="skip PyTorch and the per-sample loop")
    parser.add_argument("--json", dest="json_path", default=None, metavar="PATH",
                        help="write the results and machine information as JSON")
    parser.add_argument("--plot", dest="plot_path", default=None, metavar="PATH",
                        help="write a log-log plot of samples/s against batch size (PNG)")
    parser.add_argument("--markdown", dest="markdown_path", default=None, metavar="PATH",
                        help="write the configurations' rows as Markdown tables (one per "
                             "backend, as in the README)")
    parser.add_argument("--seed", type=non_negative_int, default=0,
                        help="seed of data and weights")
    parser.add_argument("--time-budget", type=positive_float, default=None, metavar="SECONDS",
                        help="skip the measurements left after this many seconds")
    parser.add_argument("--quiet", action="store_true", help="no progress messages")


def _configs(text: str) -> list[BenchConfig]:
    try:
        return get_configs(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _peers(text: str) -> tuple[str, ...]:
    try:
        names = select_peers(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not names:
        raise argparse.ArgumentTypeError(f"{text!r} names no peer; choose among "
                                         f"{', '.join(PEERS)}")
    return names


def _backends(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in BACKEND_NAMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a list of backends: write {' or '.join(BACKEND_NAMES)}, "
            "or both separated by a comma"
        )
    return names


def _batch_sizes(text: str) -> list[int]:
    try:
        sizes = parse_int_list(text)
    except ValueError:
        sizes = None
    if not sizes:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a list of batch sizes: write positive integers separated by "
            "commas (16,64,256) or a range A-B of powers of two (1-8192)"
        )
    return sizes


def main(args: argparse.Namespace) -> int:
    """Run ``gpunn bench`` with ``args`` parsed by a parser that has :func:`add_arguments`;
    prints the table, returns the exit status."""

    def checkpoint(partial_results: dict) -> None:  # a killed run still leaves its results
        if args.json_path:
            write_json(partial_results, args.json_path)

    results = run_bench(configs=args.configs, backends=args.backends,
                        batch_sizes=args.batch_sizes, peers=args.peers, quick=args.quick,
                        repeats=args.repeats, seed=args.seed, time_budget=args.time_budget,
                        checkpoint=checkpoint,
                        log=None if args.quiet else (lambda m: print(m, file=sys.stderr,
                                                                     flush=True)))
    print(format_machine_info(results["machine"]))
    print()
    print(format_table(results))
    status = 0
    if args.json_path:
        print(f"results written to {write_json(results, args.json_path)}")
    if args.markdown_path:
        print(f"Markdown written to {write_markdown(results, args.markdown_path)}")
    if args.plot_path:
        try:
            print(f"plot written to {plot(results, args.plot_path)}")
        except (RuntimeError, ValueError) as exc:
            print(f"gpunn: error: --plot {args.plot_path}: {exc}", file=sys.stderr)
            status = 1
    return status


def _standalone(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gpunn.bench",
                                     description="gpunn training-throughput benchmark")
    add_arguments(parser)
    return main(parser.parse_args(argv))
