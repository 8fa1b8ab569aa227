"""What the commands print and the files they write."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .parsing import UsageError


def say(text: str) -> None:
    """Print a line to stdout, flushed at once."""
    print(text, flush=True)


def one_line(text: Any) -> str:
    """``text`` with every run of whitespace, newlines included, as one space."""
    return " ".join(str(text).split())


def check_output_path(flag: str, path: str | None) -> Path | None:
    """Refuse, before any work, an output file whose folder does not exist."""
    if path is None:
        return None
    target = Path(path).expanduser()
    if target.is_dir():
        raise UsageError(f"{flag} {path}: is a directory; give a file name")
    folder = target.parent
    if not folder.is_dir():
        raise UsageError(f"{flag} {path}: the folder {folder} does not exist")
    return target


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically: a reader never sees half a file."""
    from ..io import atomic_write

    atomic_write(path, lambda handle: handle.write(text.encode()))
