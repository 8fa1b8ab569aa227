"""Reading the command line: the argparse parser class, the value types of the flags, the
flags several commands share and the checks of the files a command writes."""

from __future__ import annotations

import argparse
import itertools
import math
import os
from collections.abc import Collection, Mapping
from pathlib import Path
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
    from ..backend import BACKEND_NAMES

    parser.add_argument(
        "--backend", choices=("auto", *BACKEND_NAMES), default="auto",
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


# ---------------------------------------------------------------------------- output files
def check_output_files(
    outputs: Mapping[str, str | None],
    inputs: Mapping[str, str | None],
    rewrites: Collection[tuple[str, str]] = (),
) -> dict[str, Path | None]:
    """Refuse, before any work, output files that cannot be written, that are one file twice,
    or that are an existing input file of the command.

    ``outputs`` and ``inputs`` map a flag (named in the messages) to the path given, None when
    not given. ``rewrites`` lists the (output, input) pairs that may be one file, such as
    ``("--save", "--resume")``: a resumed run updates its model file. Returns each output
    flag's path, with ``~`` expanded (None when not given).
    """
    paths = {flag: _writable_path(flag, path) for flag, path in outputs.items()}
    given = {flag: path for flag, path in paths.items() if path is not None}
    _refuse_shared_outputs(given)
    for flag, path in given.items():
        _refuse_overwritten_inputs(flag, path, inputs, rewrites)
    return paths


def _writable_path(flag: str, path: str | None) -> Path | None:
    """``path`` with ``~`` expanded, after checking, without creating anything, that a file
    can be written there: its name is not too long nor a directory's, and its folder exists
    and is writable."""
    if path is None:
        return None
    target = Path(path).expanduser()
    problem = _why_unwritable(target)
    if problem is not None:
        raise UsageError(f"{flag} {path}: {problem}")
    return target


def _why_unwritable(target: Path) -> str | None:
    folder = target.resolve().parent  # a symbolic link is written through, in its target's
    try:
        os.stat(target)
    except FileNotFoundError:
        pass  # a new file: its folder decides
    except OSError as exc:  # a name too long, a file where a folder should be, no access
        return f"no file can be written there ({exc.strerror}); give another path"
    if target.is_dir():
        return "is a directory; give a file name"
    if not folder.is_dir():
        return f"the folder {folder} does not exist; create it or give another path"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"the folder {folder} is not writable; give a path in a folder you can write to"
    return None


def _refuse_shared_outputs(paths: Mapping[str, Path]) -> None:
    for (first, first_path), (second, second_path) in itertools.combinations(paths.items(), 2):
        if _same_file(first_path, second_path):
            raise UsageError(
                f"{first} and {second} name the same file {second_path}: one would replace the "
                "other; give each output its own path"
            )


def _refuse_overwritten_inputs(flag: str, path: Path, inputs: Mapping[str, str | None],
                               rewrites: Collection[tuple[str, str]]) -> None:
    for source_flag, source in inputs.items():
        if source is None or (flag, source_flag) in rewrites:
            continue
        source_path = Path(source).expanduser()
        if os.path.isfile(source_path) and _same_file(path, source_path):
            raise UsageError(
                f"{flag} {path} is also {source_flag} {source}: writing it would destroy that "
                f"input; give {flag} another path"
            )


def _same_file(first: Path, second: Path) -> bool:
    """Whether two paths name one file: the same file on disk where both exist (links
    included), else the same path once symbolic links and '..' are resolved."""
    if os.path.exists(first) and os.path.exists(second):
        return os.path.samefile(first, second)
    return first.resolve() == second.resolve()
