"""The ``gpunn`` command line: ``gpunn train | evaluate | predict | bench | info``.

``main(argv)`` parses the arguments and runs one command; it returns the exit status. A user
mistake (a missing file, a bad flag value, an invalid combination, any :class:`GpunnError`, an
interrupt) ends with one line ``gpunn: error: ...`` on stderr and a non-zero status, without a
traceback (``--debug`` shows it).

Each command is a module with its flags (``add_arguments``) and its ``run_*`` function;
:mod:`.parsing` holds the flag types, :mod:`.output` and :mod:`.models` what the commands share.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import traceback
import warnings
from collections.abc import Sequence
from typing import Any

from . import bench, evaluate, info, predict, train
from .output import one_line
from .parsing import FORMATTER, Parser, UsageError

PROG = "gpunn"
EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130

EPILOG = """\
examples:
  gpunn train                                   # MNIST subset: seconds, about 0.94 accuracy
  gpunn train --data digits --hidden 64 --epochs 20 --save digits.npz
  gpunn evaluate digits.npz --data digits
  gpunn predict digits.npz samples.csv --out predictions.csv
  gpunn info                                    # versions, backends, GPU, BLAS threads
  gpunn bench --quick                           # training throughput per backend

Run 'gpunn COMMAND --help' for the flags of a command.
"""


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``gpunn`` parser; the bench flags are added only when ``command`` is bench."""
    parser = Parser(
        prog=PROG,
        description="Feedforward neural networks trained with backpropagation and mini-batch "
        "SGD, on NumPy (CPU) or CuPy (NVIDIA GPU).",
        epilog=EPILOG,
        formatter_class=FORMATTER,
    )
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"gpunn {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    common = Parser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks of errors"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    commands.required = True

    def add(name: str, help_text: str, epilog: str) -> argparse.ArgumentParser:
        return commands.add_parser(
            name, help=help_text, description=help_text, epilog=epilog,
            formatter_class=FORMATTER, parents=[common],
        )

    train.add_arguments(add("train", "train a network on a dataset", train.EPILOG))
    evaluate.add_arguments(
        add("evaluate", "print a model's loss and accuracy on data", evaluate.EPILOG)
    )
    predict.add_arguments(
        add("predict", "write a model's predictions for inputs as CSV", predict.EPILOG)
    )
    info.add_arguments(
        add("info", "print versions, backends, GPU and BLAS of this machine", info.EPILOG)
    )
    bench.add_arguments(
        add("bench", "measure training throughput per backend", bench.EPILOG), command
    )
    return parser


def _command_of(argv: Sequence[str]) -> str | None:
    for token in argv:
        if not token.startswith("-"):
            return token
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``gpunn`` command line on ``argv`` (default: ``sys.argv[1:]``); the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    from ..errors import GpunnError, describe

    previous = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        parser = build_parser(_command_of(argv))
        args = parser.parse_args(argv)
        from ..backend import tf32_scope

        on_gpu = getattr(args, "backend", "auto") != "numpy"  # no CUDA start for NumPy runs
        tf32 = getattr(args, "tf32", False) and on_gpu
        with tf32_scope() if tf32 else contextlib.nullcontext():
            return int(args.run(args) or 0)
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except KeyboardInterrupt as exc:
        message = str(exc) or "interrupted"
        return _fail(message, EXIT_INTERRUPTED, debug)
    except UsageError as exc:
        return _fail(str(exc), EXIT_USAGE, debug)
    except (GpunnError, OSError, MemoryError) as exc:
        return _fail(_error_text(exc), EXIT_ERROR, debug)
    except Exception as exc:
        return _fail(
            f"unexpected {describe(exc)} (this is a bug in gpunn; run again with "
            "--debug for the traceback and report it)", EXIT_ERROR, debug,
        )
    finally:
        warnings.showwarning = previous


def _show_warning(message: Any, category: Any, filename: str, lineno: int,
                  file: Any = None, line: Any = None) -> None:
    """Warnings as one line each (not Python's file:line format)."""
    text = one_line(message).removeprefix(f"{PROG}: ")
    print(f"{PROG}: warning: {text}", file=sys.stderr, flush=True)


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or exc}"
    if isinstance(exc, MemoryError) and not str(exc):
        return "out of memory; try a smaller --batch-size or network"
    return str(exc) or type(exc).__name__


def _fail(message: str, status: int, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    try:
        # one write, so that ranks of a distributed run do not interleave within a line
        sys.stderr.write(f"{PROG}: error: {one_line(message)}\n")
        sys.stderr.flush()
    except (BrokenPipeError, ValueError):  # pragma: no cover
        pass
    return status
