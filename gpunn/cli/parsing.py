"""Reading the command line: the argparse parser class, the value types of the flags and the
flags several commands share."""

from __future__ import annotations

import argparse
import math
from typing import Any

FORMATTER = argparse.RawDescriptionHelpFormatter


class UsageError(Exception):
    """A command line that cannot run: a bad flag, value or combination (exit status 2)."""


class Parser(argparse.ArgumentParser):
    """argparse that raises :class:`UsageError` instead of printing usage and exiting."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        raise UsageError(f"{message} (see '{self.prog} --help')")


# ---------------------------------------------------------------------------- value types
def parse_hidden(text: str) -> tuple[int, ...]:
    """``"100,50"`` → (100, 50); ``""`` or ``"none"`` → () (no hidden layer)."""
    cleaned = text.strip().lower()
    if cleaned in ("", "none"):
        return ()
    sizes = []
    for part in cleaned.split(","):
        part = part.strip()
        if not part.isdigit() or int(part) < 1:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a list of hidden layer sizes: write positive integers "
                "separated by commas, e.g. 100 or 100,50 (or 'none')"
            )
        sizes.append(int(part))
    return tuple(sizes)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number greater than 0")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number, 0 or more")
    return value


def fraction(text: str) -> float:
    value = non_negative_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"{text!r} must lie in [0, 1)")
    return value


def _whole_number(text: str, minimum: int, bound: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"{text!r} must be {bound}")
    return value


def positive_int(text: str) -> int:
    return _whole_number(text, 1, "at least 1")


def non_negative_int(text: str) -> int:
    return _whole_number(text, 0, "0 or more")


def parse_label_column(value: Any) -> Any:
    """A CSV label column, from the flag or a model file: an index when it is a whole number,
    else a column name (None: the data's default)."""
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return value


# ---------------------------------------------------------------------------- shared flags
def add_backend_flags(parser: argparse.ArgumentParser) -> None:
    """--backend and --tf32: where the arrays of a command live."""
    parser.add_argument(
        "--backend", choices=("auto", "numpy", "cupy"), default="auto",
        help="where the arrays live: numpy (CPU), cupy (NVIDIA GPU) or auto (the GPU when one "
        "works here; env GPUNN_BACKEND) [auto]",
    )
    add_tf32_flag(parser)


def add_tf32_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tf32", action="store_true",
        help="GPU: float32 matrix products on tensor cores in TensorFloat-32 (faster, products "
        "rounded to a 10-bit mantissa; env GPUNN_TF32=1)",
    )
