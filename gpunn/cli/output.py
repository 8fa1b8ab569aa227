"""What the commands print and the files they write."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def say(text: str) -> None:
    """Print a line to stdout, flushed at once."""
    print(text, flush=True)


def one_line(text: Any) -> str:
    """``text`` with every run of whitespace, newlines included, as one space."""
    return " ".join(str(text).split())


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically: a reader never sees half a file."""
    from ..files import atomic_write

    atomic_write(path, lambda handle: handle.write(text.encode()))
