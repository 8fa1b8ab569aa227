"""Writing files atomically: a reader sees the old file or the new one, never half of one.

The data goes to a temporary file in the target's folder (an unnamed one where the system
supports it, so that even a killed process leaves nothing behind), is flushed to disk, and is
then renamed over the target; the folder is flushed too, so that the rename survives a crash.

A file written over keeps its permission bits (a private model file stays private), and a
symbolic link is written through: its target gets the new contents and the link stays.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from .errors import GpunnError, InputTypeError, OutputFileError

__all__ = ["as_path", "atomic_write"]


def as_path(path: Any, what: str = "path") -> Path:
    """``path`` (str, bytes or os.PathLike) as a :class:`Path`; anything else is refused."""
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not isinstance(path, (str, os.PathLike)):
        raise InputTypeError(f"{what} must be a file path (str or Path), got {type(path).__name__}")
    return Path(path)


def atomic_write(
    path: str | os.PathLike[str],
    write: Callable[[IO[bytes]], Any],
    *,
    error: type[GpunnError] = OutputFileError,
) -> None:
    """Call ``write(file)`` on a temporary binary file beside ``path``, then rename it over
    ``path``.

    The old file, if any, stays intact until the new one is complete on disk. On an error the
    temporary file is removed and the error propagates; an OSError (no such folder, no space,
    no permission) becomes ``error``, the caller's kind of file error, naming ``path``.
    Temporary files left by dead processes (where unnamed files are not available) are
    removed by the next write of the same file.
    """
    shown = as_path(path)
    target = Path(os.path.realpath(shown))  # a link is written through, not replaced
    directory = target.parent
    if not directory.is_dir():
        raise error(f"cannot write {shown}: the folder {directory} does not exist")
    if target.is_dir():
        raise error(f"cannot write {shown}: it is a folder; name a file inside it")
    mode = _permissions(target)
    _remove_stale_temporaries(directory, target.name)
    tmp: Path | None = None
    try:
        fd = _open_unnamed(directory)
        if fd is not None:
            with os.fdopen(fd, "wb") as handle:
                _write_all(handle, write, mode)
                tmp = _name_unnamed(handle.fileno(), directory, target.name)
        if tmp is None:  # no unnamed files here: write a named temporary file instead
            tmp = _temporary_name(directory, target.name)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
            created = 0o666 if mode is None else mode  # never more open than the file replaced
            with os.fdopen(os.open(tmp, flags, created), "wb") as handle:
                _write_all(handle, write, mode)
        os.replace(tmp, target)
        tmp = None
        _fsync_directory(directory)
    except OSError as exc:
        raise error(f"cannot write {shown}: {exc.strerror or exc}") from exc
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def _permissions(target: Path) -> int | None:
    """The permission bits of the file being written over; None if there is none yet."""
    try:
        return stat.S_IMODE(os.stat(target).st_mode) & 0o777
    except OSError:
        return None


def _write_all(handle: IO[bytes], write: Callable[[IO[bytes]], Any], mode: int | None) -> None:
    if mode is not None and hasattr(os, "fchmod"):  # before any data, whatever the umask
        os.fchmod(handle.fileno(), mode)
    write(handle)
    handle.flush()
    os.fsync(handle.fileno())


def _name_unnamed(fd: int, directory: Path, name: str) -> Path | None:
    """Link the complete unnamed file into ``directory`` under a temporary name (None if the
    system refuses: the caller then writes a named temporary file)."""
    tmp = _temporary_name(directory, name)
    root = os.open("/", os.O_RDONLY)
    try:  # a dir_fd makes os.link use linkat(AT_SYMLINK_FOLLOW), which /proc/self/fd needs
        os.link(f"/proc/self/fd/{fd}", tmp, src_dir_fd=root, follow_symlinks=True)
    except OSError:
        return None
    finally:
        os.close(root)
    return tmp


def _open_unnamed(directory: Path) -> int | None:
    """A descriptor of an unnamed file in ``directory`` (Linux O_TMPFILE), or None; no other
    process can open it before it is named, by which time it has its final mode."""
    flag = getattr(os, "O_TMPFILE", None)
    if flag is None or not os.path.isdir("/proc/self/fd"):
        return None
    try:
        return os.open(directory, flag | os.O_WRONLY, 0o666)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT):
            return None  # the file system does not support it: use a named temporary file
        raise


def _temporary_name(directory: Path, name: str) -> Path:
    return directory / f".{name}.{os.getpid()}.{os.urandom(4).hex()}.tmp"


def _remove_stale_temporaries(directory: Path, name: str) -> None:
    """Delete ``.<name>.<pid>.<random>.tmp`` files whose writing process no longer exists."""
    pattern = re.compile(rf"^\.{re.escape(name)}\.(\d+)\.[0-9a-f]{{8}}\.tmp$")
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    for entry in entries:
        match = pattern.match(entry.name)
        if match is None or int(match.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(match.group(1)), 0)
        except ProcessLookupError:
            Path(entry.path).unlink(missing_ok=True)
        except (OSError, OverflowError):
            continue  # alive (another user's) or not ours to judge


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable (where directories can be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
